"""lorakit.train.control: stop / save / sample requests read between steps, status.json, ``lorakit control``."""

import json
import os
import time

import pytest
import torch
from safetensors.torch import load_file
from test_run import llama_cfg
from typer.testing import CliRunner

from lorakit.cli import app, commands  # noqa: F401  (registers the commands)
from lorakit.train import Callback, run
from lorakit.train.checkpoint import list_checkpoints
from lorakit.train.control import FOLDER, pending, read_status, request


class RequestAt(Callback):
    """Drops control requests into the run directory at given steps (as another process would)."""

    def __init__(self, run_dir, plan):
        self.run_dir, self.plan = run_dir, plan

    def on_step_end(self, state):
        for command in self.plan.get(state.step, []):
            request(self.run_dir, command)


def test_request_refuses_unknown_commands(tmp_path):
    with pytest.raises(ValueError, match="'pause': expected one of stop, save, sample"):
        request(tmp_path, "pause")
    assert not (tmp_path / FOLDER).exists()
    request(tmp_path, "save")
    request(tmp_path, "stop")
    assert pending(tmp_path) == ["save", "stop"]


def test_stop_checkpoints_exports_nothing_and_resume_equals_an_uninterrupted_run(tmp_path, llama_path):
    full = run(llama_cfg(tmp_path / "a", llama_path, max_steps=6, save_every=100), quiet=True)
    cfg = llama_cfg(tmp_path / "b", llama_path, max_steps=6, save_every=100)
    run_dir = tmp_path / "b" / "run"
    stopped = run(cfg, callbacks=[RequestAt(run_dir, {3: ["stop"]})], quiet=True)
    assert stopped.summary == {"stopped": True, "steps": 3, "total_steps": 6}
    assert [p.name for p in list_checkpoints(run_dir)] == ["checkpoint-000003"]
    assert not (run_dir / "summary.json").exists() and not (run_dir / "adapter").exists()
    status = read_status(run_dir)
    assert status["state"] == "stopped" and status["step"] == 3 and status["pid"] == os.getpid()
    assert pending(run_dir) == []  # the request was consumed
    done = run(cfg, resume=True, quiet=True)
    assert done.summary["steps"] == 6 and read_status(run_dir)["state"] == "trained"
    a = load_file(tmp_path / "a" / "run" / "adapter" / "adapter_model.safetensors")
    b = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert full.summary["steps"] == 6


def test_save_request_checkpoints_without_stopping_and_unhandled_sample_says_so(tmp_path, llama_path, capfd):
    cfg = llama_cfg(tmp_path, llama_path, max_steps=5, save_every=4, keep_last=5)
    run_dir = tmp_path / "run"
    result = run(cfg, callbacks=[RequestAt(run_dir, {2: ["save", "save"], 4: ["save"], 3: ["sample"]})], quiet=True)
    assert result.summary["steps"] == 5
    # step 2 on request (asked twice, saved once), step 4 due anyway (the request reuses it)
    assert [p.name for p in list_checkpoints(run_dir)] == ["checkpoint-000002", "checkpoint-000004"]
    assert "'sample' requested but nothing in this run handles 'sample'" in capfd.readouterr().err


def test_requests_older_than_the_training_process_are_dropped(tmp_path, llama_path):
    cfg = llama_cfg(tmp_path, llama_path, max_steps=3)
    folder = tmp_path / "run" / FOLDER
    folder.mkdir(parents=True)
    (folder / f"{int((time.time() - 3600 * 24 * 365) * 1e9)}-stop").write_text("stop\n")  # from an ended run
    result = run(cfg, quiet=True)
    assert result.summary["steps"] == 3 and pending(tmp_path / "run") == []


def test_cli_control_needs_a_running_training(tmp_path):
    runner = CliRunner()
    out = runner.invoke(app, ["control", str(tmp_path), "stop"])
    assert out.exit_code == 1 and "no training is running in" in out.output
    assert not (tmp_path / FOLDER).exists()
    bad = runner.invoke(app, ["control", str(tmp_path), "pause"])
    assert bad.exit_code == 2 and "expected one of stop, save, sample" in bad.output
    # a status naming a live process that started before it (this test process) is a running training
    (tmp_path / "status.json").write_text(json.dumps({"pid": os.getpid(), "state": "running", "started": time.time()}))
    ok = runner.invoke(app, ["control", str(tmp_path), "sample"])
    assert ok.exit_code == 0, ok.output
    assert pending(tmp_path) == ["sample"]
    # the same pid number with a later start time is another process (the pid was reused)
    (tmp_path / "status.json").write_text(json.dumps({"pid": os.getpid(), "state": "running", "started": 1.0}))
    assert runner.invoke(app, ["control", str(tmp_path), "stop"]).exit_code == 1
