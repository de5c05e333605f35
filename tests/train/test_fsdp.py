"""FSDP2 on two processes (gloo, CPU) trains exactly as one process on the same global batch: the loss of every
step and the final adapter agree within 1e-5 for LoRA, DoRA and QLoRA (NF4 base) on a causal LM, for a
classifier and with gradient accumulation; each rank holds half of the frozen base (the packed 4-bit codes too); the sharded checkpoint of
two ranks resumes in one process, and after a SIGKILL of one rank on two, to the uninterrupted run's adapter."""

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import tiny_hf as tiny
import torch
from multiproc import Ranks, run_ranks
from safetensors.torch import load_file

from lorakit.train import Callback, run
from lorakit.train.checkpoint import list_checkpoints
from lorakit.train.config import from_dict

CASES = {"lora": {"variant": "lora"}, "dora": {"variant": "dora"}, "qlora": {"quantize": "nf4"}, "cls": {},
         # 2 micro-batches of 1 per step (the first without a reduce-scatter), no reshard, recomputed activations
         "accum": {"train": {"grad_accum": 2, "fsdp_reshard_after_forward": False, "gradient_checkpointing": True}}}


def config(case: str, out, tmp, llama_path, bert_path, batch: int, **train):
    """Four optimizer steps of ``case``; ``batch`` is per process (2 ranks x 2 = 1 process x 4)."""
    t = {"output_dir": str(out), "max_steps": 4, "batch_size": batch, "lr": 1e-2, "scheduler": "linear",
         "log_every": 1, "save_every": 2, "keep_last": 2, "progress": False, "plot": False, "seed": 3,
         "distributed": "fsdp", **train}
    if case == "cls":
        return from_dict({"model": {"path": str(bert_path), "task": "classification", "device": "cpu"},
                          "data": {"train": str(tmp / "train.jsonl"), "eval": str(tmp / "train.jsonl")},
                          "lora": {"r": 4, "alpha": 8, "target_modules": ["query", "value"],
                                   "modules_to_save": ["classifier"]},
                          "train": {**t, "batch_size": 2 * batch, "eval_every": 2}})  # evaluated on every rank
    lora = {k: v for k, v in CASES[case].items() if k != "train"}
    if "train" in CASES[case] and batch == 2:  # the two-rank run: same global batch, half the micro-batch
        t.update(CASES[case]["train"], batch_size=1)
    return from_dict({"model": {"path": str(llama_path), "device": "cpu"},
                      "data": {"train": str(tmp / "train.txt"), "max_length": 8, "packing": True},
                      "lora": {"r": 4, "alpha": 8, "target_modules": "all-linear", **lora}, "train": t})


def write_data(tmp):
    (tmp / "train.txt").write_text("\n\n".join(tiny.CORPUS))
    tiny.write_jsonl(tmp / "train.jsonl", tiny.classification_rows())


def _fsdp_worker(rank, tmp, llama_path, bert_path):
    """Every case on this rank; per case, the bytes of the frozen base this rank holds and their total."""
    out = {}
    for case in CASES:
        result = run(config(case, tmp / f"fsdp-{case}", tmp, llama_path, bert_path, batch=2), quiet=True)
        frozen = [p for p in result.model.parameters() if not p.requires_grad]
        local = sum(p.to_local().numel() * p.element_size() for p in frozen)
        whole = sum(p.numel() * p.element_size() for p in frozen)
        packed = [p for n, p in result.model.named_parameters() if n.endswith("qweight")]
        out[case] = {"local": local, "whole": whole, "packed": [p.to_local().numel() / p.numel() for p in packed]}
    from lorakit.train.adalora import AdaLoraCallback

    try:  # a callback that rewrites whole parameters between steps is refused before anything is built
        run(config("lora", tmp / "refused", tmp, llama_path, bert_path, batch=2), [AdaLoraCallback()], quiet=True)
    except ValueError as exc:
        out["refused"] = str(exc)
    return out


def losses(run_dir) -> list[float]:
    rows = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def assert_same_adapter(a_dir, b_dir, atol=1e-5):
    a = load_file(a_dir / "adapter_model.safetensors")
    b = load_file(b_dir / "adapter_model.safetensors")
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=atol, msg=k)
    assert json.loads((a_dir / "adapter_config.json").read_text()) == json.loads((b_dir / "adapter_config.json").read_text())


@pytest.fixture(scope="module")
def fsdp_runs(tmp_path_factory, llama_path, bert_path):
    tmp = tmp_path_factory.mktemp("fsdp")
    write_data(tmp)
    stats = run_ranks(_fsdp_worker, 2, (tmp, llama_path, bert_path), timeout=300, log_dir=tmp)
    return tmp, stats


