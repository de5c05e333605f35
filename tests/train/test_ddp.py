"""Two-process DDP (gloo, CPU) gives the adapter of one process with the same global batch, and every rank
ends its process group itself (issue 19, item 0: a rank hung in gloo's destructor after ``run`` returned)."""

import json

import tiny_hf as tiny
import torch
from multiproc import run_ranks
from safetensors.torch import load_file

from lorakit.train import run
from lorakit.train.config import from_dict


def _config(tmp, bert_path, out, batch):
    return from_dict({"model": {"path": str(bert_path), "task": "classification", "device": "cpu"},
                      "data": {"train": str(tmp / "train.jsonl")},
                      "lora": {"r": 4, "alpha": 8, "target_modules": ["query", "value"],
                               "modules_to_save": ["classifier"]},
                      "train": {"output_dir": str(out), "max_steps": 4, "batch_size": batch, "lr": 1e-2,
                                "grad_accum": 1, "progress": False, "plot": False, "seed": 5}})


def _worker(rank, tmp, bert_path, runs):
    """``runs`` trainings in one pair of processes, then what is left of the process group and its threads."""
    import os

    import torch.distributed as dist

    threads = []
    for i in range(runs):
        run(_config(tmp, bert_path, tmp / f"ddp{i}", batch=4), quiet=True)
        threads.append(len(os.listdir("/proc/self/task")))  # gloo's worker threads end with their group
    return {"initialized": dist.is_initialized(), "threads": threads}


def test_two_process_ddp_matches_one_process_with_the_same_global_batch(tmp_path, bert_path):
    tiny.write_jsonl(tmp_path / "train.jsonl", tiny.classification_rows())
    single = run(_config(tmp_path, bert_path, tmp_path / "single", batch=8), quiet=True)
    # three runs per process: each one creates, uses and destroys its own process group
    results = run_ranks(_worker, 2, (tmp_path, bert_path, 3), timeout=240, log_dir=tmp_path)
    assert all(r["initialized"] is False for r in results), results
    assert all(r["threads"][0] == r["threads"][-1] for r in results), results  # no group left behind
    a = load_file(tmp_path / "single" / "adapter" / "adapter_model.safetensors")
    for i in range(3):
        b = load_file(tmp_path / f"ddp{i}" / "adapter" / "adapter_model.safetensors")
        assert a.keys() == b.keys() and len(a) > 4
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)
    moved = max(float((v - 0).abs().max()) for k, v in a.items() if "lora_B" in k)
    assert moved > 1e-3  # training really changed the adapter (B starts at zero)
    summary = json.loads((tmp_path / "ddp0" / "summary.json").read_text())
    assert summary["world_size"] == 2 and single.summary["world_size"] == 1
