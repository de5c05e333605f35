"""The dataset API with good and bad input: datasets and folders, pages, thumbnails, captions, trash."""

import os
import sys
import time
from contextlib import contextmanager

from ui_helpers import png_bytes, snapshot, write_images

D = "/api/datasets"
_OPENS: list[str] | None = None  # while recording: every file the process opens (audit event "open")


def _audit(event, args):
    if event == "open" and _OPENS is not None and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENS.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)  # cannot be removed; it costs a comparison per event while nothing records


@contextmanager
def opened():
    """The paths opened meanwhile, by any thread (the app serves files from a worker thread)."""
    global _OPENS
    _OPENS = []
    try:
        yield _OPENS
    finally:
        _OPENS = None


def test_list_and_create(client, ws_root):
    listed = client.get(D).json()["datasets"]
    assert [d["name"] for d in listed] == ["d1"] and listed[0]["images"] == 6 and listed[0]["reg_images"] == 3
    r = client.post(D, json={"name": "new set", "repeats": 5, "tokens": "sks cat"})
    assert r.status_code == 200, r.text
    assert (ws_root / "datasets" / "new set" / "img" / "5_sks cat").is_dir()
    before = snapshot(ws_root)
    for body, status, text in (({"name": "new set"}, 409, "already exists"),
                               ({"name": "../evil"}, 400, "dataset name '../evil'"),
                               ({"name": "x", "repeats": 0}, 400, "repeats=0"),
                               ({"name": "y", "repeats": "many"}, 400, "repeats"),
                               ({"repeats": 3}, 400, "name")):
        r = client.post(D, json=body)
        assert r.status_code == status and text in r.json()["error"], (body, r.text)
    assert snapshot(ws_root) == before and not (ws_root / "datasets" / "x").exists()


def test_folders_add_and_rename(client, ws_root):
    r = client.post(f"{D}/d1/folders", json={"kind": "reg", "repeats": 2, "tokens": "dog"})
    assert r.status_code == 200 and (ws_root / "datasets/d1/reg/2_dog").is_dir()
    r = client.post(f"{D}/d1/folders", json={"folder": "img/2_sks shape", "repeats": 4, "tokens": "sks shape"})
    assert r.status_code == 200 and (ws_root / "datasets/d1/img/4_sks shape/0000.png").is_file()
    assert client.post(f"{D}/d1/folders", json={"kind": "zzz", "repeats": 1}).status_code == 400
    assert client.post(f"{D}/d1/folders", json={"folder": "img/9_none", "repeats": 1}).status_code == 404
    assert client.post(f"{D}/nope/folders", json={"kind": "img", "repeats": 1}).status_code == 404


def test_pages_captions_and_folders(client):
    page = client.get(f"{D}/d1/images", params={"per_page": 4}).json()
    assert page["total"] == 9 and page["pages"] == 3 and len(page["items"]) == 4
    first = page["items"][0]
    assert first["rel"] == "img/2_sks shape/0000.png" and first["has_caption"] and ", on a" in first["caption"]
    last = client.get(f"{D}/d1/images", params={"per_page": 4, "page": 99}).json()
    assert last["page"] == 3 and [i["folder"] for i in last["items"]] == ["reg/1_shape"]
    only = client.get(f"{D}/d1/images", params={"folder": "reg/1_shape"}).json()
    assert only["total"] == 3
    assert client.get(f"{D}/d1/images", params={"folder": "img/../x"}).status_code == 404


