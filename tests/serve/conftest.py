"""A live ``lorakit serve`` on 127.0.0.1 (random free port): tiny Llama built from a config, a chat
tokenizer built offline, and an adapter directory of three adapters with random factors."""

from __future__ import annotations

import contextlib

import pytest
import torch
from tiny_hf import llama_dir

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


@pytest.fixture(scope="session")
def serve_dirs(tmp_path_factory):
    base = llama_dir(tmp_path_factory.mktemp("base"), chat=True)
    return base, make_adapters(base, tmp_path_factory.mktemp("adapters"))


@contextlib.contextmanager
def live(config):
    """``config`` served on a free 127.0.0.1 port: yields (server, base URL, Running)."""
    from lorakit.serve import in_thread

    config.port = 0
    with in_thread(config) as running:
        yield running.server, running.url, running


@pytest.fixture(scope="module")
def server(serve_dirs):
    from lorakit.serve import ServeConfig

    base, adapters = serve_dirs
    config = ServeConfig(base=str(base), adapters=str(adapters), api_key=API_KEY, max_loaded=3, max_tokens=64,
                         max_prompt_tokens=40)
    with live(config) as running:
        yield running


@pytest.fixture
def client(server):
    import openai

    return openai.OpenAI(base_url=server[1] + "/v1", api_key=API_KEY, max_retries=0)
