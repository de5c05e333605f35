"""Load test of ``lorakit serve`` on 127.0.0.1 (bounded): C concurrent clients over 16 adapters.

Llama-shaped model (hidden 512, 4 layers) built from a config, 16 adapters of rank 8..16 on every
linear layer. Every client sends R completion requests in a row (random prompt, ``max_tokens``
tokens exactly via ``ignore_eos``, greedy). Three servers, one after the other, same load:

* mixed    continuous batching across adapters (lorakit's default);
* single   one adapter per batch (the S-LoRA paper's baseline: PEFT-style adapter swapping);
* one      the same load, every request on one adapter (the ceiling for mixed batching).

Reports generated tokens/s, p50/p95 request latency, failures (must be 0).

    flock /tmp/lorakit-heavy.lock python benchmarks/serve_load.py [--clients 32] [--requests 3]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
sys.path.insert(0, os.path.dirname(__file__))

from _common import setup  # noqa: E402

import lorakit  # noqa: E402
from lorakit.serve import ServeConfig, in_thread  # noqa: E402

N_ADAPTERS = 16


def build(root: Path) -> tuple[Path, Path]:
    """A hidden-512 Llama directory (WordLevel tokenizer from tests/tiny_hf.py) and 16 adapters."""
    from tiny_hf import CORPUS, tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=512, intermediate_size=1376, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    base = root / "base"
    model.save_pretrained(base)
    tok.save_pretrained(base)
    g = torch.Generator().manual_seed(1)
    for i in range(N_ADAPTERS):
        m = LlamaForCausalLM(cfg)
        m.load_state_dict(model.state_dict())
        lorakit.inject(m, lorakit.LoraConfig(r=8 + i % 9, alpha=16, target_modules="all-linear"))
        with torch.no_grad():
            for p in m.parameters():
                if p.requires_grad:
                    p.add_(torch.randn(p.shape, generator=g) * 0.02)
        lorakit.save_adapter(m, root / "adapters" / f"a{i}")
    assert CORPUS
    return base, root / "adapters"


def load(url: str, clients: int, requests: int, max_tokens: int, adapter_of) -> dict:
    import httpx
    from tiny_hf import CORPUS

    latencies: list[float] = []
    failures: list[str] = []
    tokens = [0]
    lock = threading.Lock()

    def client(c: int) -> None:
        rng = random.Random(c)
        with httpx.Client(timeout=600) as http:
            for r in range(requests):
                body = {"model": adapter_of(c, r), "prompt": rng.choice(CORPUS), "max_tokens": max_tokens,
                        "temperature": 0, "ignore_eos": True}
                t = time.perf_counter()
                resp = http.post(url + "/v1/completions", json=body)
                dt = time.perf_counter() - t
                with lock:
                    if resp.status_code != 200:
                        failures.append(f"{resp.status_code}: {resp.text[:200]}")
                    else:
                        latencies.append(dt)
                        tokens[0] += resp.json()["usage"]["completion_tokens"]

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=20) if len(latencies) > 1 else [float("nan")] * 19
    return {"tokens_s": tokens[0] / wall, "p50": statistics.median(latencies), "p95": q[18],
            "failed": len(failures), "done": len(latencies), "wall": wall, "errors": failures[:3]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    setup(threads=args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        base, adapters = build(Path(tmp))
        scenarios = {"mixed": ("mixed", lambda c, r: f"a{(c + r) % N_ADAPTERS}"),
                     "single": ("single", lambda c, r: f"a{(c + r) % N_ADAPTERS}"),
                     "one": ("mixed", lambda c, r: "a0")}
        print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; {args.clients} clients x "
              f"{args.requests} requests x {args.max_tokens} tokens over {N_ADAPTERS} adapters (ranks 8-16, "
              "all linear), hidden 512, 4 layers")
        print("| scenario | batching | tokens/s | p50 s | p95 s | requests ok | failed | peak decode / prefill rows | wall s |")
        print("|---|---|---|---|---|---|---|---|---|")
        results = {}
        for name, (batching, adapter_of) in scenarios.items():
            config = ServeConfig(base=str(base), adapters=str(adapters), port=0, max_loaded=N_ADAPTERS,
                                 max_batch=args.clients, max_queue=4 * args.clients, max_tokens=args.max_tokens,
                                 batching=batching)
            with in_thread(config) as running:
                load(running.url, 2, 1, 4, adapter_of)  # warm-up: loads adapters, first kernels
                res = load(running.url, args.clients, args.requests, args.max_tokens, adapter_of)
                peak = f"{running.server.engine.peak_rows} / {running.server.engine.peak_prefill}"
            results[name] = res
            print(f"| {name} | {batching} | {res['tokens_s']:.1f} | {res['p50']:.2f} | {res['p95']:.2f} | "
                  f"{res['done']} | {res['failed']} | {peak} | {res['wall']:.1f} |", flush=True)
            for e in res["errors"]:
                print("   error:", e)
        mixed = results["mixed"]["tokens_s"]
        print(f"\nmixed / single = {mixed / results['single']['tokens_s']:.2f}x, "
              f"mixed / one adapter = {mixed / results['one']['tokens_s']:.2f}x")


if __name__ == "__main__":
    main()