def test_thumbnails_are_cached_and_paths_confined(client, ws_root):
    r = client.get(f"{D}/d1/thumb", params={"path": "img/2_sks shape/0001.png"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/webp"
    thumbs = list((ws_root / ".lorakit" / "thumbs").rglob("*.webp"))
    assert len(thumbs) == 1
    mtime = thumbs[0].stat().st_mtime_ns
    assert client.get(f"{D}/d1/thumb", params={"path": "img/2_sks shape/0001.png"}).content == r.content
    assert thumbs[0].stat().st_mtime_ns == mtime  # served from the cache, not made again
    (ws_root / "secret.png").write_bytes((ws_root / "datasets/d1/img/2_sks shape/0001.png").read_bytes())
    for bad in ("../../secret.png", "/etc/passwd", "img/2_sks shape/0001.txt", "img/0001.png"):
        r = client.get(f"{D}/d1/thumb", params={"path": bad})
        assert r.status_code in (400, 404), (bad, r.status_code)
    (ws_root / "datasets/d1/img/2_sks shape/bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    r = client.get(f"{D}/d1/thumb", params={"path": "img/2_sks shape/bad.png"})
    assert r.status_code == 400 and "unreadable or corrupt image" in r.json()["error"]


def test_full_images_are_served_and_nothing_outside_is_read(client, ws_root, tmp_path):
    """``/api/datasets/{name}/image`` (the grid's full-size link): the image with its type; ``..``, absolute
    paths, symlinks out, other files and missing ones are refused, and no file outside the workspace is opened."""
    folder = ws_root / "datasets/d1/img/2_sks shape"
    from PIL import Image

    Image.new("RGB", (40, 24), (10, 200, 10)).save(folder / "photo.jpg")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(png_bytes(colour=(1, 2, 3)))
    os.symlink(outside / "secret.png", folder / "link.png")
    for rel, kind in (("img/2_sks shape/0001.png", "image/png"), ("img/2_sks shape/photo.jpg", "image/jpeg"),
                      ("reg/1_shape/0000.png", "image/png")):
        with opened() as paths:
            r = client.get(f"{D}/d1/image", params={"path": rel})
        assert r.status_code == 200 and r.headers["content-type"] == kind, (rel, r.status_code)
        assert r.content == (ws_root / "datasets/d1" / rel).read_bytes()
        assert str(ws_root / "datasets/d1" / rel) in paths  # the recorder sees the app's reads
    secret = str(outside / "secret.png")
    bad = (("../../../outside/secret.png", 400, "'..' is not allowed"), (secret, 404, "not found"),
           ("img/2_sks shape/link.png", 400, "leads outside the workspace"),
           ("img/2_sks shape/0001.txt", 400, "is not an image of dataset 'd1'"),
           ("img/2_sks shape/none.png", 404, "not found"), ("", 400, "is not an image"),
           ("img/2_sks shape/0001.png\x00", 400, "NUL"))
    with opened() as paths:
        for rel, status, text in bad:
            r = client.get(f"{D}/d1/image", params={"path": rel})
            assert r.status_code == status and text in r.json()["error"], (rel, r.status_code, r.text)
        for name in ("..", "nope", ".lorakit"):
            r = client.get(f"{D}/{name.replace('.', '%2E')}/image", params={"path": "img/2_sks shape/0001.png"})
            assert r.status_code in (400, 404) and r.json()["error"], (name, r.status_code)
    assert not [p for p in paths if p.startswith(str(outside))], paths


def test_caption_save_conflict_and_undo(client, ws_root):
    path = "img/2_sks shape/0002.png"
    txt = ws_root / "datasets/d1" / path.replace(".png", ".txt")
    original = txt.read_text().strip()
    item = client.get(f"{D}/d1/images", params={"per_page": 3}).json()["items"][2]
    tab_a = tab_b = item["version"]
    r = client.put(f"{D}/d1/caption", json={"path": path, "text": "sks shape, red", "base": tab_a})
    assert r.json()["conflict"] is False and txt.read_text() == "sks shape, red\n"
    # a second tab opened before that save: its save still wins, and says so
    r = client.put(f"{D}/d1/caption", json={"path": path, "text": "sks shape, blue", "base": tab_b})
    assert r.json()["conflict"] is True and "written elsewhere" in r.json()["message"]
    assert txt.read_text() == "sks shape, blue\n"
    assert client.post(f"{D}/d1/caption/undo", json={"path": path}).json()["text"] == "sks shape, red"
    assert client.post(f"{D}/d1/caption/undo", json={"path": path}).json()["text"] == original
    r = client.post(f"{D}/d1/caption/undo", json={"path": path})
    assert r.status_code == 404 and "nothing to undo" in r.json()["error"]
    # the empty caption removes the file (an empty one is an error for the trainer); undo brings it back
    client.put(f"{D}/d1/caption", json={"path": path, "text": "  "})
    assert not txt.exists()
    client.post(f"{D}/d1/caption/undo", json={"path": path})
    assert txt.read_text().strip() == original


def test_caption_bad_input_writes_nothing(client, ws_root):
    before = snapshot(ws_root)
    for body, status in (({"path": "../../x.png", "text": "a"}, 400), ({"path": "img/2_sks shape/none.png", "text": "a"}, 404),
                         ({"path": "img/2_sks shape/0000.png", "text": "x" * 20001}, 400), ({"text": "a"}, 400)):
        assert client.put(f"{D}/d1/caption", json=body).status_code == status, body
    assert snapshot(ws_root) == before


def test_trash_and_restore(client, ws_root):
    r = client.post(f"{D}/d1/trash", json={"path": "img/2_sks shape/0003.png"})
    entry = r.json()["trashed"]
    assert not (ws_root / "datasets/d1/img/2_sks shape/0003.png").exists()
    assert (ws_root / "trash" / entry).is_file() and (ws_root / "trash" / entry).with_suffix(".txt").is_file()
    assert client.get("/api/trash").json()["items"][0]["entry"] == entry
    assert client.post("/api/trash/restore", json={"entry": "../datasets/d1"}).status_code == 400
    assert client.post("/api/trash/restore", json={"entry": entry}).json()["restored"] == "d1/img/2_sks shape/0003.png"
    assert (ws_root / "datasets/d1/img/2_sks shape/0003.txt").is_file() and client.get("/api/trash").json()["items"] == []
    assert client.post(f"{D}/d1/trash", json={"path": "img/2_sks shape/nope.png"}).status_code == 404


def test_5000_images_page_fast_with_cached_thumbnails(tmp_path):
    from fastapi.testclient import TestClient

    from lorakit.ui.app import create_app

    root = tmp_path / "big"
    write_images(root / "datasets/big/img/1_x", 5000, size=(16, 16), captions=False)
    with TestClient(create_app(root, start_runner=False), base_url="http://127.0.0.1") as c:
        t0 = time.perf_counter()
        page = c.get("/api/datasets/big/images", params={"page": 50, "per_page": 100}).json()
        first = time.perf_counter() - t0
        assert page["total"] == 5000 and page["pages"] == 50 and page["items"][-1]["name"] == "4999.png"
        for item in page["items"]:
            assert c.get("/api/datasets/big/thumb", params={"path": item["rel"]}).status_code == 200
        assert len(list((root / ".lorakit/thumbs").rglob("*.webp"))) == 100
        t0 = time.perf_counter()
        html = c.get("/datasets/big", params={"page": 50, "per_page": 100})
        render = time.perf_counter() - t0
    assert html.status_code == 200 and html.text.count('class="thumb"') == 100 and "4999.png" in html.text
    assert first < 2.0 and render < 2.0, (first, render)  # generous on a shared CI box; docs/ui.md has the timing
