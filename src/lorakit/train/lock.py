"""One training run per run folder: an advisory lock (``fcntl.flock``) on ``<output_dir>/.lorakit-lock``.

Two ``lorakit train --resume`` on one folder would both restore the same checkpoint and interleave their
writes (duplicate steps in ``metrics.jsonl``, checkpoints of two histories). The kernel releases a
``flock`` when its process ends, however it ends (kill -9 and crashes included), so a lock is never
stale; the file holds the owner's pid, host, start time and command for the one-line refusal a second
run gets. ``flock`` is per host: it does not protect a folder shared by two machines over NFS.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = ".lorakit-lock"


class RunLockedError(BlockingIOError):
    """The run folder is in use by another training process."""


def _describe(path: Path) -> str:
    try:
        info = json.loads(path.read_text())
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["started"]))
        return f"pid {info['pid']} on {info['host']}, started {started}: {info['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not written its details yet"


def _acquire(path: Path) -> int:
    import fcntl

    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunLockedError(f"train.output_dir {path.parent} is in use by another training run "
                                 f"({_describe(path)}); wait for it to end, or choose another train.output_dir.") from None
        try:  # the owner removes the file as it ends: make sure the locked file is still the one at `path`
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


@contextmanager
def run_lock(run_dir):
    """Hold the run folder's lock while the block runs (created if needed; a folder this call created and
    left empty is removed again). Raises ``RunLockedError`` naming the other process when it is taken."""
    run_dir = Path(run_dir)
    try:
        import fcntl  # noqa: F401
    except ImportError:  # Windows: no flock; runs are not locked there
        yield
        return
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    fd = _acquire(path)
    try:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                "command": " ".join(["lorakit" if sys.argv[0].endswith(("lorakit", "__main__.py")) else sys.argv[0],
                                     *sys.argv[1:]])[:300]}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(info).encode())
        yield
    finally:
        path.unlink(missing_ok=True)  # then unlock; a process that opened the old file sees it is gone (_acquire)
        os.close(fd)
        if created:
            try:
                run_dir.rmdir()  # only when empty: the run failed before writing anything
            except OSError:
                pass
