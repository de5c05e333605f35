"""``lorakit ui``: prints its URL, serves, stops on Ctrl-C; a taken port is a clear error; a non-loopback
address gets a token."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from typer.testing import CliRunner

from lorakit.cli import app, commands  # noqa: F401  (registers the commands)
from lorakit.cli._quiet import DROPPED
from lorakit.train.control import read_status
from lorakit.ui import processes
from lorakit.ui.jobs import JobStore, log_tail

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(tmp_path, *args, log_name="ui.log"):
    log = tmp_path / log_name
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}  # its jobs too: no thread pools competing on the shared test machine
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "lorakit", "ui", str(tmp_path / "ws"), *args], stdout=out,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + 120
    while "open http" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"lorakit ui did not start:\n{log.read_text()}")
        time.sleep(0.1)
    return proc, " ".join(log.read_text().split())


def stop(proc):
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("lorakit ui did not stop on SIGINT within 20 s") from None


def call(url, token, method="GET", body=None) -> tuple[int, dict]:
    """An API request with the token (as ``Authorization: Bearer``); (status, JSON answer)."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    data = json.dumps(body).encode() if body is not None else None
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data, headers, method=method), timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def get(url, token=None):
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_serves_and_stops(tmp_path):
    port = free_port()
    proc, out = start(tmp_path, "--port", str(port))
    try:
        assert f"open http://127.0.0.1:{port}/ " in out and (tmp_path / "ws" / ".lorakit").is_dir()
        assert get(f"http://127.0.0.1:{port}/") == 200
    finally:
        assert stop(proc) in (0, -signal.SIGINT, 130)


def test_non_loopback_prints_a_token(tmp_path):
    port = free_port()
    proc, out = start(tmp_path, "--port", str(port), "--host", "0.0.0.0")
    try:
        token = re.search(r"\?token=(\S+)", out)[1]
        assert "needs the token" in out
        assert get(f"http://127.0.0.1:{port}/api/datasets") == 401
        assert get(f"http://127.0.0.1:{port}/api/datasets", token) == 200
    finally:
        stop(proc)


def test_taken_port_and_bad_port(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = CliRunner().invoke(app, ["ui", str(tmp_path / "ws"), "--port", str(port)])
    assert out.exit_code == 1 and f"cannot listen on 127.0.0.1:{port}" in out.output and "--port" in out.output
    bad = CliRunner().invoke(app, ["ui", str(tmp_path / "ws"), "--port", "70000"])
    assert bad.exit_code == 2 and "expected a TCP port" in bad.output
    (tmp_path / "file").write_text("x")
    assert CliRunner().invoke(app, ["ui", str(tmp_path / "file")]).exit_code == 1


def test_example_workspace_has_the_train_button(tmp_path):
    """``lorakit ui WS --example`` (what ``make ui`` runs): the sdworld dataset and config, and the start page's
    button that trains them."""
    port = free_port()
    proc, out = start(tmp_path, "--port", str(port), "--example")
    try:
        ws = tmp_path / "ws"
        assert "example: datasets/sdworld-rings" in out, out
        assert len(list((ws / "datasets" / "sdworld-rings" / "img").rglob("*.png"))) == 16
        assert (ws / "configs" / "sdworld.yaml").is_file()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=20) as r:
            assert "Train the example now" in r.read().decode()
    finally:
        assert stop(proc) in (0, -signal.SIGINT, 130)


FAST = {"train.max_steps": "60", "train.batch_size": "2", "train.save_every_n_epochs": "", "network.dim": "4",
        "network.alpha": "4", "network.conv_dim": "", "sample.prompts": "", "sample.before_training": "false"}
TIMEOUT = 240.0  # seconds, per wait: a loaded 2-core box trains slowly


