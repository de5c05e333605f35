"""Data: the instruction loss mask token by token, packing, labels, and sharded batch order."""

import pytest
import tiny_hf as tiny

from lorakit.tasks.text.config import DataArgs
from lorakit.tasks.text.data import IGNORE, Batches, collate, pack, step_plan, tokenize

RECORDS = [{"instruction": "turn on the kitchen light", "output": "the lamp is on the table"},
           {"prompt": "what time is it", "response": "set a timer"}]


def _check_mask(tok, sample, prompt_text, response_text):
    ids, labels = sample["input_ids"], sample["labels"]
    n_prompt = len(tok(prompt_text, add_special_tokens=True)["input_ids"])
    response = tok(response_text, add_special_tokens=False)["input_ids"]
    response += [tok.eos_token_id] if response[-1] != tok.eos_token_id else []  # exactly one EOS at the end
    assert len(ids) == len(labels) == n_prompt + len(response)
    for i, (t, lab) in enumerate(zip(ids, labels, strict=True)):
        if i < n_prompt:
            assert lab == IGNORE, f"prompt token {i} ({tok.convert_ids_to_tokens(t)}) takes loss"
        else:
            assert lab == t, f"response token {i} ({tok.convert_ids_to_tokens(t)}) has no loss"
    assert ids[-1] == tok.eos_token_id and ids[-2] != tok.eos_token_id
    assert tok.decode([t for t, lab in zip(ids, labels, strict=True) if lab != IGNORE], skip_special_tokens=True) == \
        tok.decode(tok(response_text, add_special_tokens=False)["input_ids"], skip_special_tokens=True)


def test_instruction_template_masks_exactly_the_prompt():
    tok = tiny.tokenizer()
    template = "### Instruction:\n{prompt}\n\n### Response:\n"
    samples, _ = tokenize(RECORDS, DataArgs(format="instruction", prompt_template=template), tok, "causal_lm")
    _check_mask(tok, samples[0], template.format(prompt=RECORDS[0]["instruction"]), RECORDS[0]["output"])
    _check_mask(tok, samples[1], template.format(prompt=RECORDS[1]["prompt"]), RECORDS[1]["response"])


def test_chat_template_masks_everything_but_the_last_assistant_turn():
    tok = tiny.tokenizer(chat=True)
    msgs = [{"role": "user", "content": "what time is it"}, {"role": "assistant", "content": "set a timer"}]
    samples, _ = tokenize([{"messages": msgs}], DataArgs(), tok, "causal_lm")  # format auto-detected
    prompt = tok.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(msgs, tokenize=False)
    _check_mask(tok, samples[0], prompt, full[len(prompt):])
    kept = [t for t, lab in zip(samples[0]["input_ids"], samples[0]["labels"], strict=True) if lab != IGNORE]
    assert tok.convert_ids_to_tokens(kept)[:3] == ["set", "a", "timer"]


def test_bad_instruction_record_names_the_keys():
    with pytest.raises(ValueError, match=r"needs one of .*prompt.*found keys \['text'\]"):
        tokenize([{"text": "x"}], DataArgs(format="instruction"), tiny.tokenizer(), "causal_lm")


def test_packing_makes_full_blocks_and_keeps_labels_aligned():
    samples = [{"input_ids": list(range(i, i + 5)), "labels": [IGNORE, IGNORE] + list(range(i + 2, i + 5))}
               for i in (0, 10, 20)]
    blocks = pack(samples, 4)
    assert [len(b["input_ids"]) for b in blocks] == [4, 4, 4]
    flat_ids = [t for s in samples for t in s["input_ids"]][:12]
    assert [t for b in blocks for t in b["input_ids"]] == flat_ids
    assert blocks[0]["labels"] == [IGNORE, IGNORE, 2, 3]


def test_collate_pads_without_loss_and_classification_labels_sort():
    tok = tiny.tokenizer()
    rows = [{"text": "turn on the kitchen light", "label": "b"}, {"text": "the cat", "label": "a"}]
    samples, labels = tokenize(rows, DataArgs(), tok, "classification")
    assert labels == ["a", "b"] and [s["labels"] for s in samples] == [1, 0]
    seq = [{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    batch = collate(seq, pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[5, 6, 7], [8, IGNORE, IGNORE]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_two_ranks_see_exactly_the_single_process_batches():
    samples = [{"input_ids": [i], "labels": i} for i in range(20)]
    one = Batches(samples, 4, seed=3, repeats=2)
    ranks = [Batches(samples, 2, seed=3, repeats=2, rank=r, world=2) for r in range(2)]
    assert len(one) == len(ranks[0]) == 10
    for b, r0, r1 in zip(one.epoch(1), ranks[0].epoch(1), ranks[1].epoch(1), strict=True):
        assert b["labels"].tolist() == r0["labels"].tolist() + r1["labels"].tolist()
    assert one.order(0) != one.order(1) and one.order(1) == Batches(samples, 4, seed=3, repeats=2).order(1)
    assert [b["labels"].tolist() for b in one.epoch(1, start=7)] == [b["labels"].tolist() for b in one.epoch(1)][7:]


def test_step_plan_formula_and_error():
    # repeats x items x epochs / (batch x accum x processes) = 2 x 50 x 3 / (4 x 2 x 1)
    assert step_plan(100, 4, 2, 1, 3.0, None) == (12, 36)
    assert step_plan(100, 4, 2, 1, 3.0, 5) == (12, 5)
    with pytest.raises(ValueError, match="fewer than one optimizer step"):
        step_plan(3, 4, 1, 1, 1.0, None)


def test_csv_and_jsonl_readers_and_their_errors(tmp_path):
    from lorakit.tasks.text.data import read_records

    (tmp_path / "d.csv").write_text('text,label\n"turn on, please",home\nthe cat,other\n')
    assert read_records(tmp_path / "d.csv") == [{"text": "turn on, please", "label": "home"},
                                                 {"text": "the cat", "label": "other"}]
    (tmp_path / "d.txt").write_text("doc one\nline two\n\n\ndoc two\n")
    assert read_records(tmp_path / "d.txt") == ["doc one\nline two", "doc two"]
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n{"text": \n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2 is not valid JSON"):
        read_records(tmp_path / "bad.jsonl")
    with pytest.raises(FileNotFoundError, match="data file not found"):
        read_records(tmp_path / "nope.jsonl")
    with pytest.raises(ValueError, match=r"no 'label' field \(found \['text'\]\)"):
        tokenize([{"text": "a"}], DataArgs(), tiny.tokenizer(), "classification")
