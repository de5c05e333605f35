"""A live ``lorakit serve`` attacked the way a web page or a careless client can: forged Host (DNS
rebinding), a ``text/plain`` cross-origin POST, runtime loading that is off unless asked for, huge
bodies and prompts (the health endpoint must keep answering), reserved names, pinned slots, pip: paths
and trainer run folders."""

from __future__ import annotations

import shutil
import statistics
import threading
import time

import httpx
import pytest
from tiny_serve import API_KEY, live

from lorakit.config import ConfigError


@pytest.fixture(scope="module")
def loader(serve_dirs, tmp_path_factory):
    """A server with runtime loading on (what the attacks below would abuse) over a copy of the adapters."""
    from lorakit.serve import ServeConfig

    base, adapters = serve_dirs
    root = tmp_path_factory.mktemp("loader") / "adapters"
    shutil.copytree(adapters, root)
    config = ServeConfig(base=str(base), adapters=str(root), allow_runtime_loading=True, max_tokens=8,
                         max_loaded=3, allowed_origins=["http://localhost:5173"])
    with live(config) as running:
        yield running


def _registered(server) -> set[str]:
    return set(server.registry.paths)


def test_dns_rebinding_host_is_refused(loader):
    server, url, _ = loader
    body = {"lora_name": "rebound", "lora_path": "alpha"}
    r = httpx.post(url + "/v1/load_lora_adapter", json=body, headers={"host": "attacker.example:8000"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "host_not_allowed"
    r = httpx.get(url + "/v1/models", headers={"host": "attacker.example"})  # reading answers is refused too
    assert r.status_code == 400
    assert "rebound" not in _registered(server)
    port = url.rsplit(":", 1)[1]
    assert httpx.get(url + "/v1/models", headers={"host": f"localhost:{port}"}).status_code == 200


def test_cross_origin_text_plain_post_cannot_load_adapters(loader):
    server, url, _ = loader
    # a form or fetch(..., {mode: "no-cors"}) from any web page: no preflight, Origin set by the browser
    r = httpx.post(url + "/v1/load_lora_adapter", content=b'{"lora_name": "drive_by", "lora_path": "alpha"}',
                   headers={"content-type": "text/plain", "origin": "https://attacker.example"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "origin_not_allowed"
    assert "drive_by" not in _registered(server)
    r = httpx.post(url + "/v1/completions", json={"model": "alpha", "prompt": "the", "max_tokens": 2},
                   headers={"origin": "null"})
    assert r.status_code == 403
    # the origin given with --allow-origin works, with CORS headers a browser accepts
    ok = httpx.post(url + "/v1/completions", json={"model": "alpha", "prompt": "the", "max_tokens": 2},
                    headers={"origin": "http://localhost:5173"})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "http://localhost:5173"
    pre = httpx.options(url + "/v1/completions", headers={"origin": "http://localhost:5173",
                                                          "access-control-request-method": "POST",
                                                          "access-control-request-headers": "content-type"})
    assert pre.status_code == 204 and pre.headers["access-control-allow-origin"] == "http://localhost:5173"


def test_runtime_loading_is_off_by_default(server):
    url = server[1]
    r = httpx.post(url + "/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": "alpha"},
                   headers={"Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 404 and "--allow-runtime-loading" in r.json()["error"]["message"]
    assert server[0].config.allow_runtime_loading is False and not server[0].registry.paths


def test_reserved_names_cannot_be_adapters(loader, serve_dirs):
    server, url, _ = loader
    for name in ("base", serve_dirs[0].name):
        r = httpx.post(url + "/v1/load_lora_adapter", json={"lora_name": name, "lora_path": "alpha"})
        assert r.status_code == 400 and "reserved for the base model" in r.json()["error"]["message"], name
    # a directory called "base" in DIR is not an adapter: "base" keeps meaning the base model
    shutil.copytree(server.registry.root / "beta", server.registry.root / "base")
    try:
        assert "base" not in server.registry.available()
        base = httpx.post(url + "/v1/completions", json={"model": "base", "prompt": "the cat", "max_tokens": 4,
                                                         "temperature": 0})
        plain = httpx.post(url + "/v1/completions", json={"model": "", "prompt": "the cat", "max_tokens": 4,
                                                          "temperature": 0})
        assert base.status_code == 200 and base.json()["choices"] == plain.json()["choices"]
        assert "base" not in server.registry.loaded
    finally:
        shutil.rmtree(server.registry.root / "base")


def test_pinning_at_runtime_keeps_a_free_slot(loader):
    server, url, _ = loader
    for name, path in (("p1", "alpha"), ("p2", "beta")):  # 2 of the 3 slots
        r = httpx.post(url + "/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path, "pin": True})
        assert r.status_code == 200, r.text
    r = httpx.post(url + "/v1/load_lora_adapter", json={"lora_name": "p3", "lora_path": "gamma", "pin": True})
    assert r.status_code == 400 and "no free slot" in r.json()["error"]["message"]
    assert server.registry.pinned == {"p1", "p2"}
    for name in ("p1", "p2"):
        assert httpx.post(url + "/v1/unload_lora_adapter", json={"lora_name": name}).status_code == 200


def test_huge_body_is_refused_before_it_is_read(server):
    url = server[1]
    prompt = "the cat " * (20 * 1024 * 1024 // 8)  # the 20 MB prompt that froze the server
    start = time.monotonic()
    r = httpx.post(url + "/v1/completions", json={"model": "base", "prompt": prompt, "max_tokens": 2}, timeout=60)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert time.monotonic() - start < 10
    assert httpx.get(url + "/health").status_code == 200


def test_long_prompt_is_refused_by_length_before_tokenizing(server, monkeypatch):
    srv, url, _ = server
    calls = []
    tokenize = srv._tokenize
    monkeypatch.setattr(srv, "_tokenize", lambda *a: calls.append(1) or tokenize(*a))
    limit = srv.config.max_prompt_tokens * srv.token_chars
    r = httpx.post(url + "/v1/completions", json={"model": "base", "prompt": "x" * (limit + 1), "max_tokens": 2},
                   headers={"Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert f"{limit + 1} characters" in r.json()["error"]["message"] and calls == []
    r = httpx.post(url + "/v1/completions", json={"model": "base", "prompt": list(range(5)) * 100, "max_tokens": 2},
                   headers={"Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 400 and "500 tokens" in r.json()["error"]["message"] and calls == []


def test_health_answers_while_a_big_prompt_is_tokenized(serve_dirs, monkeypatch):
    """A prompt that passes every cheap check but takes seconds to tokenize runs off the event loop.

    The tokenizer is slowed to 2 s by a blocking sleep, so the test shows the same thing on any CPU:
    on the event loop that sleep would hold every /health request for 2 s.
    """
    from lorakit.serve import ServeConfig

    base, _ = serve_dirs
    config = ServeConfig(base=str(base), max_body_bytes=64 << 20, max_prompt_tokens=8_000_000, max_tokens=4)
    prompt = "the cat sat on the mat " * 2_000
    with live(config) as (srv, url, _):
        tokenize = srv._tokenize
        monkeypatch.setattr(srv, "_tokenize", lambda *a: time.sleep(2.0) or tokenize(*a))
        result = {}

        def big():
            start = time.monotonic()
            result["r"] = httpx.post(url + "/v1/completions", timeout=120,
                                     json={"model": "base", "prompt": prompt, "max_tokens": 2})
            result["seconds"] = time.monotonic() - start

        thread = threading.Thread(target=big)
        thread.start()
        latencies = []
        while thread.is_alive():
            start = time.monotonic()
            assert httpx.get(url + "/health", timeout=30).status_code == 200
            latencies.append(time.monotonic() - start)
            time.sleep(0.05)
        thread.join()
        # too long for the model's 64 positions: refused after tokenizing, which is what took the time
        assert result["r"].status_code == 400 and "context" in result["r"].json()["error"]["message"]
        assert result["seconds"] >= 2.0
        # on the event loop the 2 s sleep would hold every /health answer until it ends: one or two answers in
        # all; off it, answers keep coming while the prompt is tokenized (the median ignores a loaded machine's
        # stray slow one)
        assert len(latencies) >= 5 and statistics.median(latencies) < 0.5, (latencies, result["seconds"])


def test_pinned_adapters_may_not_take_every_slot(serve_dirs):
    from lorakit.serve import ServeConfig

    base, adapters = serve_dirs
    with pytest.raises(ConfigError, match="would leave no slot for any other adapter.*at least 2"):
        ServeConfig(base=str(base), adapters=str(adapters), max_loaded=1, pinned=["alpha"]).validate()
    ServeConfig(base=str(base), adapters=str(adapters), max_loaded=2, pinned=["alpha"]).validate()


def test_pip_model_path_and_trainer_run_folders(serve_dirs, tmp_path, monkeypatch, reference):
    """``pip:PACKAGE/dir`` as ``predict`` takes it, and ``--adapters runs/`` with runs/NAME/adapter."""
    import openai

    base, adapters = serve_dirs
    package = tmp_path / "site" / "tiny_llm_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    shutil.copytree(base, package / "model")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    runs = tmp_path / "runs"
    for name in ("alpha", "beta"):
        shutil.copytree(adapters / name, runs / f"{name}-run" / "adapter")
        (runs / f"{name}-run" / "metrics.jsonl").write_text("")
    (runs / "empty-run").mkdir()
    from lorakit.serve import ServeConfig

    config = ServeConfig(base="pip:tiny_llm_pkg/model", adapters=str(runs), max_tokens=8)
    with live(config) as (srv, url, _):
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        assert {m.id for m in client.models.list().data} == {"model", "alpha-run", "beta-run"}
        out = client.completions.create(model="beta-run", prompt="the cat sat on", max_tokens=6, temperature=0)
        assert out.choices[0].text == reference("beta", "the cat sat on", 6)