def test_a_killed_ui_leaves_the_training_running_and_a_restarted_ui_settles_it(tmp_path):
    """SIGKILL of ``lorakit ui`` during a training it launched: the training goes on writing (its own session,
    output to a file, no pipe to the dead UI); ``lorakit ui`` started again on the same workspace and port
    shows the job running, then completed once the training ends, with its LoRA file.

    The training is held (SIGSTOP) whenever the test looks at it, so that it cannot end early on a fast machine
    (sixty steps take 2 s there): while the UI is killed, from the moment it is seen to go on writing, and while
    the second UI starts; it runs again (SIGCONT) after each. Every wait fails the test after ``TIMEOUT`` seconds
    with the UIs' and the training's logs; every process is killed at the end."""
    ws, port, token = tmp_path / "ws", free_port(), "s3cret-token"
    api = f"http://127.0.0.1:{port}/api"
    uis, training = [], None
    run = ws / "runs" / "k"

    def wait(what, fn, poll=0.2):
        deadline = time.monotonic() + TIMEOUT
        while not (value := fn()):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {TIMEOUT:.0f} s waiting for {what}")
            time.sleep(poll)
        return value

    def grown(files: dict) -> bool:
        return all(path.stat().st_size > size for path, size in files.items())

    try:
        proc, _ = start(tmp_path, "--port", str(port), "--example", "--token", token)
        uis.append(proc)
        assert get(f"{api}/jobs") == 401  # the token is needed on loopback too once it is set
        status, body = call(f"{api}/configs/sdworld", token, "PUT", {"form": FAST})
        assert status == 200, body
        status, body = call(f"{api}/configs/sdworld/launch", token, "POST", {"run": "k"})
        assert status == 200, body
        job = body["job"]
        j = wait("the training to start", lambda: (x := call(f"{api}/jobs/{job}", token)[1])["pid"] and x)
        training = (j["pid"], j["ident"])
        wait("step 1", lambda: (read_status(run) or {}).get("step", 0) >= 1, poll=0.005)
        os.killpg(training[0], signal.SIGSTOP)

        proc.kill()  # SIGKILL: no shutdown code of the UI runs
        assert proc.wait(timeout=20) == -signal.SIGKILL
        assert processes.alive(*training), "the training died with the UI"
        files = {run / name: (run / name).stat().st_size for name in ("train.log", "metrics.jsonl")}
        step = read_status(run)["step"]
        os.killpg(training[0], signal.SIGCONT)
        wait("the training to go on writing", lambda: grown(files) and read_status(run)["step"] > step, poll=0.005)
        os.killpg(training[0], signal.SIGSTOP)
        assert processes.alive(*training) and not (run / "summary.json").exists(), "ended too soon to test the restart"

        proc, _ = start(tmp_path, "--port", str(port), "--token", token, log_name="ui2.log")  # the same port
        uis.append(proc)
        status, j = call(f"{api}/jobs/{job}", token)
        assert status == 200 and j["state"] == "running" and (j["pid"], j["ident"]) == training, j
        os.killpg(training[0], signal.SIGCONT)
        j = wait("the job to be completed", lambda: (x := call(f"{api}/jobs/{job}", token)[1])["state"] not in
                 ("running", "stopping") and x)
        assert j["state"] == "completed" and j["error"] is None and j["returncode"] is None, j  # not its child: no code
        assert (run / "sks_ring.safetensors").is_file() and (run / "summary.json").is_file()
        assert not processes.alive(*training)
        log = (run / "train.log").read_text()  # what the job page's log panel shows: lorakit's lines, no noise
        for noise in (*DROPPED.values(), "Loading pipeline components", "Loading weights", "kept in float32"):
            assert noise not in log, noise
    except AssertionError as exc:
        logs = "\n".join(f"--- {p.name}:\n{log_tail(p, 30)}" for p in (tmp_path / "ui.log", tmp_path / "ui2.log",
                                                                       run / "train.log"))
        raise AssertionError(f"{exc}\n{logs}") from exc
    finally:
        for proc in uis:
            proc.kill()
            proc.wait(timeout=20)
        if training is not None:
            processes.signal_group(*training, signal.SIGKILL)
            processes.signal_group(*training, signal.SIGCONT)
        for j in JobStore(ws / ".lorakit" / "jobs.sqlite3").active() if ws.is_dir() else []:
            processes.signal_group(j["pid"], j["ident"], signal.SIGKILL)
