"""Multi-process tests without hangs: N ranks forked from one preloaded fork server (torch, transformers and
lorakit imported once per session), each with its output in a log file; a hard timeout SIGKILLs every rank
still running and fails the test with each rank's output, and no process outlives the call.

    results = run_ranks(fn, 2, args, timeout=120)   # fn(rank, *args) in rank 0 and 1 (gloo, 127.0.0.1)
    group = Ranks(fn, 2, args); group.start(); ...; group.wait(60)   # for tests that kill a rank mid-run
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import sys
import time
import traceback
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
PRELOAD = ["torch", "transformers", "transformers.models.llama.modeling_llama", "transformers.models.bert.modeling_bert",
           "diffusers", "lorakit.train", "lorakit.train.run", "lorakit.train.fsdp", "lorakit.tasks.text.task",
           "lorakit.tasks.diffusion.task"]
_CTX = None


def context():
    """The session's fork server (started on first use, with this checkout's ``src`` and the test folders)."""
    global _CTX
    if _CTX is None:
        path = [str(HERE.parent / "src"), str(HERE), str(HERE / "train")]
        old = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = os.pathsep.join(path + ([old] if old else []))
        _CTX = multiprocessing.get_context("forkserver")
        _CTX.set_forkserver_preload(PRELOAD)
        warm = _CTX.Process(target=time.sleep, args=(0,))  # start the server now: imports happen once, here
        warm.start()
        warm.join(300)
        if old is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = old
    return _CTX


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(fn, args, rank: int, world: int, port: int, log: str, out: str, env: dict) -> None:
    """A rank: output to ``log``, torchrun's environment, ``fn(rank, *args)``'s JSON result to ``out``."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world), **env)
    import torch

    torch.set_num_threads(1)
    try:
        result = fn(rank, *args)
    except BaseException as exc:
        traceback.print_exc()
        print(f"error: {type(exc).__name__}: {exc}", flush=True)
        sys.stdout.flush()
        os._exit(1)
    Path(out).write_text(json.dumps(result))


class Ranks:
    """``world`` processes running ``fn(rank, *args)``; ``wait`` enforces the timeout and reports failures."""

    def __init__(self, fn, world: int, args=(), log_dir: Path | None = None, env: dict | None = None):
        self.fn, self.world, self.args, self.env = fn, world, tuple(args), dict(env or {})
        self.dir = Path(log_dir) if log_dir is not None else Path(os.environ.get("TMPDIR", "/tmp"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.procs: list = []
        self.tag = f"ranks-{os.getpid()}-{time.monotonic_ns()}"

    def log(self, rank: int) -> Path:
        return self.dir / f"{self.tag}-rank{rank}.log"

    def output(self) -> str:
        return "\n".join(f"----- rank {r} (exit code {p.exitcode}) -----\n"
                         + (self.log(r).read_text(errors="replace")[-6000:] if self.log(r).exists() else "(no output)")
                         for r, p in enumerate(self.procs))

    def start(self) -> Ranks:
        ctx, port = context(), free_port()
        for rank in range(self.world):
            out = self.dir / f"{self.tag}-rank{rank}.json"
            p = ctx.Process(target=_entry, args=(self.fn, self.args, rank, self.world, port, str(self.log(rank)),
                                                 str(out), self.env))
            p.start()
            self.procs.append(p)
        return self

    def kill(self, rank: int, sig=signal.SIGKILL) -> None:
        if self.procs[rank].is_alive():
            os.kill(self.procs[rank].pid, sig)

    def stop_all(self) -> None:
        for p in self.procs:
            if p.is_alive():
                os.kill(p.pid, signal.SIGKILL)
        for p in self.procs:
            p.join(30)

    def wait(self, timeout: float, grace: float = 30.0, expect_ok: bool = True) -> list:
        """Wait for every rank (at most ``timeout`` s; after one fails, the others get ``grace`` s to stop);
        a hang fails the test with every rank's output. Returns each rank's result (None for a failed one)."""
        deadline, failed = time.monotonic() + timeout, None
        try:
            while any(p.is_alive() for p in self.procs):
                now = time.monotonic()
                if failed is None and any(p.exitcode not in (None, 0) for p in self.procs):
                    failed = now
                if now > deadline or (failed is not None and now - failed > grace):
                    why = f"still running after {timeout:.0f}s" if now > deadline else \
                        f"did not stop within {grace:.0f}s of another rank's failure"
                    self.stop_all()
                    pytest.fail(f"ranks {why} (killed):\n{self.output()}", pytrace=False)
                time.sleep(0.05)
        finally:
            self.stop_all()
        if expect_ok and any(p.exitcode != 0 for p in self.procs):
            pytest.fail(f"a rank failed:\n{self.output()}", pytrace=False)
        results = []
        for rank in range(self.world):
            out = self.dir / f"{self.tag}-rank{rank}.json"
            results.append(json.loads(out.read_text()) if out.exists() else None)
        return results


def run_ranks(fn, world: int, args=(), timeout: float = 120, log_dir: Path | None = None, env: dict | None = None):
    """``fn(rank, *args)`` on ``world`` ranks; every rank's JSON-able return value, or the test fails."""
    return Ranks(fn, world, args, log_dir, env).start().wait(timeout)
