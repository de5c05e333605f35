"""Textual-inversion embeddings: A1111 .pt (safe unpickler only), kohya emb_params, SDXL clip_l/clip_g; the vectors
replace the name's tokens with the span's emphasis, and the TI hash lands in the infotext."""

import copy

import pytest
import torch
from safetensors.torch import save_file

from lorakit.sd.embeddings import EmbeddingDB, load_embedding
from lorakit.sd.encode import encode_prompt
from lorakit.sd.generate import generate_images
from lorakit.sd.infotext import parse_hash_list, parse_infotext
from lorakit.sd.prompt import CHUNK, parse_prompt_attention, tokenize_chunks


@pytest.fixture(scope="module")
def emb_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("emb")
    g = torch.Generator().manual_seed(0)
    torch.save({"string_to_param": {"*": torch.randn(2, 16, generator=g)}, "name": "x"}, d / "easyneg.pt")
    save_file({"emb_params": torch.randn(1, 16, generator=g)}, str(d / "kohyaemb.safetensors"))
    save_file({"clip_l": torch.randn(2, 16, generator=g), "clip_g": torch.randn(2, 16, generator=g)},
              str(d / "xlemb.safetensors"))
    return d


def test_formats(emb_dir, tmp_path):
    assert [v.shape for v in load_embedding(emb_dir / "easyneg.pt").vectors] == [(2, 16)]
    assert [v.shape for v in load_embedding(emb_dir / "kohyaemb.safetensors").vectors] == [(1, 16)]
    assert len(load_embedding(emb_dir / "xlemb.safetensors").vectors) == 2

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"string_to_param": {"*": Evil()}}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="refused to load.*will not run. Use a .safetensors release") as e:
        load_embedding(tmp_path / "evil.pt")
    assert "weights_only=False" not in str(e.value)


def test_vectors_replace_the_name_with_its_emphasis(sd1_pipe, emb_dir):
    db = EmbeddingDB(emb_dir)
    got = encode_prompt(sd1_pipe, "a (easyneg:1.2)", embeddings=db)
    vec = load_embedding(emb_dir / "easyneg.pt").vectors[0]
    tok = sd1_pipe.tokenizer
    a = tok("a", add_special_tokens=False)["input_ids"]
    placeholder = [len(tok) - 4, len(tok) - 3]  # two rows of a patched copy of the embedding table
    ids = [tok.bos_token_id] + a + placeholder + [tok.eos_token_id] * (CHUNK + 1 - len(a) - 2)
    te = copy.deepcopy(sd1_pipe.text_encoder)
    with torch.no_grad():
        te.get_input_embeddings().weight[placeholder] = vec
        z = te(torch.tensor([ids])).last_hidden_state
    w = torch.ones(CHUNK + 2)
    w[1 + len(a):3 + len(a)] = 1.2
    w = w[None, :, None]
    torch.testing.assert_close(got.embeds, z * w * (z.mean() / (z * w).mean()))
    assert set(db.used) == {"easyneg"}


def test_long_names_are_found_by_tokens_and_chunks_keep_vectors_whole(sd1_pipe, emb_dir):
    db = EmbeddingDB(emb_dir)
    view = db.for_encoder(sd1_pipe.tokenizer, 0, 16)
    text = "w1 " * 36 + "w easyneg"  # 73 tokens ("w1" is two) then a 2-vector embedding: fits exactly
    chunks = tokenize_chunks(parse_prompt_attention(text + " kohyaemb"), sd1_pipe.tokenizer, view)
    assert [len(c.fixes) for c in chunks] == [1, 1] and chunks[0].fixes[0][0] == 1 + 73
    chunks = tokenize_chunks(parse_prompt_attention("w1 " * 37 + "easyneg"), sd1_pipe.tokenizer, view)  # 74 + 2
    assert [len(c.fixes) for c in chunks] == [0, 1] and chunks[1].fixes[0][0] == 1


def test_family_mismatch_and_sdxl_pairs(sd1_pipe, sdxl_pipe, emb_dir):
    with pytest.raises(ValueError, match="1 vector set.s. but this model has 2 text encoder"):
        encode_prompt(sdxl_pipe, "easyneg", embeddings=EmbeddingDB(emb_dir))
    with pytest.raises(ValueError, match="SDXL embeddings .clip_l . clip_g. work only on SDXL"):
        encode_prompt(sd1_pipe, "xlemb", embeddings=EmbeddingDB(files=[emb_dir / "xlemb.safetensors"]))
    plain = encode_prompt(sdxl_pipe, "a cat")
    with_emb = encode_prompt(sdxl_pipe, "a cat xlemb", embeddings=EmbeddingDB(emb_dir))
    assert with_emb.embeds.shape == plain.embeds.shape and not torch.equal(with_emb.embeds, plain.embeds)


def test_ti_hash_in_infotext(sd1_pipe, emb_dir):
    im = generate_images(sd1_pipe, "a cat", "kohyaemb", embeddings=emb_dir, width=16, height=16, steps=1,
                         cfg_scale=5, seed=1)[0]
    hashes = parse_hash_list(parse_infotext(im.info["parameters"])["TI hashes"])
    assert hashes == {"kohyaemb": load_embedding(emb_dir / "kohyaemb.safetensors").shorthash}
