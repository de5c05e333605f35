"""The job table and queue without real trainings: stand-in children (small Python scripts) that sleep, get
killed, or leave the files a training leaves. Each test's children are killed at its end."""

import os
import signal
import sys
import time
from pathlib import Path

import pytest
from ui_helpers import SLEEP, kill_jobs

from lorakit.ui import processes
from lorakit.ui.jobs import JobStore
from lorakit.ui.runner import Runner
from lorakit.ui.workspace import Workspace


def leave(files: dict, code: int = 0) -> list[str]:
    """A child that writes ``files`` (relative to its cwd, the workspace) and exits with ``code``."""
    script = (f"import json, pathlib, sys, time; files = {files!r}\n"
              "for name, data in files.items():\n"
              "    p = pathlib.Path(name); p.parent.mkdir(parents=True, exist_ok=True)\n"
              "    p.write_text(json.dumps({**data, 'updated': time.time()}) if isinstance(data, dict) else data)\n"
              f"print('leaving', flush=True); sys.exit({code})")
    return [sys.executable, "-c", script]


@pytest.fixture
def setup(tmp_path):
    ws = Workspace(tmp_path / "ws")
    store = JobStore(ws.state / "jobs.sqlite3")
    runner = Runner(ws, store)
    yield ws, store, runner
    kill_jobs(store)  # never leave a child behind


