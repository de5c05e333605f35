"""Configs: create from presets, save (form and YAML) with conflict checks, validate, launch refusals."""

from ui_helpers import BASE, snapshot

C = "/api/configs"


def test_create_from_preset_with_dataset(client, ws_root):
    r = client.post(C, json={"name": "mine", "preset": "sdworld", "form": {"data.train_data_dir": "datasets/d1/img"}})
    assert r.status_code == 200, r.text
    got = client.get(f"{C}/mine").json()
    assert got["kind"] == "form" and got["data"]["data"]["train_data_dir"] == "datasets/d1/img"
    assert got["data"]["model"]["path"] == str(BASE)
    listed = client.get(C).json()
    assert listed["configs"] == ["mine"] and "sd15-character" in listed["presets"] and str(BASE) in listed["models"]
    before = snapshot(ws_root)
    for body, status in (({"name": "mine", "preset": "sdworld"}, 409), ({"name": "x", "preset": "nope"}, 400),
                         ({"name": "../x", "preset": "sdworld"}, 400),
                         ({"name": "y", "preset": "sdworld", "form": {"train.betas": "[oops"}}, 400)):
        assert client.post(C, json=body).status_code == status, body
    assert snapshot(ws_root) == before


def test_saves_refuse_a_stale_page_and_bad_yaml(client, ws_root):
    client.post(C, json={"name": "c", "preset": "sdworld"})
    v1 = client.get(f"{C}/c").json()["version"]
    r = client.put(f"{C}/c", json={"form": {"train.lr": "0.001"}, "base": v1})
    assert r.status_code == 200 and "lr: 0.001" in r.json()["text"]
    path = ws_root / "configs/c.yaml"
    before = path.read_text()
    stale = client.put(f"{C}/c", json={"text": "task: diffusion\n", "base": v1})
    assert stale.status_code == 409 and "changed elsewhere" in stale.json()["error"] and path.read_text() == before
    for body in ({"text": "[1, 2]"}, {"text": "a: [b"}, {"form": {}, "text": "x: 1"}, {}):
        assert client.put(f"{C}/c", json=body).status_code == 400, body
    assert path.read_text() == before
    assert client.get(f"{C}/none").status_code == 404


def test_validate_shows_problems_by_field_without_saving(client, ws_root):
    (ws_root / "configs").mkdir(exist_ok=True)
    (ws_root / "configs/sdworld-rings-prompts.txt").write_text("a red sks ring --w 32 --h 32\n")
    client.post(C, json={"name": "c", "preset": "sdworld", "form": {"data.train_data_dir": "datasets/d1/img",
                                                                    "data.reg_data_dir": ""}})
    before = (ws_root / "configs/c.yaml").read_text()
    r = client.post(f"{C}/c/validate", json={"form": {"train.lr": "-1", "network.dim": "0"}}).json()
    assert set(r["fields"]) >= {"train.lr", "network.dim"} and r["task"] == "diffusion"
    assert (ws_root / "configs/c.yaml").read_text() == before
    ok = client.post(f"{C}/c/validate", json={}).json()
    assert ok["problems"] == [] and "optimizer steps:" in ok["report"]


def test_launch_refusals_write_nothing(client, ws_root):
    client.post(C, json={"name": "bad", "preset": "sd15-character"})  # models/sd15 is not there
    before = snapshot(ws_root)
    r = client.post(f"{C}/bad/launch", json={"run": "r1"})
    assert r.status_code == 400 and "problem(s); fix them before training" in r.json()["error"] and "model.path" in r.json()["error"]
    assert snapshot(ws_root) == before and not (ws_root / "runs/r1").exists()
    (ws_root / "runs/taken").mkdir(parents=True)
    (ws_root / "runs/taken/x").write_text("x")
    assert client.post(f"{C}/bad/launch", json={"run": "taken"}).status_code == 409
    assert client.post(f"{C}/bad/launch", json={"run": "../up"}).status_code == 400
    assert client.get("/api/jobs").json()["jobs"] == []


def test_sample_prompts_editor(client, ws_root):
    client.post(C, json={"name": "c", "preset": "sdworld", "form": {"sample.prompts": "configs/c-prompts.txt"}})
    r = client.put(f"{C}/c/prompts", json={"text": "a red sks ring --w 32 --h 32 --s 4\n# note\n"})
    assert r.status_code == 200 and (ws_root / "configs/c-prompts.txt").read_text().startswith("a red sks ring")
    before = snapshot(ws_root)
    r = client.put(f"{C}/c/prompts", json={"text": "ring --x 3"})
    assert r.status_code == 400 and "line 1: unknown option '--x 3'" in r.json()["error"]
    client.put(f"{C}/c", json={"form": {"sample.prompts": "../outside.txt"}})
    assert client.put(f"{C}/c/prompts", json={"text": "a"}).status_code == 400
    assert snapshot(ws_root) == {**before, "configs/c.yaml": (ws_root / "configs/c.yaml").read_bytes()}
