"""Two-process DDP (gloo, CPU) gives the adapter of one process with the same global batch."""

import os
import socket

import tiny_hf as tiny
import torch
import torch.multiprocessing as mp
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


def _worker(rank, tmp, bert_path, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    run(_config(tmp, bert_path, tmp / "ddp", batch=4), quiet=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_matches_one_process_with_the_same_global_batch(tmp_path, bert_path):
    tiny.write_jsonl(tmp_path / "train.jsonl", tiny.classification_rows())
    single = run(_config(tmp_path, bert_path, tmp_path / "single", batch=8), quiet=True)
    mp.spawn(_worker, args=(tmp_path, bert_path, _free_port()), nprocs=2, join=True)
    a = load_file(tmp_path / "single" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "ddp" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and len(a) > 4
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)
    moved = max(float((v - 0).abs().max()) for k, v in a.items() if "lora_B" in k)
    assert moved > 1e-3  # training really changed the adapter (B starts at zero)
    import json

    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and single.summary["world_size"] == 1
