"""``lorakit.serve.guard``: Host (DNS rebinding), Origin (cross-site requests) and body-size checks in
front of any ASGI app, exercised through httpx against a tiny Starlette app that counts its calls."""

from __future__ import annotations

import socket

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from lorakit.serve.guard import Guard, GuardConfig


def _client(calls: list, **kw) -> TestClient:
    async def echo(request):
        body = await request.body()
        calls.append(len(body))
        return JSONResponse({"read": len(body)})

    app = Starlette(routes=[Route("/x", echo, methods=["GET", "POST"])])
    return TestClient(Guard(app, GuardConfig(**kw)), base_url="http://127.0.0.1:8000")


@pytest.mark.parametrize(("bind", "host", "ok"), [
    ("127.0.0.1", "127.0.0.1:8000", True), ("127.0.0.1", "localhost:8000", True), ("127.0.0.1", "[::1]:8000", True),
    ("127.0.0.1", "LOCALHOST.:8000", True), ("127.0.0.1", "127.0.0.2", True),
    ("127.0.0.1", "attacker.example:8000", False),  # DNS rebinding: the page's own name
    ("127.0.0.1", "192.168.1.20:8000", False), ("127.0.0.1", "localhost.attacker.example", False),
    ("0.0.0.0", "192.168.1.20:8000", True), ("0.0.0.0", "[fe80::1]:8000", True), ("0.0.0.0", "localhost", True),
    ("0.0.0.0", "attacker.example", False), ("10.0.0.5", "10.0.0.5:8000", True), ("10.0.0.5", "localhost", False),
])
def test_host_is_checked_against_the_bound_address(bind, host, ok):
    calls = []
    r = _client(calls, bind=bind).get("/x", headers={"host": host})
    assert (r.status_code == 200) == ok, r.text
    if not ok:
        assert r.status_code == 400 and r.json()["error"]["code"] == "host_not_allowed"
        assert "--allowed-host" in r.json()["error"]["message"]
        assert calls == []


def test_configured_host_names_and_the_machine_name():
    calls = []
    client = _client(calls, bind="127.0.0.1", allowed_hosts=["gpu-box.lan"])
    assert client.get("/x", headers={"host": "gpu-box.lan:8000"}).status_code == 200
    assert client.get("/x", headers={"host": "other.lan"}).status_code == 400
    assert _client(calls, bind="0.0.0.0").get("/x", headers={"host": socket.gethostname()}).status_code == 200
    assert _client(calls, allowed_hosts=["*"]).get("/x", headers={"host": "anything.example"}).status_code == 200


def test_cross_origin_text_plain_post_is_refused_before_the_app_runs():
    calls = []
    client = _client(calls)
    # what any web page can send without a CORS preflight
    r = client.post("/x", content=b'{"lora_name": "x"}', headers={"content-type": "text/plain",
                                                                   "origin": "https://attacker.example"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "origin_not_allowed"
    assert "--allow-origin" in r.json()["error"]["message"] and calls == []
    for origin in ("null", "http://localhost:9999", "not a url"):
        assert client.post("/x", content=b"{}", headers={"origin": origin}).status_code == 403, origin
    # the server's own pages (same host and port) and requests without Origin (curl, SDKs) pass
    assert client.post("/x", content=b"{}", headers={"origin": "http://127.0.0.1:8000"}).status_code == 200
    assert client.post("/x", content=b"{}").status_code == 200
    assert len(calls) == 2


def test_allowed_origin_gets_cors_headers_and_preflight():
    calls = []
    client = _client(calls, allowed_origins=["http://localhost:3000"])
    r = client.post("/x", json={}, headers={"origin": "http://localhost:3000"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://localhost:3000"
    pre = client.options("/x", headers={"origin": "http://localhost:3000", "access-control-request-method": "POST",
                                        "access-control-request-headers": "authorization, content-type"})
    assert pre.status_code == 204 and pre.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert "authorization" in pre.headers["access-control-allow-headers"]
    refused = client.options("/x", headers={"origin": "http://localhost:3001", "access-control-request-method": "POST"})
    assert refused.status_code == 403 and "access-control-allow-origin" not in refused.headers
    assert len(calls) == 1
    assert _client(calls, allowed_origins=["*"]).post("/x", json={}, headers={"origin": "https://a.example"}).status_code == 200


def test_body_limit_by_content_length_and_while_streaming():
    calls = []
    client = _client(calls, max_body=1000)
    assert client.post("/x", content=b"x" * 1000).json() == {"read": 1000}
    r = client.post("/x", content=b"x" * 1001)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert "1001 bytes" in r.json()["error"]["message"] and "1000 bytes" in r.json()["error"]["message"]
    assert calls == [1000]  # refused before the app read anything

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(50):
            yield b"y" * 100

    r = client.post("/x", content=chunks())
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert calls == [1000]
    assert _client(calls, max_body=None).post("/x", content=b"z" * 5000).json() == {"read": 5000}


def test_guard_works_in_front_of_a_real_socket_server():
    """The same checks through uvicorn (what ``lorakit serve`` and ``lorakit ui`` run)."""
    import contextlib
    import threading
    import time

    import uvicorn

    calls = []

    async def echo(request):
        calls.append(len(await request.body()))
        return JSONResponse({"ok": True})

    app = Guard(Starlette(routes=[Route("/x", echo, methods=["POST"])]), GuardConfig(max_body=100))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        port = server.servers[0].sockets[0].getsockname()[1]
        url = f"http://127.0.0.1:{port}/x"
        assert httpx.post(url, content=b"{}", timeout=10).status_code == 200
        assert httpx.post(url, content=b"{}", headers={"host": "attacker.example"}, timeout=10).status_code == 400
        assert httpx.post(url, content=b"{}", headers={"origin": "https://a.example"}, timeout=10).status_code == 403
        with contextlib.suppress(httpx.HTTPError):  # the server may close the connection right after its 413
            assert httpx.post(url, content=(b"y" * 50 for _ in range(10)), timeout=10).status_code == 413
        assert httpx.post(url, content=b"{}", timeout=10).status_code == 200  # still serving
        assert calls == [2, 2]
    finally:
        server.should_exit = True
        thread.join(timeout=15)
