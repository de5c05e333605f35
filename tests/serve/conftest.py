"""A live ``lorakit serve`` on 127.0.0.1 (random free port): tiny Llama built from a config, a chat
tokenizer built offline, and an adapter directory of three adapters with random factors."""

from __future__ import annotations

import contextlib
import threading
import time

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
            for n, p in model.named_parameters():
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
    """Run ``config`` in uvicorn on a free port in a thread; yields (server, base_url, uvicorn server)."""
    import uvicorn

    from lorakit.serve import create_server

    server = create_server(config)
    uv = uvicorn.Server(uvicorn.Config(server.app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    port = uv.servers[0].sockets[0].getsockname()[1]
    try:
        yield server, f"http://127.0.0.1:{port}", uv
    finally:
        uv.should_exit = True
        thread.join(timeout=30)


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
