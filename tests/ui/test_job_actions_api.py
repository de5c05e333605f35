"""``POST /api/jobs/{id}/{action}`` over HTTP for every action the UI offers (``api_jobs.ACTIONS``): each one
where it is allowed (its effect seen in the job table, the queue order or the run's control folder) and where
it is refused (a 4xx saying why, and nothing changed), an unknown action and an unknown job. The jobs are
stand-in children (``SLEEP``); each test kills its children at its end."""

from __future__ import annotations

import os
import time

import pytest
from ui_helpers import SLEEP, kill_jobs, snapshot

from lorakit.train.control import pending
from lorakit.ui import processes
from lorakit.ui.api_jobs import ACTIONS


@pytest.fixture
def ui(app):
    s = app.app.state.ui  # the FastAPI app behind the guards; its runner is not started: the test drives it
    yield s
    kill_jobs(s.store)


def add(s, name, kind="train"):
    run = s.ws.runs / name
    return s.store.add(kind, name, SLEEP, str(run / "train.log" if kind == "train" else s.ws.state / f"{name}.log"),
                       run_dir=str(run) if kind == "train" else None)


def act(client, job, action):
    return client.post(f"/api/jobs/{job}/{action}")


def start(client, job):
    """``run-now``, then wait until the stand-in has written its log (so later snapshots see no change)."""
    r = act(client, job, "run-now")
    assert r.status_code == 200 and r.json()["state"] == "running", r.text
    deadline = time.monotonic() + 30
    while "child up" not in (open(r.json()["log"]).read() if os.path.exists(r.json()["log"]) else ""):
        assert time.monotonic() < deadline, f"job {job} did not start within 30 s"
        time.sleep(0.05)
    return r.json()


def queue(client) -> list[int]:
    return [j["id"] for j in client.get("/api/jobs").json()["jobs"] if j["state"] == "queued"]


def wait_state(client, job, states, timeout=30.0):
    deadline = time.monotonic() + timeout
    while (j := client.get(f"/api/jobs/{job}").json())["state"] not in states:
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job} still {j['state']} after {timeout:.0f} s, expected {states}: {j}")
        time.sleep(0.05)
    return j


def refused(client, job, action, status, text):
    """The action is refused with ``status`` and a message holding ``text``; the jobs and files are as before."""
    s = client.app.app.state.ui
    table, files = client.get("/api/jobs").json()["jobs"], snapshot(s.ws.root)
    r = act(client, job, action)
    assert r.status_code == status and text in r.json()["error"], (action, r.status_code, r.text)
    assert client.get("/api/jobs").json()["jobs"] == table and snapshot(s.ws.root) == files, action


def test_the_ui_offers_exactly_these_actions():
    """The pages' buttons (``data-act``) name these actions and the API knows every one of them."""
    import re
    from pathlib import Path

    import lorakit.ui

    templates = Path(lorakit.ui.__file__).parent / "templates"
    offered = {a for name in ("job.html", "jobs.html") for a in re.findall(r'data-act="([\w-]+)"',
                                                                         (templates / name).read_text())}
    assert offered == set(ACTIONS)


def test_queue_order_run_now_and_cancel(client, ui):
    a, b, c = (add(ui, n) for n in "abc")
    assert queue(client) == [a, b, c]
    for job, action, order in ((c, "top", [c, a, b]), (a, "down", [c, b, a]), (b, "up", [b, c, a]),
                               (b, "up", [b, c, a]), (a, "down", [b, c, a])):  # the ends: nothing to swap with
        r = act(client, job, action)
        assert r.status_code == 200 and r.json()["id"] == job and r.json()["state"] == "queued"
        assert queue(client) == order, (job, action)
    j = start(client, c)  # beside the queue: b stays first
    assert processes.alive(j["pid"], j["ident"]) and queue(client) == [b, a]
    for action in ("up", "down", "top"):
        refused(client, c, action, 400, "only queued jobs can be reordered")
    refused(client, c, "run-now", 400, "only a queued job can be started now")
    refused(client, c, "cancel", 400, "only queued jobs are cancelled")
    r = act(client, a, "cancel")
    assert r.status_code == 200 and r.json()["state"] == "cancelled" and queue(client) == [b]
    assert not processes.alive(r.json()["pid"], r.json()["ident"])  # never started
    for action in ("cancel", "run-now", "top"):
        refused(client, a, action, 400, "is cancelled")


