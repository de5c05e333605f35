"""``lorakit serve`` against a live server on 127.0.0.1 with the real ``openai`` client: every answer
equals the library's own greedy generation with that adapter (and strength), alone or batched."""

from __future__ import annotations

import shutil
import threading
import time

import httpx
import openai
import pytest
from tiny_serve import API_KEY, live, make_adapters

import lorakit

PROMPTS = ["the cat sat on", "turn on the kitchen", "what time is it", "my lamp is on the table"]


def test_models_lists_base_and_adapters_with_parent(client, serve_dirs):
    data = {m.id: m for m in client.models.list().data}
    base = serve_dirs[0].name
    assert set(data) == {base, "alpha", "beta", "gamma"}
    assert data[base].parent is None
    assert all(data[n].parent == base for n in ("alpha", "beta", "gamma"))


@pytest.mark.parametrize("model", ["base", "alpha", "beta", "gamma"])
def test_completion_equals_library_generate(client, reference, model):
    got = client.completions.create(model=model, prompt=PROMPTS[0], max_tokens=8, temperature=0)
    adapter = None if model == "base" else model
    assert got.choices[0].text == reference(adapter, PROMPTS[0], 8)
    assert got.usage.prompt_tokens == len(reference.tok(PROMPTS[0])["input_ids"])


def test_lora_scale_and_empty_model_name(client, reference):
    half = client.completions.create(model="alpha", prompt=PROMPTS[1], max_tokens=8, temperature=0,
                                     extra_body={"lora_scale": 0.5})
    assert half.choices[0].text == reference("alpha", PROMPTS[1], 8, 0.5)
    zero = client.completions.create(model="alpha", prompt=PROMPTS[1], max_tokens=8, temperature=0,
                                     extra_body={"lora_scale": 0.0})
    empty = client.completions.create(model="", prompt=PROMPTS[1], max_tokens=8, temperature=0)
    assert zero.choices[0].text == empty.choices[0].text == reference(None, PROMPTS[1], 8)


