"""Fixtures for the server tests: a tiny Llama built from a config, a chat tokenizer built offline,
an adapter directory of three adapters, and one live server per module (tests/tiny_serve.py)."""

from __future__ import annotations

import pytest
from tiny_hf import llama_dir
from tiny_serve import API_KEY, live, make_adapters


@pytest.fixture(scope="session")
def serve_dirs(tmp_path_factory):
    base = llama_dir(tmp_path_factory.mktemp("base"), chat=True)
    return base, make_adapters(base, tmp_path_factory.mktemp("adapters"))


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
