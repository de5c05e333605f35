"""A1111 prompt semantics: parse_prompt_attention on A1111's own examples, chunking with the comma backtrack,
per-token weights with the mean restore, ComfyUI's weighting, and errors that point at the character."""

import pytest
import torch

from lorakit.sd.encode import encode_prompt, pad_pair
from lorakit.sd.prompt import (
    CHUNK,
    PromptSyntaxError,
    apply_weights,
    parse_comfyui,
    parse_prompt_attention,
    tokenize_chunks,
)

A1111_EXAMPLES = [  # modules/prompt_parser.py docstring, float order included
    ("normal text", [["normal text", 1.0]]),
    ("an (important) word", [["an ", 1.0], ["important", 1.1], [" word", 1.0]]),
    ("(unbalanced", [["unbalanced", 1.1]]),
    ("\\(literal\\]", [["(literal]", 1.0]]),
    ("(unnecessary)(parens)", [["unnecessaryparens", 1.1]]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [["a ", 1.0], ["house", 1.5730000000000004], [" ", 1.1], ["on", 1.0], [" a ", 1.1], ["hill", 0.55],
      [", sun, ", 1.1], ["sky", 1.4641000000000006], [".", 1.1]]),
    ("", [["", 1.0]]),
    ("a BREAK b", [["a", 1.0], ["BREAK", -1], ["b", 1.0]]),
]


@pytest.mark.parametrize(("text", "expected"), A1111_EXAMPLES)
def test_parse_prompt_attention_matches_a1111(text, expected):
    assert parse_prompt_attention(text) == expected


def test_comfyui_sets_weights_and_keeps_square_brackets():
    assert parse_comfyui("((a:1.5)) [b] (c)") == [["a", 1.5], [" [b] ", 1.0], ["c", 1.1]]
    assert parse_prompt_attention("((a:1.5))") == [["a", 1.5 * 1.1]]


def test_bad_weight_points_at_the_character():
    with pytest.raises(PromptSyntaxError) as e:
        parse_prompt_attention("a (cat:1.2.3)")
    assert e.value.pos == 7 and "\n  a (cat:1.2.3)\n         ^" in str(e.value)


def _long_prompt():
    words = [f"w{i % 10}" for i in range(60)]  # each "wN" is 2 tokens in the tiny vocab
    return " ".join(words[:30]) + ", (cat:1.4) " + " ".join(words[30:]) + " [red]"


def test_chunks_match_a_direct_computation(sd1_pipe):
    """>75 tokens: split after the last comma within 20 tokens, BOS/EOS per chunk, EOS padding, weights."""
    tok = sd1_pipe.tokenizer
    text = _long_prompt()
    chunks = tokenize_chunks(parse_prompt_attention(text), tok)
    ids = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    head = ids(" ".join(f"w{i % 10}" for i in range(30)) + ",")  # 61 tokens; the next 14 do not reach 75 ...
    tail = ids("cat") + ids(" ".join(f"w{i % 10}" for i in range(30, 60))) + ids("red")
    body = head + tail
    assert len(head) == 61 and len(body) > CHUNK
    # the 75-token chunk ends 14 tokens after the comma (<= 20): those move on to chunk 2
    assert len(chunks) == 2
    bos, eos = tok.bos_token_id, tok.eos_token_id
    assert chunks[0].tokens == [bos] + head + [eos] * (CHUNK - len(head)) + [eos]
    assert chunks[1].tokens == [bos] + tail + [eos] * (CHUNK - len(tail)) + [eos]
    assert chunks[1].multipliers[1] == 1.4 and chunks[1].multipliers[len(tail)] == pytest.approx(1 / 1.1)
    assert all(len(c.tokens) == len(c.multipliers) == CHUNK + 2 for c in chunks)


