"""Uploads: every refused file listed with its reason, ZIP entries that would leave their folder refused,
nothing written for a refused file, never over an existing one."""

import io
import os
import stat
import zipfile

from PIL import Image
from ui_helpers import png_bytes, snapshot

from lorakit.ui.uploads import Limits

URL = "/api/upload/d1"
FOLDER = "img/2_sks shape"


def post(client, files, folder=FOLDER):
    return client.post(URL, params={"folder": folder}, files=[("files", f) for f in files])


def test_files_with_a_reason_for_each_refusal(client, ws_root):
    good = png_bytes((40, 40))
    noisy = io.BytesIO()
    Image.frombytes("RGB", (64, 64), os.urandom(64 * 64 * 3)).save(noisy, format="PNG")
    truncated = noisy.getvalue()[:4000]
    r = post(client, [("new.png", good, "image/png"), ("new.txt", b"sks shape, new\n", "text/plain"),
                      ("notes.exe", b"MZ...", "application/octet-stream"), ("fake.png", b"hello, not a picture", "image/png"),
                      ("cut.png", truncated, "image/png"), ("tiny.png", png_bytes((8, 8)), "image/png"),
                      ("0000.png", good, "image/png"), ("orphan.txt", b"no image", "text/plain"),
                      ("latin1.png", good, "image/png"), ("latin1.txt", "caf\xe9".encode("latin-1"), "text/plain")])
    body = r.json()
    assert r.status_code == 200, r.text
    reasons = {x["name"]: x["reason"] for x in body["rejected"]}
    assert sorted(body["accepted"]) == ["latin1.png", "new.png", "new.txt"]
    assert reasons["notes.exe"].startswith("not an image (extension '.exe'")
    assert reasons["fake.png"].startswith("not an image")
    assert reasons["cut.png"].startswith("truncated or corrupt")
    assert reasons["tiny.png"] == "too small (8x8; each side must be at least 16 px)"
    assert "already in this folder" in reasons["0000.png"]
    assert reasons["orphan.txt"].startswith("caption without an image")
    assert "not UTF-8" in reasons["latin1.txt"]
    folder = ws_root / "datasets/d1" / FOLDER
    assert (folder / "new.png").read_bytes() == good and (folder / "new.txt").read_text() == "sks shape, new\n"
    for name in ("notes.exe", "fake.png", "cut.png", "tiny.png", "orphan.txt", "latin1.txt"):
        assert not (folder / name).exists(), name
    assert body["images"] == 8  # 6 + new.png + latin1.png


def test_size_caps(tmp_path, ws_root):
    from fastapi.testclient import TestClient

    from lorakit.ui.app import create_app

    limits = Limits(max_file_bytes=2000, max_files=3, max_pixels=100 * 100)
    with TestClient(create_app(ws_root, limits=limits, start_runner=False), base_url="http://127.0.0.1") as c:
        r = post(c, [("big.png", png_bytes((40, 40)) + b"\0" * 3000, "image/png"),
                     ("wide.png", png_bytes((200, 120)), "image/png"), ("a.png", png_bytes(), "image/png"),
                     ("b.png", png_bytes(), "image/png"), ("c.png", png_bytes(), "image/png")])
        reasons = {x["name"]: x["reason"] for x in r.json()["rejected"]}
        assert reasons["big.png"].startswith("too large (") and "the cap is 2,000" in reasons["big.png"]
        assert reasons["wide.png"] == "too large (200x120 = 24,000 pixels; the cap is 10,000)"
        assert reasons["b.png"] == reasons["c.png"] == "over the cap of 3 files per upload"  # the 4th and 5th
        assert r.json()["accepted"] == ["a.png"]
        # a body over the upload cap is refused before it is read
        r = c.post(URL, params={"folder": FOLDER}, content=b"x" * 10, headers={"content-length": str(1 << 40)})
        assert r.status_code == 413


def zip_bytes(entries) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data, link in entries:
            info = zipfile.ZipInfo(name)
            if link:
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
            z.writestr(info, data)
    return buf.getvalue()


def test_zip_with_traversal_symlinks_and_folders(client, ws_root):
    before = snapshot(ws_root)
    data = zip_bytes([("set/a.png", png_bytes((32, 32)), False), ("set/a.txt", b"sks shape, zipped", False),
                      ("../../evil.png", png_bytes(), False), ("/abs.png", png_bytes(), False),
                      ("link.png", b"/etc/passwd", True), ("other/a.png", png_bytes(), False),
                      ("set/b.jpg", b"garbage", False)])
    r = post(client, [("pack.zip", data, "application/zip")])
    body = r.json()
    reasons = {x["name"]: x["reason"] for x in body["rejected"]}
    assert body["accepted"] == ["a.png", "a.txt"]
    assert reasons["pack.zip: ../../evil.png"].startswith("would land outside its folder")
    assert reasons["pack.zip: /abs.png"].startswith("would land outside its folder")
    assert reasons["pack.zip: link.png"].startswith("a symbolic link")
    assert reasons["pack.zip: other/a.png"].startswith("the same name twice")
    assert reasons["pack.zip: set/b.jpg"].startswith("not an image")
    after = snapshot(ws_root)
    added = sorted(set(after) - set(before))
    assert added == ["datasets/d1/img/2_sks shape/a.png", "datasets/d1/img/2_sks shape/a.txt"]
    assert not (ws_root.parent / "evil.png").exists() and not (ws_root / "evil.png").exists()
    r = post(client, [("broken.zip", b"PK\x03\x04 not a zip", "application/zip")])
    assert r.json()["rejected"][0]["reason"].startswith("not a readable ZIP file")


def test_upload_bad_targets(client, ws_root):
    before = snapshot(ws_root)
    assert post(client, [("a.png", png_bytes(), "image/png")], folder="img/../..").status_code == 404
    assert post(client, [("a.png", png_bytes(), "image/png")], folder="img/9_none").status_code == 404
    assert client.post("/api/upload/nope", params={"folder": FOLDER}, files=[("files", ("a.png", png_bytes()))]).status_code == 404
    r = client.post(URL, params={"folder": FOLDER}, data={"x": "1"})
    assert r.status_code == 400 and "no files" in r.json()["error"]
    assert snapshot(ws_root) == before
