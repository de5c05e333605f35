"""Host and Origin checks on every request, the token (required off loopback), file serving confined."""

import os

import pytest
from fastapi.testclient import TestClient
from ui_helpers import HOST, snapshot

from lorakit.ui.app import create_app


def test_dns_rebinding_and_cross_site_posts_are_refused(client, ws_root):
    assert client.get("/").status_code == 200
    r = client.get("/api/datasets", headers={"host": "evil.example:7870"})
    assert r.status_code == 400 and "is not a name of this server" in r.json()["error"]
    before = snapshot(ws_root)
    r = client.post("/api/datasets", json={"name": "x"}, headers={"origin": "http://evil.example"})
    assert r.status_code == 403 and "cross-origin" in r.json()["error"]
    r = client.post("/api/datasets", json={"name": "x"}, headers={"sec-fetch-site": "cross-site"})
    assert r.status_code == 403
    r = client.post("/api/datasets", json={"name": "x"}, headers={"origin": "null"})
    assert r.status_code == 403
    assert snapshot(ws_root) == before
    r = client.post("/api/datasets", json={"name": "ok"}, headers={"origin": HOST})  # the UI's own pages
    assert r.status_code == 200
    r = client.post("/api/datasets", content=b"{" + b" " * (2 << 20) + b"}", headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_token_everywhere_when_set(ws_root):
    app = create_app(ws_root, token="s3cret", start_runner=False)
    with TestClient(app, base_url=HOST) as c:
        for path in ("/", "/api/datasets", "/static/app.css", "/api/datasets/d1/thumb?path=img/2_sks%20shape/0000.png"):
            r = c.get(path)
            assert r.status_code == 401 and "needs its token" in r.json()["error"], path
        assert c.get("/api/datasets", headers={"authorization": "Bearer nope"}).status_code == 401
        assert c.get("/api/datasets", headers={"authorization": "Bearer s3cret"}).status_code == 200
        r = c.get("/?token=s3cret")
        assert r.status_code == 200 and "HttpOnly; SameSite=Strict" in r.headers["set-cookie"]
        assert c.get("/api/datasets").status_code == 200  # the cookie from then on
        assert c.get("/static/app.css").status_code == 200


def test_non_loopback_needs_a_token(ws_root):
    with pytest.raises(ValueError, match="needs a token"):
        create_app(ws_root, host="0.0.0.0", start_runner=False)
    app = create_app(ws_root, host="0.0.0.0", token="t", start_runner=False)
    with TestClient(app, base_url="http://192.168.1.5:7870") as c:
        assert c.get("/api/datasets").status_code == 401
        assert c.get("/api/datasets", headers={"authorization": "Bearer t"}).status_code == 200


def test_files_are_served_from_runs_outputs_and_configs_only(client, ws_root, tmp_path):
    (ws_root / "runs/r").mkdir(parents=True)
    (ws_root / "runs/r/train.log").write_text("log")
    (tmp_path / "secret.txt").write_text("secret")
    os.symlink(tmp_path, ws_root / "runs/out")
    assert client.get("/api/files", params={"path": "runs/r/train.log"}).text == "log"
    for path, status in (("../secret.txt", 400), ("/etc/passwd", 400), ("runs/out/secret.txt", 400),
                         (".lorakit/jobs.sqlite3", 403), ("datasets/d1/img/2_sks shape/0000.txt", 403),
                         ("runs/r", 403), ("runs/none.png", 404)):
        r = client.get("/api/files", params={"path": path})
        assert r.status_code == status and r.json()["error"], (path, r.status_code)
    assert client.get("/api/png-info", params={"path": "../x.png"}).status_code == 400
    assert client.get("/api/nothing").status_code == 404 and client.get("/api/nothing").json()["code"] == "not_found"