@pytest.mark.parametrize("case", list(CASES))
def test_fsdp_two_ranks_equal_one_process(fsdp_runs, case, llama_path, bert_path):
    tmp, stats = fsdp_runs
    single = tmp / f"single-{case}"
    run(config(case, single, tmp, llama_path, bert_path, batch=4), quiet=True)
    sharded = tmp / f"fsdp-{case}"
    assert losses(sharded) == pytest.approx(losses(single), abs=1e-5) and len(losses(single)) == 4
    assert_same_adapter(single / "adapter", sharded / "adapter")
    evals = [[json.loads(r)["eval_loss"] for r in (d / "metrics.jsonl").read_text().splitlines() if "eval_loss" in r]
             for d in (single, sharded)]
    assert evals[1] == pytest.approx(evals[0], abs=1e-5) and len(evals[0]) == (2 if case == "cls" else 0)
    moved = max(float(v.abs().max()) for k, v in load_file(single / "adapter" / "adapter_model.safetensors").items()
                if "lora_B" in k)
    assert moved > 1e-3  # the adapter trained (B starts at zero)
    # each rank holds about half of the frozen base; QLoRA's packed 4-bit codes are sharded too
    for rank_stats in stats:
        s = rank_stats[case]
        assert 0.45 < s["local"] / s["whole"] < 0.55, s
        assert all(0.45 < f <= 0.55 for f in s["packed"]) and bool(s["packed"]) == (case == "qlora"), s
    assert all(s["refused"].startswith("AdaLoraCallback changes whole parameters between steps, which FSDP keeps "
                                       "sharded") for s in stats)
    ckpt = list_checkpoints(sharded)[-1]
    assert sorted(p.name for p in (ckpt / "sharded").iterdir()) == [
        "shard-00001-model-00001-of-00001.safetensors", "shard-00002-model-00001-of-00001.safetensors"]
    assert not (ckpt / "trainable.safetensors").exists() and (ckpt / "adapter" / "adapter_config.json").is_file()


@pytest.mark.parametrize("case", ["lora", "qlora"])
def test_two_rank_sharded_checkpoint_resumes_in_one_process(fsdp_runs, case, tmp_path, llama_path, bert_path):
    tmp, _ = fsdp_runs
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp / f"fsdp-{case}", resumed)
    for path in [*list_checkpoints(resumed)[1:], resumed / "adapter"]:  # keep only checkpoint-000002
        shutil.rmtree(path)
    with pytest.raises(ValueError, match="samples per step 4.*samples per step 2"):
        run(config(case, resumed, tmp, llama_path, bert_path, batch=2), resume=True, quiet=True)
    result = run(config(case, resumed, tmp, llama_path, bert_path, batch=4), resume=True, quiet=True)
    assert result.summary["steps"] == 4 and result.summary["world_size"] == 1
    assert_same_adapter(tmp / f"fsdp-{case}" / "adapter", resumed / "adapter")
    assert losses(resumed) == pytest.approx(losses(tmp / f"fsdp-{case}"), abs=1e-5)


class PauseAt(Callback):
    """Rank 1 stops answering after step ``step`` (it sleeps, as a wedged or preempted process would), so the
    test can SIGKILL it while rank 0 waits in a collective; every rank records the step it started from."""

    def __init__(self, step, mark):
        self.step, self.mark = step, Path(mark)

    def on_train_begin(self, state):
        with open(self.mark.with_suffix(f".start{state.world_size}"), "a") as f:
            f.write(f"{state.step}\n")

    def on_step_end(self, state):
        if state.step == self.step and os.environ.get("RANK") == "1":
            self.mark.write_text(str(state.step))
            time.sleep(120)


def _killed_worker(rank, tmp, llama_path, bert_path, resume):
    cfg = config("lora", tmp / "killed", tmp, llama_path, bert_path, batch=2, max_steps=8)
    run(cfg, [PauseAt(3 if not resume else -1, tmp / "paused")], resume=resume, quiet=True)
    return rank


def test_sigkill_one_rank_the_other_stops_with_a_message_and_resume_matches(tmp_path, llama_path, bert_path):
    write_data(tmp_path)
    group = Ranks(_killed_worker, 2, (tmp_path, llama_path, bert_path, False), tmp_path).start()
    deadline = time.monotonic() + 240
    while not (tmp_path / "paused").exists() and time.monotonic() < deadline and all(p.is_alive() for p in group.procs):
        time.sleep(0.05)
    assert (tmp_path / "paused").exists(), group.output()
    assert [c.name for c in list_checkpoints(tmp_path / "killed")] == ["checkpoint-000002"]
    group.kill(1)
    killed = time.monotonic()
    group.wait(timeout=60, grace=30, expect_ok=False)  # a rank 0 that hangs fails the test here
    assert time.monotonic() - killed < 30
    assert group.procs[1].exitcode == -9 and group.procs[0].exitcode == 1, group.output()
    log = " ".join(group.log(0).read_text().split())
    assert "DistributedRunError: rank 0 of 2: another process of this run stopped" in log, log[-2000:]
    assert "checkpoint-000002; restart every process with `--resume`" in log
    # resumed on two ranks from the newest complete checkpoint: the uninterrupted run's adapter
    run_ranks(_killed_worker, 2, (tmp_path, llama_path, bert_path, True), timeout=240, log_dir=tmp_path)
    starts = (tmp_path / "paused.start2").read_text().split()
    assert starts == ["0", "0", "2", "2"]  # each rank: the first session, then the resumed one
    whole = run(config("lora", tmp_path / "whole", tmp_path, llama_path, bert_path, batch=4, max_steps=8), quiet=True)
    assert whole.summary["steps"] == 8
    assert_same_adapter(tmp_path / "whole" / "adapter", tmp_path / "killed" / "adapter")
    assert losses(tmp_path / "killed") == pytest.approx(losses(tmp_path / "whole"), abs=1e-5)
