"""Compare and generate jobs are ``lorakit sd grid`` / ``lorakit sd generate`` command lines built from the run."""

import json
import os

import yaml
from ui_helpers import BASE

from lorakit.sd.xyz import Axis


def run_dir(ws_root, files=("ring-000002", "ring-000004", "ring")):
    run = ws_root / "runs" / "r"
    run.mkdir(parents=True)
    for i, name in enumerate(files):
        (run / f"{name}.safetensors").write_bytes(b"x")
        os.utime(run / f"{name}.safetensors", (1000 + i, 1000 + i))
    (ws_root / "configs").mkdir(exist_ok=True)
    (ws_root / "configs/p.txt").write_text("a red sks ring --w 32 --h 40 --s 12 --l 3 --d 7\n")
    (run / "launch.yaml").write_text(yaml.safe_dump({"task": "diffusion", "model": {"path": str(BASE)},
                                                     "train": {"output_name": "ring"}, "sample": {"prompts": "configs/p.txt"}}))
    return run


def test_grid_job_axes(client, ws_root):
    run = run_dir(ws_root)
    info = client.get("/api/runs/r/compare").json()
    assert info["files"] == ["ring-000002", "ring-000004", "ring"]
    assert info["default"]["prompt"] == "a red sks ring <lora:ring:1>" and info["default"]["width"] == 32
    body = {"strengths": [0, 0.5, 1], "prompt": info["default"]["prompt"], "z_type": "Seed", "z_values": ["1", "2"],
            "width": 32, "height": 40, "steps": 12, "cfg": 3}
    r = client.post("/api/runs/r/grid", json=body)
    assert r.status_code == 200, r.text
    job = client.get(f"/api/jobs/{r.json()['job']}").json()
    argv = job["argv"]
    assert argv[1:5] == ["-m", "lorakit", "sd", "grid"] and argv[5] == str(BASE) and argv[6] == body["prompt"]
    x, y, z = (Axis.parse(argv[argv.index(flag) + 1]) for flag in ("--x", "--y", "--z"))
    assert (x.type, x.values) == ("LoRA strength", [0.0, 0.5, 1.0])
    assert (y.type, y.values) == ("LoRA file", ["ring-000002", "ring-000004", "ring"])
    assert (z.type, z.values) == ("Seed", [1, 2])
    assert argv[argv.index("--lora-dir") + 1] == "runs/r" and argv[argv.index("-o") + 1] == "runs/r/compare/grid-1.png"
    assert argv[argv.index("--size") + 1] == "32x40"
    meta = json.loads((run / "compare/grid-1.json").read_text())
    assert meta["y"] == y.values and meta["x"] == ["strength 0", "strength 0.5", "strength 1"]
    cells = run / "compare/grid-1-cells"
    cells.mkdir()
    (cells / "00003-cell2-1-1.png").write_bytes(b"png")
    grid = client.get("/api/runs/r/compare").json()["grids"][0]
    assert grid["cells"] == {"2-1-1": "runs/r/compare/grid-1-cells/00003-cell2-1-1.png"} and grid["png"] is None


def test_grid_job_bad_input(client, ws_root):
    run_dir(ws_root)
    for body, text in (({"files": ["nope"]}, "expected saved files"), ({"strengths": []}, "1 to 12 strengths"),
                       ({"z_type": "Steps", "z_values": ["1"]}, "z_type")):
        r = client.post("/api/runs/r/grid", json=body)
        assert r.status_code == 400 and text in r.json()["error"], body
    assert client.post("/api/runs/none/grid", json={}).status_code == 404
    assert client.get("/api/jobs").json()["jobs"] == []


def test_generate_job_and_lora_names(client, ws_root):
    run_dir(ws_root)
    (ws_root / "loras").mkdir(exist_ok=True)
    (ws_root / "loras/ring.safetensors").write_bytes(b"x")
    (ws_root / "runs/r/checkpoint-000002").mkdir()
    (ws_root / "runs/r/checkpoint-000002/trainable.safetensors").write_bytes(b"x")
    names = {x["name"]: x for x in client.get("/api/loras").json()["loras"]}
    assert set(names) == {"ring", "ring-000002", "ring-000004"} and names["ring"]["ambiguous"]
    (ws_root / "configs/m.yaml").write_text(f"task: diffusion\nmodel: {{path: {BASE}}}\n")
    r = client.post("/api/generate", json={"model": str(BASE), "prompt": "a ring <lora:ring-000004:0.8>", "count": 2,
                                           "width": 32, "height": 32})
    assert r.status_code == 200, r.text
    argv = client.get(f"/api/jobs/{r.json()['job']}").json()["argv"]
    assert argv[3:5] == ["sd", "generate"] and argv[argv.index("--count") + 1] == "2"
    assert argv[argv.index("--lora-dir") + 1] == "." and argv[argv.index("-o") + 1] == r.json()["outputs"]
    for body in ({"model": "/etc", "prompt": "x"}, {"model": str(BASE), "prompt": " "}, {"model": str(BASE), "prompt": "x", "count": 99}):
        assert client.post("/api/generate", json=body).status_code == 400, body
