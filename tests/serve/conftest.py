"""Fixtures for the server tests: a tiny Llama built from a config, a chat tokenizer built offline,
an adapter directory of three adapters, one live server per module (tests/tiny_serve.py), and the
library's own greedy generation as the reference answers are compared with."""

from __future__ import annotations

import pytest
import torch
from tiny_hf import llama_dir
from tiny_serve import API_KEY, live, make_adapters

import lorakit


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


@pytest.fixture(scope="module")
def reference(serve_dirs):
    """(adapter, strength, prompt ids, max_tokens) -> text, from HF generate with the adapter active."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, adapters = serve_dirs
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base).eval()
    for name in ("alpha", "beta", "gamma"):
        lorakit.load_adapter(model, adapters / name, name, activate=False)

    def generate(adapter, prompt_ids, max_tokens, strength=1.0):
        ids = torch.tensor([prompt_ids])
        with torch.no_grad():
            kw = dict(max_new_tokens=max_tokens, do_sample=False, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
            if adapter is None:
                with lorakit.disable_adapters(model):
                    out = model.generate(ids, **kw)
            else:
                lorakit.set_active_adapters(model, {adapter: strength})
                out = model.generate(ids, **kw)
        new = [t for t in out[0, ids.shape[1]:].tolist() if t != tok.eos_token_id]
        return tok.decode(new, skip_special_tokens=True)

    def text(adapter, prompt, max_tokens, strength=1.0):
        return generate(adapter, tok(prompt)["input_ids"], max_tokens, strength)

    text.tok, text.generate, text.model = tok, generate, model
    return text
