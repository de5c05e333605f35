"""``lorakit ui``: prints its URL, serves, stops on Ctrl-C; a taken port is a clear error; a non-loopback
address gets a token."""

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

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(tmp_path, *args):
    log = tmp_path / "ui.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
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
