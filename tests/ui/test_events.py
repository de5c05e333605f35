"""The live job page's event stream and page, for a diffusion run and a text run (loss and eval metrics), from
the files a run leaves; the stream ends once the job is over."""

import json
import time

from lorakit.ui.runner import lorakit_argv


def events(client, job):
    out, name = [], None
    with client.stream("GET", f"/api/jobs/{job}/events") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                out.append((name, json.loads(line[6:])))
    return out


def fake_run(app, ws_root, name, task, rows, samples=()):
    s = app.app.state.ui  # the FastAPI app behind the guards
    run = ws_root / "runs" / name
    (run / "sample").mkdir(parents=True)
    (run / "launch.yaml").write_text(f"task: {task}\n" if task == "diffusion" else "model: {path: m}\n")
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 9, "lo')  # a cut line
    now = time.time()
    (run / "status.json").write_text(json.dumps({"pid": 1, "state": "trained", "step": 4, "total_steps": 4,
                                                 "start_step": 0, "started": now - 8, "updated": now}))
    (run / "train.log").write_text("line 1\nlora: step 4/4 loss 0.1\n")
    for f in samples:
        (run / "sample" / f).write_bytes(b"png")
    (run / "t.safetensors").write_bytes(b"x")
    job = s.store.add("train", name, lorakit_argv("train", f"runs/{name}/launch.yaml"), str(run / "train.log"),
                      run_dir=str(run), meta={"task": task})
    s.store.update(job, state="completed", started=now - 10, ended=now)
    return job


def test_diffusion_run_events(app, client, ws_root):
    rows = [{"step": i, "loss": 1.0 / i, "lr": 1e-4, "samples_per_s": 2.0} for i in range(1, 5)]
    job = fake_run(app, ws_root, "sd", "diffusion", rows, ["t_e000001_00_7.png", "t_e000001_01_8.png", "t_000002_00_7.png"])
    got = events(client, job)
    kinds = [k for k, _ in got]
    assert kinds[0] == "job" and kinds[-1] == "end" and {"metrics", "progress", "samples", "files", "log"} <= set(kinds)
    data = dict(got)
    assert data["metrics"]["rows"] == rows and data["metrics"]["reset"]  # the cut last line is not sent
    assert data["progress"]["step"] == 4 and abs(data["progress"]["steps_per_s"] - 0.5) < 0.01
    assert data["samples"]["prompts"] == 2 and set(data["samples"]["labels"]) == {"e000001", "000002"}
    assert data["files"][0]["name"] == "t.safetensors" and data["log"]["tail"].endswith("loss 0.1")
    assert data["end"] == {"state": "completed"}
    page = client.get(f"/jobs/{job}")
    assert page.status_code == 200 and 'id="samples"' in page.text and "Compare epochs" in page.text


def test_text_run_shows_loss_and_eval_metrics(app, client, ws_root):
    rows = [{"step": 1, "loss": 2.0, "lr": 2e-4, "samples_per_s": 9.0}, {"step": 2, "eval_loss": 1.5, "eval_accuracy": 0.5}]
    job = fake_run(app, ws_root, "txt", "text", rows)
    data = dict(events(client, job))
    assert data["metrics"]["rows"] == rows
    page = client.get(f"/jobs/{job}")
    assert page.status_code == 200 and 'id="samples"' not in page.text and 'id="loss-chart"' in page.text
    assert client.get("/api/jobs/999/events").status_code == 404