def test_stop_save_sample_and_kill_a_running_training(client, ui):
    t, q = add(ui, "t"), add(ui, "q")
    for action in ("stop", "save", "sample"):
        refused(client, q, action, 400, f"{action} needs a running job")
    refused(client, q, "kill", 400, "nothing to kill")
    start(client, t)
    run = ui.ws.runs / "t"
    for action, requests in (("save", ["save"]), ("sample", ["save", "sample"])):
        r = act(client, t, action)
        assert r.status_code == 200 and r.json()["state"] == "running" and pending(run) == requests
    r = act(client, t, "stop")  # a request the training reads at its next step; the job is stopping meanwhile
    assert r.status_code == 200 and r.json()["state"] == "stopping" and pending(run) == ["save", "sample", "stop"]
    assert (run / "control").is_dir() and not (ui.ws.runs / "q" / "control").exists()
    for action in ("stop", "save", "sample"):
        refused(client, t, action, 400, f"is stopping; {action} needs a running job")
    pid, ident = r.json()["pid"], r.json()["ident"]
    assert processes.alive(pid, ident)  # the stand-in ignores the request: kill ends it
    assert act(client, t, "kill").status_code == 200
    j = wait_state(client, t, ("failed",))
    assert j["returncode"] == -15 and j["error"].startswith("killed by signal 15") and not processes.alive(pid, ident)
    refused(client, t, "kill", 400, "is failed; nothing to kill")


def test_stop_a_tool_job(client, ui, monkeypatch):
    g = add(ui, "grid", kind="grid")
    start(client, g)
    for action in ("save", "sample"):
        refused(client, g, action, 400, f"{action} is for trainings; job {g} is a grid job")
    refused(client, g, "resume", 400, "resume is for stopped or failed trainings")
    real = processes.signal_group

    def signal_then_reconcile(*args):
        """The runner thread's reconcile landing right after the signal, once the child is gone."""
        sent = real(*args)
        processes.wait_gone(*args[:2], 10)
        ui.store.reconcile()
        return sent

    monkeypatch.setattr(processes, "signal_group", signal_then_reconcile)
    r = act(client, g, "stop")  # a tool job has no control folder: it gets SIGTERM
    assert r.status_code == 200
    j = wait_state(client, g, ("cancelled",))  # not failed, and its return code kept
    assert j["returncode"] == -15 and j["error"] == "stopped on request (killed by signal 15)"


def test_resume_queues_a_failed_training_first(client, ui):
    first, failed, empty = add(ui, "first"), add(ui, "failed"), add(ui, "empty")
    for job in (failed, empty):
        ui.store.update(job, state="failed", error="killed by signal 9")
    refused(client, first, "resume", 400, "is a queued train job; resume is for stopped or failed trainings")
    refused(client, empty, "resume", 400, "runs/empty has no complete checkpoint to resume from")
    ckpt = ui.ws.runs / "failed" / "checkpoint-000004"
    ckpt.mkdir(parents=True)
    (ckpt / "COMPLETE").write_text("{}")
    r = act(client, failed, "resume")
    assert r.status_code == 200 and r.json()["state"] == "queued" and r.json()["resume"] == 1
    assert r.json()["error"] is None and queue(client) == [failed, first]  # before what was waiting
    refused(client, failed, "resume", 400, "is a queued train job")


def test_unknown_action_and_unknown_job(client, ui):
    job = add(ui, "t")
    refused(client, job, "explode", 404, f"action 'explode': no such job action; expected one of {', '.join(ACTIONS)}.")
    refused(client, job, "UP", 404, "expected one of up, down, top")
    refused(client, 999, "up", 404, "job 999: no such job.")
    refused(client, 999, "kill", 404, "no such job")
    assert client.get(f"/api/jobs/{job}/up").status_code == 405  # an action is a POST: a link cannot trigger it
    assert client.get(f"/api/jobs/{job}").json()["state"] == "queued"
