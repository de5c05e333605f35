"""The bucket preview shows the numbers ``lorakit validate`` prints, and the crop the trainer takes."""

import yaml
from typer.testing import CliRunner
from ui_helpers import BASE, write_images

from lorakit.cli import app as cli
from lorakit.cli import commands  # noqa: F401  (registers the commands)

DATA = {"resolution": 32, "enable_bucket": True, "min_bucket_reso": 16, "max_bucket_reso": 64, "bucket_reso_steps": 8}


def config(ws_root, **train):
    cfg = {"task": "diffusion", "model": {"path": str(BASE), "device": "cpu"},
           "data": {"train_data_dir": "datasets/d1/img", "reg_data_dir": "datasets/d1/reg", **DATA},
           "train": {"output_dir": "runs/x", "batch_size": 2, "epochs": 3, **train}}
    (ws_root / "configs").mkdir(exist_ok=True)
    (ws_root / "configs/b.yaml").write_text(yaml.safe_dump(cfg))
    return cfg


def test_same_numbers_as_validate(client, ws_root, monkeypatch):
    write_images(ws_root / "datasets/d1/img/2_sks shape", 2, size=(24, 40), seed=5)  # overwrite two: other buckets
    config(ws_root)
    r = client.post("/api/datasets/d1/buckets", json={"config": "b"})
    assert r.status_code == 200, r.text
    preview = r.json()
    assert preview["problems"] == [] and preview["bucket_step"] == 8 and preview["family"] == "sd1"
    monkeypatch.chdir(ws_root)
    out = CliRunner().invoke(cli, ["validate", "configs/b.yaml"])
    assert out.exit_code == 0, out.output
    printed = " ".join(out.output.split())  # rich wraps long lines at the terminal's width
    lines = [" ".join(line.split()) for line in preview["report"].splitlines() if line.strip()]
    # every report line, in order, as validate prints it (validate also prints the model line first)
    at = [printed.index(line) for line in lines]
    # by hand: 6 images x 2 repeats + 3 reg images balanced to 12 = 24 samples: 24x40 holds 4 (2 batches),
    # 40x24 holds 20 (10 batches)
    assert at == sorted(at) and "optimizer steps: 12 per epoch x 3 epochs = 36" in preview["report"]
    rows = {b["resolution"]: b for b in preview["buckets"]}
    assert sum(b["images"] for b in rows.values()) == 9 and rows["24x40"]["images"] == 2


def test_crops_and_small_bucket_warning(client, ws_root):
    write_images(ws_root / "datasets/d1/img/2_sks shape", 2, size=(24, 40), seed=5)
    config(ws_root, batch_size=4)
    preview = client.post("/api/datasets/d1/buckets", json={"config": "b", "data": {"resolution": 32}}).json()
    for im in preview["images"]:
        (w, h), (bw, bh) = im["size"], im["bucket"]
        scale = max(bw / w, bh / h)  # cover the bucket, crop the overflow in the centre
        cw, ch = bw / scale / w, bh / scale / h
        expect = [(1 - cw) / 2, (1 - ch) / 2, cw, ch]
        assert all(abs(a - b) < 0.05 for a, b in zip(im["crop"], expect, strict=True)), (im, expect)
    small = [b for b in preview["buckets"] if b["images"] < 4]
    assert small and all(any(b["resolution"] in w for w in preview["warnings"]) for b in small)


def test_settings_override_and_bad_values(client, ws_root):
    r = client.post("/api/datasets/d1/buckets", json={"data": {"resolution": 32, "enable_bucket": True, "min_bucket_reso": 16,
                                                                  "bucket_reso_steps": 8}})
    # no config, so no model: SD1's bucket step (64) applies, and the 8 px step is reported
    assert r.status_code == 200 and r.json()["buckets"] == [] and "not a multiple of 64" in r.json()["problems"][0]
    config(ws_root)
    r = client.post("/api/datasets/d1/buckets", json={"config": "b", "data": {"resolution": 40}})
    assert r.json()["data"]["resolution"] == 40 and r.json()["buckets"]
    r = client.post("/api/datasets/d1/buckets", json={"data": {"resolution": "huge"}})
    assert r.status_code == 200 and r.json()["problems"][0].startswith("data.resolution='huge'")
    r = client.post("/api/datasets/d1/buckets", json={"data": {"colour": 1}})
    assert r.status_code == 400 and "unknown data keys" in r.json()["error"]
    assert client.post("/api/datasets/d1/buckets", json={"config": "none"}).status_code == 404
    page = client.get("/datasets/d1/buckets", params={"config": "b", "resolution": "32", "min_bucket_reso": "16", "bucket_reso_steps": "8",
                                                      "submitted": "1", "enable_bucket": "on"})
    assert page.status_code == 200 and 'class="crop"' in page.text
