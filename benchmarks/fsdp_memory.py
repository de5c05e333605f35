"""Per-process memory of LoRA training on two processes (CPU, gloo): FSDP2 vs DDP for a model whose frozen base
dominates, QLoRA (NF4 base) under FSDP vs fp32 DDP, and ``lorakit validate``'s estimates against the peaks.

Model: LlamaConfig(``--layers`` layers (48), hidden 1024, intermediate 2816, 16 heads, vocab 4096): 625 M parameters
(2.5 GB in fp32) with 48 layers, 420 M with 32; LoRA r=8 on every linear layer, batch 1 x 32 tokens per process,
AdamW, 3 steps. Each candidate
runs ``lorakit.train.run`` in two fresh processes (torchrun's environment, one thread each, big allocations
through mmap so freed memory leaves RSS at once). Per process it reports, above the RSS once the modules are
imported and the process group is up: the peak while loading and sharding the model, and the peak while
training (VmHWM reset when training begins).

    flock -x /tmp/cpu.lock .venv/bin/python benchmarks/fsdp_memory.py [--steps 3 --layers 48]
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import EXACT_RSS_ENV, _status, env_without_heap_policy, training_peaks

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # benchmark the tree this file is in
sys.path.insert(0, str(ROOT / "tests"))  # the tests' tiny tokenizer
CANDIDATES = {"ddp": ("ddp", "none"), "fsdp": ("fsdp", "none"), "fsdp-qlora": ("fsdp", "nf4"),
              "ddp-qlora": ("ddp", "nf4")}
CACHE = Path(tempfile.gettempdir()) / "lorakit-bench-fsdp"


def model_dir(layers: int) -> Path:
    """The benchmark model (random weights, built once) and its text file (packed into 32-token samples)."""
    import tiny_hf
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = CACHE / f"llama-{layers}-layers"
    if not (path / "config.json").is_file():
        tok = tiny_hf.tokenizer()
        torch.manual_seed(0)
        cfg = LlamaConfig(num_hidden_layers=layers, hidden_size=1024, intermediate_size=2816, num_attention_heads=16,
                          vocab_size=4096, max_position_embeddings=256,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        LlamaForCausalLM(cfg).save_pretrained(path)
        tok.save_pretrained(path)
        (CACHE / "train.txt").write_text("\n\n".join(tiny_hf.CORPUS * 20))
    return path


def config(name: str, steps: int, out: Path, layers: int):
    from lorakit.train.config import from_dict

    strategy, quant = CANDIDATES[name]
    return from_dict({"model": {"path": str(model_dir(layers)), "device": "cpu"},
                      "data": {"train": str(CACHE / "train.txt"), "max_length": 32, "packing": True},
                      "lora": {"r": 8, "alpha": 16, "target_modules": "all-linear", "quantize": quant},
                      "train": {"output_dir": str(out), "max_steps": steps, "batch_size": 1, "lr": 1e-4,
                                "distributed": strategy, "progress": False, "plot": False, "keep_heap": False,
                                "save_every": 0, "log_every": 1}})


def rank_main(name: str, steps: int, out: str, layers: int) -> None:
    """One process of a candidate: prints {"load": bytes, "train": bytes} above the RSS after imports."""
    import torch.distributed as dist
    import transformers.models.llama.modeling_llama  # noqa: F401  (the baseline is the runtime: imports, group)

    import lorakit.tasks.text.task  # noqa: F401
    from lorakit.train import run

    dist.init_process_group("gloo")  # run() uses it and leaves it to us

    marks = {}
    probe = training_peaks(marks, _status("VmRSS"))
    run(config(name, steps, Path(out), layers), [probe], quiet=True)
    dist.destroy_process_group()
    print(json.dumps(marks), flush=True)


def measure(name: str, steps: int, layers: int) -> list[dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp = tempfile.TemporaryDirectory(prefix=f"fsdp-{name}-")
    out, procs = tmp.name, []
    for rank in range(2):
        env = env_without_heap_policy() | EXACT_RSS_ENV | {
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "WORLD_SIZE": "2",
            "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": "2", "LORAKIT_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, __file__, "--rank-of", name, "--steps", str(steps), "--out", out,
                                       "--layers", str(layers)],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=1800)
        if p.returncode:
            raise SystemExit(f"{name}: a process failed:\n{stderr[-3000:]}")
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    tmp.cleanup()
    return results


def estimate(name: str, steps: int, layers: int) -> int:
    from lorakit.train.estimate import text_estimate

    cfg = config(name, steps, CACHE / "unused", layers)
    return sum(text_estimate(cfg, 32).per_process(cfg.train.distributed, 2).values())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rank-of")
    parser.add_argument("--out")
    parser.add_argument("--layers", type=int, default=48)
    parser.add_argument("--only", nargs="*", default=list(CANDIDATES))
    args = parser.parse_args()
    if args.rank_of:
        rank_main(args.rank_of, args.steps, args.out, args.layers)
        return
    import torch

    model_dir(args.layers)
    print(f"torch {torch.__version__}, {args.layers} layers, 2 processes x 1 thread, gloo, {args.steps} steps, "
          "batch 1 x 32 tokens each")
    mb = 2 ** 20
    rows = {name: measure(name, args.steps, args.layers) for name in args.only}
    print(f"{'candidate':<12}{'load peak MB':>14}{'train peak MB':>15}{'estimate MB':>13}{'est/measured':>14}")
    peaks = {}
    for name, ranks in rows.items():
        load, train = max(r["load"] for r in ranks), max(r["train"] for r in ranks)
        est = estimate(name, args.steps, args.layers)
        peaks[name] = train
        print(f"{name:<12}{load / mb:>14.0f}{train / mb:>15.0f}{est / mb:>13.0f}{est / train:>14.2f}")
    for name, goal in (("fsdp", 0.60), ("fsdp-qlora", 0.35)):
        if name in peaks and "ddp" in peaks:
            print(f"training peak per process: {name} / fp32 ddp = {peaks[name] / peaks['ddp']:.2f} (goal <= {goal})")


if __name__ == "__main__":
    main()
