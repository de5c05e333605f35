"""Tag tools: the table, previewed bulk changes (the preview is what is applied), undo, trigger word, regex,
captions over 75 tokens with the model's tokenizer."""

import pytest
from ui_helpers import BASE, snapshot

from lorakit.ui import tags

T = "/api/datasets/d1/tags"


@pytest.fixture
def captions(ws_root):
    folder = ws_root / "datasets/d1/img/2_sks shape"
    texts = ["red, circle, sks", "blue, circle", "red, square, big red", "sks | circle, red", "green", "circle"]
    for i, t in enumerate(texts):
        (folder / f"{i:04d}.txt").write_text(t + "\n")
    return folder


def read(folder, i):
    return (folder / f"{i:04d}.txt").read_text().strip()


def test_table_counts_captions_per_tag(client, captions):
    rows = {r["tag"]: r["count"] for r in client.get(T).json()["tags"]}
    assert rows["circle"] == 3 and rows["red"] == 3 and rows["big red"] == 1 and rows["sks | circle"] == 1


def test_rename_preview_apply_undo(client, captions, ws_root):
    op = {"op": "rename", "tag": "red", "new": "crimson"}
    before = snapshot(ws_root)
    preview = client.post(f"{T}/preview", json=op).json()
    assert snapshot(ws_root) == before  # a preview writes nothing
    assert preview["count"] == 3 and {c["after"] for c in preview["changes"]} == {
        "crimson, circle, sks", "crimson, square, big red", "sks | circle, crimson"}
    r = client.post(f"{T}/apply", json={**op, "digest": preview["digest"]})
    assert r.json()["changed"] == 3 and read(captions, 0) == "crimson, circle, sks" and read(captions, 2) == "crimson, square, big red"
    undone = client.post(f"{T}/undo", json={"entry": r.json()["batch"]}).json()["undone"]
    assert undone == 3 and read(captions, 0) == "red, circle, sks"


def test_apply_refuses_a_stale_preview(client, captions, ws_root):
    op = {"op": "delete", "tag": "circle"}
    preview = client.post(f"{T}/preview", json=op).json()
    (captions / "0005.txt").write_text("circle, changed meanwhile\n")
    before = snapshot(ws_root)
    r = client.post(f"{T}/apply", json={**op, "digest": preview["digest"]})
    assert r.status_code == 409 and "preview again" in r.json()["error"]
    assert snapshot(ws_root) == before
    assert client.post(f"{T}/apply", json=op).status_code == 409  # no preview at all


def test_add_trigger_and_regex(client, captions):
    add = client.post(f"{T}/preview", json={"op": "add", "tag": "photo", "front": True}).json()
    assert add["count"] == 9 and add["changes"][1]["after"] == "photo, blue, circle"  # reg captions too
    trig = client.post(f"{T}/preview", json={"op": "trigger", "tag": "sks", "keep_tokens": 1, "keep_tokens_separator": "|"}).json()
    after = {c["path"].removeprefix("img/2_sks shape/"): c["after"] for c in trig["changes"]}
    assert after["0000.png"] == "sks, red, circle"  # moved to the front
    assert "0003.png" not in after  # already first in its fixed part ("sks | circle, red")
    assert after["0004.png"] == "sks, green"
    assert "keep_tokens_separator '|'" in trig["note"]
    rx = client.post(f"{T}/preview", json={"op": "regex", "pattern": r"\bred\b", "replacement": "RED"}).json()
    assert {c["after"] for c in rx["changes"]} >= {"RED, square, big RED"}
    bad = client.post(f"{T}/preview", json={"op": "regex", "pattern": "(", "replacement": "x"})
    assert bad.status_code == 400 and "pattern '('" in bad.json()["error"]
    bad = client.post(f"{T}/preview", json={"op": "regex", "pattern": "(a)", "replacement": r"\2"})
    assert bad.status_code == 400
    for op in ({"op": "rename", "tag": "a,b", "new": "c"}, {"op": "add", "tag": ""}, {"op": "explode"}):
        assert client.post(f"{T}/preview", json=op).status_code == 400, op


def test_regex_time_limit():
    fn = tags.regex_fn(r"(a|aa)+$", "x", timeout=0.2)  # exponential backtracking
    with pytest.raises(ValueError, match="took over"):
        fn("a" * 60 + "b")


def test_trigger_with_keep_tokens_separator():
    fn = tags.trigger("sks", keep_sep="|||")
    assert fn("red, circle ||| blue, small") == "sks, red, circle ||| blue, small"
    assert tags.trigger("sks")("red, sks, blue") == "sks, red, blue"
    assert "shuffled" in tags.trigger_note(0, "", True) and "fixed part" in tags.trigger_note(0, "|||", True)
    assert "keep_tokens is 1" in tags.trigger_note(1, "", True) and "keep_tokens: 2" in tags.trigger_note(1, "", True)


def test_long_captions_with_the_models_tokenizer(client, captions, ws_root):
    (ws_root / "configs").mkdir(exist_ok=True)
    (ws_root / "configs/base.yaml").write_text(f"task: diffusion\nmodel: {{path: {BASE}}}\n")
    long = ", ".join(["red circle on a blue background"] * 12)
    (captions / "0001.txt").write_text(long + "\n")
    r = client.get("/api/datasets/d1/long-captions", params={"model": str(BASE)})
    assert r.status_code == 200, r.text
    rows = r.json()["captions"]
    tok = tags.load_tokenizer(BASE)
    expected = len(tok(long, add_special_tokens=False)["input_ids"])
    assert [c["image"] for c in rows] == ["img/2_sks shape/0001.png"] and rows[0]["tokens"] == expected > 75
    r = client.get("/api/datasets/d1/long-captions", params={"model": "/etc"})
    assert r.status_code == 400 and "not a model the workspace knows" in r.json()["error"]
