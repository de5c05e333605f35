"""Helpers for server tests and benchmarks: an adapter directory with random factors, and a live
``lorakit serve`` on a free 127.0.0.1 port."""

from __future__ import annotations

import contextlib

import torch

import lorakit

ADAPTERS = {"alpha": dict(r=4, alpha=8, target_modules="all-linear"),
            "beta": dict(r=8, alpha=4, use_rslora=True, target_modules=["q_proj", "v_proj", "down_proj"]),
            "gamma": dict(r=4, alpha=4, variant="dora", target_modules=["q_proj", "o_proj", "up_proj"])}
API_KEY = "sk-test-key"


def make_adapters(base, root, names=ADAPTERS, seed=0):
    from transformers import AutoModelForCausalLM

    for i, (name, kw) in enumerate(names.items()):
        model = AutoModelForCausalLM.from_pretrained(base)
        lorakit.inject(model, lorakit.LoraConfig(**kw))
        g = torch.Generator().manual_seed(seed + i)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn(p.shape, generator=g) * 0.5)
        lorakit.save_adapter(model, root / name)
    return root


@contextlib.contextmanager
def live(config):
    """``config`` served on a free 127.0.0.1 port: yields (server, base URL, Running)."""
    from lorakit.serve import in_thread

    config.port = 0
    with in_thread(config) as running:
        yield running.server, running.url, running
