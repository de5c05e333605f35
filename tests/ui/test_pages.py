"""Every HTML page of the app on one workspace (a dataset with a trashed image, a config, a finished run with
its files, a queued job, a LoRA in loras/): each shows what that workspace holds, and nothing a page loads
(its scripts, styles, icons) comes from another host."""

from __future__ import annotations

import html
import re
import time

import pytest
from ui_helpers import BASE, HOST, SLEEP

from lorakit.ui.runner import lorakit_argv

URL = re.compile(r"""(?:https?:)?//[^\s"'<>()]+""")
SUBRESOURCE = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")
XML_NAMESPACES = {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}  # names, never fetched


@pytest.fixture
def workspace(client, ws_root):
    r = client.post("/api/configs", json={"name": "c1", "preset": "sdworld",
                                          "form": {"data.train_data_dir": "datasets/d1/img",
                                                   "train.output_name": "ringlora", "train.output_dir": "runs/r1"}})
    assert r.status_code == 200, r.text
    assert client.post("/api/datasets/d1/trash", json={"path": "img/2_sks shape/0005.png"}).status_code == 200
    run = ws_root / "runs" / "r1"
    (run / "sample").mkdir(parents=True)
    (run / "launch.yaml").write_text((ws_root / "configs" / "c1.yaml").read_text())
    (run / "train.log").write_text("lora: step 4/4 loss 0.125\n")
    for name in ("ringlora-000002", "ringlora"):
        (run / f"{name}.safetensors").write_bytes(b"x")
    (run / "sample" / "ringlora_000002_00_7.png").write_bytes(b"png")
    (ws_root / "loras" / "styleA.safetensors").write_bytes(b"x")
    s = client.app.app.state.ui
    done = s.store.add("train", "r1", lorakit_argv("train", "runs/r1/launch.yaml"), str(run / "train.log"),
                       run_dir=str(run), config="c1", meta={"task": "diffusion"})
    s.store.update(done, state="completed", started=time.time() - 10, ended=time.time())
    waiting = s.store.add("generate", "a queued generation", SLEEP, str(s.ws.state / "g.log"))
    return done, waiting


def pages(done, waiting) -> dict[str, list[str]]:
    """Page -> texts it must hold (each tied to what the workspace fixture put there)."""
    trashed = "img/2_sks shape/0005.png"
    return {
        "/": ["<h1>Workspace</h1>", 'href="/datasets/d1">d1</a></td><td>5</td><td>3</td>', 'href="/configs/c1">c1</a>',
              f'href="/jobs/{done}">#{done} r1</a>', '<span class="state completed">completed</span>'],
        "/datasets": ["<h1>Datasets</h1>", 'href="/datasets/d1">d1</a></td><td>5</td><td>3</td>',
                      "<code>img/2_sks shape</code> <code>reg/1_shape</code>"],
        "/datasets/d1": ["5 training images · 3 reg images", 'data-path="img/2_sks shape/0000.png"',
                         'data-path="reg/1_shape/0002.png"', "page 1 / 1 · 8 images"],
        "/datasets/d1/tags": ['<table class="list" id="tag-table" data-dataset="d1">', "Rename a tag",
                              f"<option>{BASE}</option>"],
        "/datasets/d1/buckets?config=c1": ['id="bucket-table"', "<option selected>c1</option>",
                                           'name="resolution" value="32"', "optimizer steps"],
        "/configs": ["<h1>Training configs</h1>", 'data-launch="c1"', "<option>sdworld</option>",
                     "<option>sd15-character</option>"],
        "/configs/c1": ["<code>configs/c1.yaml</code>", 'name="data.train_data_dir"', 'value="datasets/d1/img"',
                        "<legend>network</legend>", 'id="prompts"'],
        "/jobs": [f'<tr data-job="{done}">', f'<tr data-job="{waiting}">', "a queued generation",
                  '<button data-act="run-now">run now</button>'],
        f"/jobs/{done}": [f"#{done} r1", 'id="state">completed</span>', 'href="/runs/r1/compare"', 'id="samples"'],
        f"/jobs/{waiting}": [f"#{waiting} a queued generation", 'id="state">queued</span>', 'id="outputs"'],
        "/generate": ["<h1>Generate</h1>", 'data-lora="styleA"', 'data-lora="ringlora-000002"', f"<option>{BASE}</option>"],
        "/trash": ["<h1>Trash</h1>", f"<code>{trashed}</code>", 'href="/datasets/d1">d1</a>', 'class="restore"'],
        "/runs/r1/compare": ["runs/r1", "<option selected>ringlora-000002</option><option selected>ringlora</option>",
                             "&lt;lora:ringlora:1&gt;"],
    }


def test_every_page_shows_the_workspace(client, workspace):
    for path, texts in pages(*workspace).items():
        r = client.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), (path, r.status_code)
        assert "internal error" not in r.text, path
        for text in texts:
            assert text in r.text, f"{path}: {text!r} not in the page"
    missing = client.get("/datasets/nope")  # an error is a page too, saying what is missing
    assert missing.status_code == 404 and "dataset &#39;nope&#39;: not found" in missing.text


def test_nothing_is_loaded_from_another_host(client, workspace):
    assets, seen = set(), []
    for path in pages(*workspace):
        text = client.get(path).text
        seen.append((path, text))
        for ref in SUBRESOURCE.findall(text):
            ref = html.unescape(ref)
            assert not ref.startswith("//") and (not ref.startswith(("http:", "https:")) or ref.startswith(HOST)), \
                (path, ref)
            if ref.startswith("/static/"):
                assets.add(ref)
    assert {"/static/app.js", "/static/app.css", "/static/job.js", "/static/favicon.svg"} <= assets
    for ref in sorted(assets):
        r = client.get(ref)
        assert r.status_code == 200, ref
        seen.append((ref, r.text))
    for where, text in seen:  # no absolute URL anywhere: in scripts (fetch, import) and styles (url(), @import)
        external = [u for u in URL.findall(text) if u not in XML_NAMESPACES and not u.startswith(HOST)]
        assert external == [], (where, external)


def test_an_error_page_when_the_job_table_fails_too(client, monkeypatch):
    def broken():
        raise OSError("disk I/O error")

    monkeypatch.setattr(client.app.app.state.ui.store, "all", broken)  # the header's running jobs cannot be read
    r = client.get("/datasets/nope")
    assert r.status_code == 404 and r.text == "<h1>404</h1><p>dataset &#x27;nope&#x27;: not found in datasets/.</p>"