def wait_for(fn, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not fn():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def add(store, ws, kind, argv, name="j", run=None):
    log = str(ws.state / "jobs" / f"{name}.log")
    return store.add(kind, name, argv, log, run_dir=str(ws.runs / run) if run else None)


def test_queue_one_training_at_a_time_tools_beside(setup):
    ws, store, runner = setup
    a, b, c = (add(store, ws, "train", SLEEP, n, run=n) for n in "abc")
    tool = add(store, ws, "grid", SLEEP, "tool")
    store.move(c, "top")
    store.move(b, "up")
    assert [j["id"] for j in store.queued("train")] == [c, b, a]
    runner.cancel(a)
    runner.tick()
    assert {j["id"] for j in store.active()} == {c, tool}  # one training, and the tool job beside it
    assert store.get(b)["state"] == "queued" and store.get(a)["state"] == "cancelled"
    with pytest.raises(ValueError, match="only queued jobs can be reordered"):
        store.move(c, "up")
    with pytest.raises(ValueError, match="only queued jobs are cancelled"):
        runner.cancel(c)
    runner.run_now(b)  # beside the running one
    assert {j["id"] for j in store.active()} == {b, c, tool}
    child = store.children[c]
    assert os.getsid(child.pid) == child.pid  # its own session: a Ctrl-C of the UI does not reach it


def test_sigkill_is_failed_with_the_log_tail(setup):
    ws, store, runner = setup
    job = add(store, ws, "train", SLEEP, "k", run="k")
    runner.tick()
    j = store.get(job)
    wait_for(lambda: "child up" in Path(j["log"]).read_text())
    os.kill(j["pid"], signal.SIGKILL)
    wait_for(lambda: store.get(job)["state"] != "running")
    j = store.get(job)
    assert j["state"] == "failed" and j["returncode"] == -9
    assert j["error"].startswith("killed by signal 9; last lines of the log:") and "child up" in j["error"]


def test_a_restarted_ui_sees_the_running_job_then_settles_it_from_files(setup):
    ws, store, runner = setup
    run_dir = ws.runs / "r"
    stopped = {"r/status.json": {"pid": 0, "state": "stopped", "step": 3}}
    argv = [sys.executable, "-c", "import time, subprocess, sys; time.sleep(1.5); "
            f"subprocess.run({leave({f'runs/{k}': v for k, v in stopped.items()})!r})"]
    job = add(store, ws, "train", argv, "r", run="r")
    runner.tick()
    pid = store.get(job)["pid"]
    restarted = JobStore(ws.state / "jobs.sqlite3")  # a new UI process: it did not start the child
    assert restarted.get(job)["state"] == "running" and restarted.children == {}
    wait_for(lambda: not processes.alive(pid, restarted.get(job)["ident"]) or restarted.get(job)["state"] != "running")
    wait_for(lambda: restarted.get(job)["state"] != "running")
    j = restarted.get(job)
    assert j["state"] == "stopped" and j["returncode"] is None and (run_dir / "status.json").is_file()
    store.children.pop(job).wait(timeout=10)


@pytest.mark.parametrize("files,code,state", [
    ({"runs/r/summary.json": {"steps": 4}}, 0, "completed"),
    ({"runs/r/status.json": {"state": "stopped"}}, 0, "stopped"),
    ({}, 0, "failed"),
    ({"runs/r/summary.json": {"steps": 4}}, 1, "failed"),
])
def test_settle_from_what_the_training_left(setup, files, code, state):
    ws, store, runner = setup
    job = add(store, ws, "train", leave(files, code), "r", run="r")
    runner.tick()
    wait_for(lambda: store.get(job)["state"] != "running")
    j = store.get(job)
    assert j["state"] == state and j["returncode"] == code
    if state == "failed":
        assert "leaving" in j["error"]


def test_a_reused_pid_is_not_the_job(setup):
    ws, store, runner = setup
    job = add(store, ws, "generate", SLEEP, "g")
    runner.tick()
    j = store.get(job)
    store.children.pop(job)  # as after a restart
    store.update(job, ident=str(int(j["ident"]) + 1))  # same pid number, another start time: another process
    assert store.get(job)["state"] == "failed" and "the process is gone" in store.get(job)["error"]
    processes.signal_group(j["pid"], j["ident"], signal.SIGKILL)
    assert processes.wait_gone(j["pid"], j["ident"], 10)


def test_actions_refuse_the_wrong_state(setup):
    ws, store, runner = setup
    job = add(store, ws, "train", SLEEP, "t", run="t")
    for action, text in ((lambda: runner.control(job, "stop"), "needs a running job"),
                         (lambda: runner.kill(job), "nothing to kill"),
                         (lambda: runner.resume(job), "resume is for stopped or failed")):
        with pytest.raises(ValueError, match=text):
            action()
    runner.tick()
    runner.kill(job)
    wait_for(lambda: store.get(job)["state"] != "running")
    with pytest.raises(ValueError, match="no complete checkpoint"):
        runner.resume(job)
    with pytest.raises(LookupError, match="no such job"):
        store.get(999)


def test_identity_and_spawn(tmp_path):
    assert processes.identity(os.getpid()) and processes.identity(10**7) is None
    with pytest.raises(TypeError, match="list of strings"):
        processes.spawn("echo hi", tmp_path, tmp_path / "log")
    child = processes.spawn([sys.executable, "-c", "print('x')"], tmp_path, tmp_path / "log")
    ident = processes.identity(child.pid)
    wait_for(lambda: processes.identity(child.pid) is None)  # a zombie until reaped: not alive
    assert not processes.alive(child.pid, ident)
    assert child.wait(timeout=10) == 0 and (tmp_path / "log").read_text() == "x\n"


def test_a_resumed_training_continues_with_resume(setup):
    ws, store, runner = setup
    argv = [sys.executable, "-c", "import sys; print(sys.argv[1:], flush=True)", "train", "runs/t/launch.yaml"]
    job = add(store, ws, "train", argv, "t", run="t")
    (ws.runs / "t" / "checkpoint-000002").mkdir(parents=True)
    (ws.runs / "t" / "checkpoint-000002" / "COMPLETE").write_text("{}")
    (ws.runs / "t" / "control").mkdir()
    (ws.runs / "t" / "control" / "1-stop").write_text("stop")  # left by an earlier session
    store.update(job, state="stopped")
    runner.resume(job)
    assert store.get(job)["state"] == "queued" and store.get(job)["resume"] == 1
    runner.tick()
    wait_for(lambda: store.get(job)["state"] != "running")
    assert "['train', 'runs/t/launch.yaml', '--resume']" in Path(store.get(job)["log"]).read_text()
    assert not list((ws.runs / "t" / "control").iterdir())  # the old stop request was cleared before the start


def test_log_tail_shows_each_progress_bar_once_without_terminal_codes(tmp_path):
    """tqdm redraws a line with carriage returns and moves between bars with ANSI codes; the job page shows
    what a terminal would: each bar's last drawing, no escape codes."""
    from lorakit.ui.jobs import log_tail

    log = tmp_path / "train.log"
    log.write_bytes(b"start\nLoading:   0%|  | 0/5\rLoading:  40%|# | 2/5\rLoading: 100%|##| 5/5\n"
                    b"\x1b[A\x1b[2Kweights: 100%|##| 52/52\x1b[0m\r\nstep 3 loss 0.5\rstep 4 loss 0.4")
    assert log_tail(log).splitlines() == ["start", "Loading: 100%|##| 5/5", "weights: 100%|##| 52/52",
                                          "step 4 loss 0.4"]
    assert log_tail(log, 2).splitlines() == ["weights: 100%|##| 52/52", "step 4 loss 0.4"]