def test_concurrent_mixed_adapters_are_batched_and_exact(client, server, reference):
    jobs = [(m, p, 6 + i % 5) for i, (m, p) in enumerate((m, p) for m in ("base", "alpha", "beta", "gamma")
                                                         for p in PROMPTS)]
    results: dict[int, str] = {}

    def worker(i, model, prompt, n):
        out = client.completions.create(model=model, prompt=prompt, max_tokens=n, temperature=0)
        results[i] = out.choices[0].text

    steps_before = server[0].engine.steps
    threads = [threading.Thread(target=worker, args=(i, *job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == len(jobs)
    for i, (model, prompt, n) in enumerate(jobs):
        assert results[i] == reference(None if model == "base" else model, prompt, n), f"job {i} {model}"
    assert server[0].engine.peak_rows > 1  # rows of different adapters shared decode steps
    assert server[0].engine.steps - steps_before < sum(n for *_, n in jobs)


def test_streaming_completion_and_chat(client, reference):
    stream = client.completions.create(model="beta", prompt=PROMPTS[2], max_tokens=10, temperature=0, stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks) == reference("beta", PROMPTS[2], 10)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")

    messages = [{"role": "user", "content": "turn off the bedroom fan"}]
    full = client.chat.completions.create(model="gamma", messages=messages, max_tokens=10, temperature=0)
    tok = reference.tok
    ids = tok(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
              add_special_tokens=False)["input_ids"]
    assert full.choices[0].message.content == reference.generate("gamma", ids, 10)
    parts = list(client.chat.completions.create(model="gamma", messages=messages, max_tokens=10, temperature=0,
                                                stream=True))
    assert parts[0].choices[0].delta.role == "assistant"
    assert "".join(p.choices[0].delta.content or "" for p in parts) == full.choices[0].message.content


def test_stop_strings_and_sampling_seed(client, reference):
    text = reference("alpha", PROMPTS[3], 12)
    words = text.split()
    assert len(words) >= 3, f"the reference text {text!r} is too short for this test"
    got = client.completions.create(model="alpha", prompt=PROMPTS[3], max_tokens=12, temperature=0,
                                    stop=[words[2]])
    assert got.choices[0].text == text[:text.find(words[2])]
    assert got.choices[0].finish_reason == "stop"
    kw = dict(model="alpha", prompt=PROMPTS[0], max_tokens=8, temperature=1.0, seed=7)
    assert client.completions.create(**kw).choices[0].text == client.completions.create(**kw).choices[0].text


def test_errors_are_openai_shaped(client, server):
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="nope", prompt="the", max_tokens=2)
    assert "alpha" in str(e.value) and "gamma" in str(e.value)
    for bad in ("../alpha", "/etc", "a/b"):
        with pytest.raises(openai.BadRequestError, match="invalid adapter name"):
            client.completions.create(model=bad, prompt="the", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model="alpha", prompt="the", max_tokens=10_000)
    with pytest.raises(openai.BadRequestError, match="at most 40"):
        client.completions.create(model="alpha", prompt="the cat " * 30, max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="exceeds the model's context of 64 tokens"):
        client.completions.create(model="alpha", prompt="the cat " * 10, max_tokens=60)
    raw = httpx.post(server[1] + "/v1/completions", content=b"{not json", headers={"Authorization": f"Bearer {API_KEY}"})
    assert raw.status_code == 400 and raw.json()["error"]["message"] == "the request body is not valid JSON."
    unauth = httpx.post(server[1] + "/v1/completions", json={"model": "base", "prompt": "the"})
    assert unauth.status_code == 401 and unauth.json()["error"]["code"] == "invalid_api_key"
    # the server still answers after all of that
    assert client.completions.create(model="alpha", prompt="the", max_tokens=2, temperature=0).choices


def test_lru_eviction_pinning_and_runtime_loading(serve_dirs, tmp_path, reference):
    from lorakit.serve import ServeConfig

    base, adapters = serve_dirs
    root = tmp_path / "adapters"
    shutil.copytree(adapters, root)
    config = ServeConfig(base=str(base), adapters=str(root), max_loaded=2, pinned=["alpha"], max_tokens=16,
                         allow_runtime_loading=True)
    with live(config) as (server, url, _):
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        loaded = lambda: {m.id for m in client.models.list().data if getattr(m, "loaded", False)}  # noqa: E731
        assert loaded() == {"alpha"}
        client.completions.create(model="beta", prompt="the", max_tokens=2)
        assert loaded() == {"alpha", "beta"}
        client.completions.create(model="gamma", prompt="the", max_tokens=2)  # evicts beta, never alpha
        assert loaded() == {"alpha", "gamma"}
        # an adapter copied into DIR while running is found on first use
        make_adapters(base, root, {"delta": dict(r=2, alpha=2, target_modules=["k_proj"])}, seed=9)
        out = client.completions.create(model="delta", prompt=PROMPTS[0], max_tokens=6, temperature=0)
        assert "delta" in loaded()
        (root / "broken").mkdir()  # a broken adapter fails its own request only
        (root / "broken" / "adapter_config.json").write_text("{not json")
        with pytest.raises(openai.BadRequestError, match="could not be loaded"):
            client.completions.create(model="broken", prompt="the", max_tokens=2)
        assert client.completions.create(model="beta", prompt="the", max_tokens=2).choices
        post = lambda path, body: httpx.post(url + path, json=body)  # noqa: E731
        r = post("/v1/load_lora_adapter", {"lora_name": "beta2", "lora_path": str(root / "beta")})
        assert r.status_code == 200 and "beta2" in loaded()
        r = post("/v1/load_lora_adapter", {"lora_name": "evil", "lora_path": str(tmp_path)})
        assert r.status_code == 400 and "outside the adapter directory" in r.json()["error"]["message"]
        r = post("/v1/unload_lora_adapter", {"lora_name": "beta2"})
        assert r.status_code == 200 and "beta2" not in {m.id for m in client.models.list().data}
        assert post("/v1/unload_lora_adapter", {"lora_name": "beta2"}).status_code == 404
    lorakit.load_adapter(reference.model, root / "delta", "delta", activate=False)
    assert out.choices[0].text == reference("delta", PROMPTS[0], 6)


def test_queue_full_429_and_shutdown_drains(serve_dirs):
    from lorakit.serve import ServeConfig

    base, adapters = serve_dirs
    config = ServeConfig(base=str(base), adapters=str(adapters), max_batch=1, max_queue=1, max_tokens=64)
    with live(config) as (server, url, uv):
        statuses: list[int] = []
        bodies: list[dict] = []

        def call():
            r = httpx.post(url + "/v1/completions", timeout=60,
                           json={"model": "alpha", "prompt": "the cat", "max_tokens": 48, "temperature": 1.0,
                                 "seed": 1})
            statuses.append(r.status_code)
            bodies.append(r.json())

        threads = [threading.Thread(target=call) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert 429 in statuses and 200 in statuses, statuses
        assert all(b["error"]["code"] == "queue_full" for s, b in zip(statuses, bodies, strict=True) if s == 429)
        # shutdown while a stream is running: it still completes
        got: list[str] = []

        def stream():
            client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
            for chunk in client.completions.create(model="gamma", prompt="the", max_tokens=48, temperature=1.0,
                                                   seed=3, stream=True):
                got.append(chunk.choices[0].finish_reason or "")
        before = server.engine.steps
        t = threading.Thread(target=stream)
        t.start()
        while server.engine.steps < before + 3 and t.is_alive():
            time.sleep(0.001)
        uv.stop()
        t.join(timeout=60)
        assert got and got[-1] in ("stop", "length")
