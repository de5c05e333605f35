"""The queue runner: one thread that starts the next queued job of each queue (``train``: trainings one
after another; ``tools``: captioning, grids and generations, beside the training) and settles jobs
whose process ended.

Idle means asleep: with nothing running the thread waits on an event (no timer), so a UI nobody uses
costs no CPU. While a job runs it looks once a second (a ``/proc`` read per job).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

from ..train.checkpoint import list_checkpoints
from ..train.control import clear_requests, request
from . import processes
from .jobs import JobStore
from .workspace import Workspace

POLL = 1.0
KILL_GRACE = 10.0  # seconds between SIGTERM and SIGKILL of a job asked to die


def child_env() -> dict:
    """The environment of a job: the UI's own (PYTHONPATH included), output unbuffered so the log is live."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def lorakit_argv(*args: str) -> list[str]:
    """``python -m lorakit ARGS`` with this interpreter: a list, never a shell string."""
    return [sys.executable, "-m", "lorakit", *args]


class Runner:
    def __init__(self, ws: Workspace, store: JobStore):
        self.ws, self.store = ws, store
        self.event = threading.Event()
        self.stopped = False
        self.thread: threading.Thread | None = None
        self.errors: list[str] = []

    def start(self) -> None:
        self.store.reconcile()  # settle what ended while no UI was running
        self.thread = threading.Thread(target=self._loop, name="lorakit-ui-runner", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stopped = True
        self.event.set()
        if self.thread is not None:
            self.thread.join(timeout=5)

    def wake(self) -> None:
        self.event.set()

    def _loop(self) -> None:
        while not self.stopped:
            try:
                self.tick()
            except Exception as exc:  # noqa: BLE001  (the runner must outlive one bad job; the error is shown)
                self.errors.append(f"{time.strftime('%H:%M:%S')} {type(exc).__name__}: {exc}")
            busy = bool(self.store.active())
            self.event.wait(POLL if busy else None)
            self.event.clear()

    def tick(self) -> None:
        """Settle ended jobs, then start the first queued job of every idle queue."""
        self.store.reconcile()
        busy = {j["queue"] for j in self.store.active()}
        for queue in ("train", "tools"):
            if queue not in busy:
                waiting = self.store.queued(queue)
                if waiting:
                    self.launch(waiting[0])

    def launch(self, job: dict) -> None:
        argv = list(job["argv"])
        if job["kind"] == "train":
            clear_requests(job["run_dir"])  # a stop left from an earlier session must not end this one
            if job["resume"]:
                argv.append("--resume")
        started = time.time()
        try:
            child = processes.spawn(argv, self.ws.root, job["log"], child_env())
        except OSError as exc:
            self.store.update(job["id"], state="failed", error=f"could not start {argv[:4]}: {exc}", ended=started)
            return
        self.store.children[job["id"]] = child
        self.store.update(job["id"], state="running", pid=child.pid, ident=processes.identity(child.pid),
                          started=started, ended=None, returncode=None, error=None)

    # -- actions ---------------------------------------------------------------------------------------
    def run_now(self, job_id: int) -> None:
        """Start a queued job at once, beside whatever is running."""
        job = self.store.get(job_id)
        if job["state"] != "queued":
            raise ValueError(f"job {job_id} is {job['state']}; only a queued job can be started now.")
        self.launch(job)
        self.wake()  # the runner now has a job to watch

    def cancel(self, job_id: int) -> None:
        job = self.store.get(job_id)
        if job["state"] != "queued":
            raise ValueError(f"job {job_id} is {job['state']}; only queued jobs are cancelled (stop a running one).")
        self.store.update(job_id, state="cancelled", ended=time.time())

    def control(self, job_id: int, command: str) -> None:
        """``stop`` / ``save`` / ``sample`` for a running training (read at its next step)."""
        job = self.store.get(job_id)
        if job["state"] != "running":
            raise ValueError(f"job {job_id} is {job['state']}; {command} needs a running job.")
        if job["kind"] != "train" and command != "stop":
            raise ValueError(f"{command} is for trainings; job {job_id} is a {job['kind']} job.")
        if command == "stop":  # first: a job that ends at once is then settled as stopped, not failed
            self.store.update(job_id, state="stopping")
        if job["kind"] != "train":
            processes.signal_group(job["pid"], job["ident"], signal.SIGTERM)
        else:
            request(job["run_dir"], command)
        self.wake()

    def kill(self, job_id: int) -> None:
        """End a job's process group now (SIGTERM, then SIGKILL after a grace period)."""
        job = self.store.get(job_id)
        if job["state"] not in ("running", "stopping"):
            raise ValueError(f"job {job_id} is {job['state']}; nothing to kill.")
        processes.signal_group(job["pid"], job["ident"], signal.SIGTERM)

        def later():
            if not processes.wait_gone(job["pid"], job["ident"], KILL_GRACE):
                processes.signal_group(job["pid"], job["ident"], signal.SIGKILL)
            self.wake()
        threading.Thread(target=later, daemon=True).start()

    def resume(self, job_id: int) -> None:
        """Queue a stopped or failed training again, continuing from its newest complete checkpoint."""
        job = self.store.get(job_id)
        if job["kind"] != "train" or job["state"] not in ("stopped", "failed"):
            raise ValueError(f"job {job_id} is a {job['state']} {job['kind']} job; resume is for stopped or "
                             "failed trainings.")
        if not list_checkpoints(Path(job["run_dir"])):
            raise ValueError(f"{self.ws.rel(job['run_dir'])} has no complete checkpoint to resume from; launch the "
                             "config again instead.")
        top = min([j["position"] for j in self.store.queued("train")] + [job["position"]])
        self.store.update(job_id, state="queued", resume=1, position=top - 1, error=None)
        self.wake()
