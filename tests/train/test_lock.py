"""One training run per run folder (issue 19.14): a second ``lorakit train --resume`` on a folder in use is
refused in one line naming the other process; a killed run's lock goes with it. Real processes, hard timeouts."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lorakit.train.lock import LOCK_NAME, RunLockedError, run_lock

TIMEOUT = 120


def _env() -> dict:
    src = str(Path(__file__).resolve().parents[2] / "src")
    return {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _finish(proc: subprocess.Popen) -> str:
    """Kill ``proc`` if it still runs; its output (for assertion messages)."""
    if proc.poll() is None:
        proc.kill()
    out, _ = proc.communicate(timeout=30)
    return out or ""


def test_a_second_run_on_the_folder_is_refused_naming_the_first(tmp_path, llama_path):
    (tmp_path / "train.txt").write_text("the cat sat on the mat.\n\nthe dog sat on the log.\n")
    run_dir = tmp_path / "run"
    cfg = {"model": {"path": str(llama_path), "device": "cpu"},
           "data": {"train": str(tmp_path / "train.txt"), "max_length": 16},
           "lora": {"r": 2, "alpha": 4, "target_modules": "all-linear"},
           "train": {"output_dir": str(run_dir), "max_steps": 1_000_000, "batch_size": 1, "progress": False,
                     "plot": False, "keep_heap": False}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    first = subprocess.Popen([sys.executable, "-m", "lorakit", "train", str(tmp_path / "run.yaml")], env=_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + TIMEOUT
        while f'"pid": {first.pid}' not in _read(run_dir / LOCK_NAME):  # it holds the lock (and goes on to train)
            assert first.poll() is None and time.time() < deadline, _finish(first)
            time.sleep(0.1)
        second = subprocess.run([sys.executable, "-m", "lorakit", "train", str(tmp_path / "run.yaml"), "--resume"],
                                env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
        assert second.returncode == 1, second.stderr + second.stdout
        line = " ".join(second.stderr.split())
        assert f"is in use by another training run (pid {first.pid} on {socket.gethostname()}, started " in line
        assert "lorakit train " in line and "choose another train.output_dir" in line, line
        assert first.poll() is None  # the first run was not disturbed
        first.send_signal(signal.SIGKILL)  # a crash: the kernel releases its lock
        first.wait(timeout=30)
    finally:
        _finish(first)
    with run_lock(run_dir):  # free again, though the crashed run left its lock file behind
        assert (run_dir / LOCK_NAME).is_file()
        with pytest.raises(RunLockedError, match=f"pid {os.getpid()} on"):
            with run_lock(run_dir):
                pass
    assert not (run_dir / LOCK_NAME).exists()


def test_a_failed_run_leaves_no_folder_behind(tmp_path):
    with pytest.raises(RuntimeError):
        with run_lock(tmp_path / "new"):
            raise RuntimeError("the config was wrong")
    assert not (tmp_path / "new").exists()