def test_encoding_equals_per_chunk_weighting_with_mean_restore(sd1_pipe):
    text = _long_prompt()
    te = sd1_pipe.text_encoder
    chunks = tokenize_chunks(parse_prompt_attention(text), sd1_pipe.tokenizer)
    expected = []
    with torch.no_grad():
        for c in chunks:
            z = te(torch.tensor([c.tokens])).last_hidden_state
            w = torch.tensor(c.multipliers)[None, :, None]
            expected.append(z * w * (z.mean() / (z * w).mean()))
    got = encode_prompt(sd1_pipe, text)
    torch.testing.assert_close(got.embeds, torch.cat(expected, 1), rtol=0, atol=0)
    no_norm = encode_prompt(sd1_pipe, "(cat:1.5)", emphasis="No norm")
    c = tokenize_chunks(parse_prompt_attention("(cat:1.5)"), sd1_pipe.tokenizer)[0]
    with torch.no_grad():
        z = te(torch.tensor([c.tokens])).last_hidden_state
    torch.testing.assert_close(no_norm.embeds, z * torch.tensor(c.multipliers)[None, :, None], rtol=0, atol=0)


def test_break_and_padding_to_equal_length(sd1_pipe):
    cond = encode_prompt(sd1_pipe, "a cat BREAK red")
    uncond = encode_prompt(sd1_pipe, "")
    empty = encode_prompt(sd1_pipe, "")
    assert cond.embeds.shape[1] == 2 * (CHUNK + 2) and uncond.embeds.shape[1] == CHUNK + 2
    c, u = pad_pair(cond, uncond, empty)
    assert u.embeds.shape == c.embeds.shape
    torch.testing.assert_close(u.embeds[:, CHUNK + 2:], empty.embeds)


def test_clip_skip_is_a1111_numbering(sd1_pipe):
    te = sd1_pipe.text_encoder
    c = tokenize_chunks([["cat", 1.0]], sd1_pipe.tokenizer)[0]
    with torch.no_grad():
        out = te(torch.tensor([c.tokens]), output_hidden_states=True)
        want = getattr(te, "text_model", te).final_layer_norm(out.hidden_states[-2])
    torch.testing.assert_close(encode_prompt(sd1_pipe, "cat", clip_skip=2).embeds, want)
    torch.testing.assert_close(encode_prompt(sd1_pipe, "cat", clip_skip=1).embeds, out.last_hidden_state)


def test_comfyui_weighting_interpolates_from_the_empty_prompt(sd1_pipe):
    te, tok = sd1_pipe.text_encoder, sd1_pipe.tokenizer
    c = tokenize_chunks(parse_comfyui("a (cat:1.5)"), tok)[0]
    e = tokenize_chunks([["", 1.0]], tok)[0]
    with torch.no_grad():
        z = te(torch.tensor([c.tokens])).last_hidden_state
        z0 = te(torch.tensor([e.tokens])).last_hidden_state
    w = torch.tensor(c.multipliers)[None, :, None]
    want = torch.where(w == 1, z, z0 + w * (z - z0))
    torch.testing.assert_close(encode_prompt(sd1_pipe, "a (cat:1.5)", syntax="comfyui").embeds, want)


def test_sdxl_concatenates_encoders_and_pools_chunk_zero(sdxl_pipe):
    text = _long_prompt()
    got = encode_prompt(sdxl_pipe, text)
    c2 = tokenize_chunks(parse_prompt_attention(text), sdxl_pipe.tokenizer_2)
    pad = sdxl_pipe.tokenizer_2.pad_token_id
    first = c2[0].tokens.index(sdxl_pipe.tokenizer_2.eos_token_id)
    assert pad != sdxl_pipe.tokenizer_2.eos_token_id and set(c2[0].tokens[first + 1:]) == {pad}
    with torch.no_grad():
        out = sdxl_pipe.text_encoder_2(torch.tensor([c2[0].tokens]), output_hidden_states=True)
    assert got.embeds.shape == (1, 2 * (CHUNK + 2), 32)
    torch.testing.assert_close(got.pooled, out.text_embeds)
    z = out.hidden_states[-2]
    w = torch.tensor(c2[0].multipliers)[None, :, None]
    torch.testing.assert_close(got.embeds[:, :CHUNK + 2, 16:], z * w * (z.mean() / (z * w).mean()))


def test_apply_weights_rejects_unknown_emphasis():
    with pytest.raises(ValueError, match="emphasis='Nope'"):
        apply_weights(torch.ones(1, 2, 3), torch.ones(1, 2), emphasis="Nope")
