"""Faults with a real training on the shipped sdworld base: a restart of the UI during a training (the job is
still running and still shown), ``save now`` and ``sample now`` while it runs (the sample appears in
``sample/`` and the open job page's event stream reports it), SIGKILL of the training child (failed, with the
log's last lines), and the resume it then offers (queued to continue from the newest complete checkpoint;
running a resume and a graceful stop is the browser test's part, and ``test_jobs`` checks the command line).

Hard limits: every wait fails the test after ``TIMEOUT`` seconds with the job's log, and the children are
killed at the end whatever happened."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
import yaml
from fastapi.testclient import TestClient
from PIL import Image
from ui_helpers import BASE, HOST

from lorakit.train.checkpoint import list_checkpoints
from lorakit.train.control import read_status
from lorakit.ui import processes
from lorakit.ui.app import create_app
from lorakit.ui.jobs import log_tail
from lorakit.ui.runs import SAMPLE

TIMEOUT = 240.0

CONFIG = {"task": "diffusion", "model": {"path": str(BASE), "device": "cpu"},
          "data": {"train_data_dir": "datasets/d1/img", "resolution": 32, "min_bucket_reso": 16, "max_bucket_reso": 64,
                   "bucket_reso_steps": 8, "cache_text_encoder_outputs": True},
          "network": {"module": "lora", "dim": 4, "alpha": 4, "train_unet_only": True},
          "train": {"output_dir": "runs/x", "output_name": "t", "max_steps": 400, "batch_size": 2, "lr": 5e-4,
                    "save_every_n_steps": 3, "save_every_n_epochs": None, "keep_last": 2, "plot": False},
          "sample": {"prompts": "configs/p.txt", "every_n_epochs": None}}  # sampled only when asked


def wait(what, fn, job_log=None, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; log:\n"
                                 + (log_tail(job_log, 40) if job_log else ""))
        time.sleep(0.2)


@pytest.fixture
def launched(ws_root, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the jobs' own: no thread pools competing on the shared machine
    (ws_root / "configs").mkdir(exist_ok=True)
    (ws_root / "configs/x.yaml").write_text(yaml.safe_dump(CONFIG, sort_keys=False))
    (ws_root / "configs/p.txt").write_text("a red sks shape on a blue background --w 32 --h 24 --s 3 --l 3 --d 7\n")
    pids = []
    yield pids
    kill(pids)  # whatever happened: no training left behind


def kill(pids) -> None:
    for pid, ident in pids:
        processes.signal_group(pid, ident, signal.SIGKILL)
        processes.wait_gone(pid, ident, 10)


def test_restart_save_sample_and_sigkill_during_a_training(ws_root, launched):
    run = ws_root / "runs/r"
    with TestClient(create_app(ws_root), base_url=HOST) as first:
        job = first.post("/api/configs/x/launch", json={"run": "r"}).json()["job"]
        j = wait("the job to start", lambda: (x := first.get(f"/api/jobs/{job}").json())["pid"] and x)
        launched.append((j["pid"], j["ident"]))
        log = j["log"]
        wait("step 1", lambda: (read_status(run) or {}).get("step", 0) >= 1, log)
    # the first UI is gone (its runner stopped); the training runs on in its own session. The second UI runs no
    # queue of its own here, so the resume at the end stays queued
    with TestClient(create_app(ws_root, start_runner=False), base_url=HOST) as second:
        try:
            sample_save_and_sigkill(second, job, run, log, launched)
        finally:  # an open event stream ends with its job only: end the job before the client waits for it
            kill(launched)


def sample_save_and_sigkill(second, job, run, log, launched):
    """The second UI: the job is running, save now, sample now (the stream reports it), SIGKILL, resume."""
    j = second.get(f"/api/jobs/{job}").json()
    assert j["state"] == "running" and j["pid"] == launched[0][0], j
    step = read_status(run)["step"]
    wait("the training to go on after the restart", lambda: read_status(run)["step"] > step, log)
    assert second.post(f"/api/jobs/{job}/save").status_code == 200
    asked = read_status(run)["step"]
    wait("the checkpoint asked for", lambda: any(int(c.name.split("-")[1]) >= asked for c in list_checkpoints(run)), log)
    page = second.get(f"/jobs/{job}")
    assert page.status_code == 200 and "Stop (checkpoint)" in page.text and 'data-act="sample"' in page.text
    # sample now, with the job page's event stream open (read until the job ends)
    events = []
    reader = threading.Thread(target=lambda: [events.append(e) for e in stream(second, job)], daemon=True)
    reader.start()
    wait("the stream's first events", lambda: any(k == "samples" for k, _ in events), log)
    assert not list((run / "sample").glob("*.png")), "nothing samples but the request"
    asked = read_status(run)["step"]
    r = second.post(f"/api/jobs/{job}/sample")
    assert r.status_code == 200 and r.json()["state"] == "running", r.text
    drawn = wait("the sample asked for", lambda: [p for p in (run / "sample").glob("*.png") if SAMPLE.match(p.name)],
                 log)
    wait("the stream to report it", lambda: any(k == "samples" and d["labels"] for k, d in events), log)
    os.kill(j["pid"], signal.SIGKILL)
    reader.join(TIMEOUT)
    assert not reader.is_alive(), "the event stream did not end with the job"
    label = SAMPLE.match(drawn[0].name)["label"]
    step = int(label[1:]) * read_status(run)["steps_per_epoch"] if label.startswith("e") else int(label)
    assert len(drawn) == 1 and step >= asked and Image.open(drawn[0]).size == (32, 24), (drawn, asked)
    samples = [d for k, d in events if k == "samples"]
    assert samples[0]["labels"] == [] and samples[-1] == {"labels": [label], "prompts": 1,
                                                          "cells": {label: {"0": drawn[0].name}}}
    assert events[-1] == ("end", {"state": "failed"})
    failed = wait("the job to be failed", lambda: (x := second.get(f"/api/jobs/{job}").json())["state"] == "failed" and x)
    assert failed["error"].startswith("the process is gone; last lines of the log:")  # not our child: no code
    assert failed["error"].endswith(log_tail(log, 15)) and "optimizer steps" in failed["error"]
    assert list_checkpoints(run), "the save asked for left a complete checkpoint to resume from"
    resumed = second.post(f"/api/jobs/{job}/resume").json()
    assert resumed["state"] == "queued" and resumed["resume"] == 1 and resumed["error"] is None
    assert (run / "launch.yaml").is_file() and yaml.safe_load((run / "launch.yaml").read_text())["train"]["output_dir"] == "runs/r"


def stream(client, job):
    """``(event, data)`` of the job page's server-sent events until the stream ends."""
    name = None
    with client.stream("GET", f"/api/jobs/{job}/events") as r:
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                yield name, json.loads(line[6:])
