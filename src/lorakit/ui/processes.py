"""Child processes that outlive the UI: start one in its own session with its log file, and tell later
(even from a restarted UI) whether it is still that process.

A pid alone is not an identity: after the child ends the kernel may give its number to any other
process. A job therefore records the pid *and* the process's start time (``/proc/<pid>/stat`` field
22, in clock ticks since boot; ``psutil`` elsewhere); the job is alive only while a process with
that pid and that start time exists and is not a zombie.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

try:
    _TICKS = os.sysconf("SC_CLK_TCK")
except (AttributeError, ValueError, OSError):  # not POSIX
    _TICKS = 100


def _stat(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name (state is [0], start time [19])."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2:].split()  # the name may hold spaces and parentheses


def identity(pid: int) -> str | None:
    """The process's start time as a string (``None``: no such process, or a zombie)."""
    if pid <= 0:
        return None
    if Path("/proc/self/stat").exists():
        fields = _stat(pid)
        if fields is None or fields[0] in ("Z", "X"):
            return None
        return fields[19]
    try:
        import psutil
    except ImportError:  # no way to tell a reused pid: trust the pid
        return "pid" if _pid_exists(pid) else None
    try:
        proc = psutil.Process(pid)
        return None if proc.status() == psutil.STATUS_ZOMBIE else f"{proc.create_time():.2f}"
    except psutil.Error:
        return None


def start_time(pid: int) -> float | None:
    """When the process started (seconds since the epoch); ``None`` when it is gone."""
    ident = identity(pid)
    if ident is None or ident == "pid":
        return None
    if not Path("/proc/stat").exists():
        return float(ident)
    boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                if line.startswith("btime"))
    return boot + int(ident) / _TICKS


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def alive(pid: int | None, ident: str | None) -> bool:
    """Whether the process recorded as (pid, identity) is still running."""
    return bool(pid) and ident is not None and identity(pid) == ident


def spawn(argv: list[str], cwd: str | Path, log: str | Path, env: dict | None = None) -> subprocess.Popen:
    """Start ``argv`` (a list: no shell) in its own session, stdout and stderr appended to ``log``.

    Its own session: a Ctrl-C or SIGHUP meant for the UI's terminal does not reach it, and it keeps
    running when the UI exits; its output goes to a file, never to a pipe the UI would have to drain.
    """
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        raise TypeError(f"spawn: argv must be a list of strings, got {argv!r}")
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(argv, cwd=str(cwd), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True, close_fds=True)


def signal_group(pid: int, ident: str | None, sig: int = signal.SIGTERM) -> bool:
    """Send ``sig`` to the process group the job leads, only if the job is still that process."""
    if not alive(pid, ident):
        return False
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def wait_gone(pid: int, ident: str | None, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for the process to end; True when it has."""
    deadline = time.monotonic() + timeout
    while alive(pid, ident):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
