"""The job table (SQLite from the standard library, ``.lorakit/jobs.sqlite3``) and the rule that keeps it true.

A job is a child process: a training (``python -m lorakit train CONFIG``), a captioning, a grid or a
generation. Its state::

    queued -> running -> completed | failed | stopped        (stopping: a stop was requested)
    stopped / failed -> queued (resume, trainings with a checkpoint);  queued -> cancelled

The child owns its log and its outputs; the table only says which process it is (pid + start time,
see :mod:`.processes`). :meth:`JobStore.reconcile` runs at start-up and on every read: a job recorded
as running whose process is gone is settled from what it left behind (``summary.json``: completed;
``status.json`` saying stopped: stopped; otherwise failed, with its log's last lines), so no job
stays "running" or "stopping" after a crash, a kill -9 or a restart of the UI.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

from ..train.control import read_status
from . import processes

STATES = ("queued", "running", "stopping", "completed", "failed", "stopped", "cancelled")
ACTIVE = ("running", "stopping")
QUEUES = {"train": "train", "caption": "tools", "grid": "tools", "generate": "tools"}
COLUMNS = ("id", "kind", "name", "state", "position", "argv", "log", "run_dir", "config", "meta", "pid", "ident",
           "returncode", "error", "created", "started", "ended", "resume")
SCHEMA = """CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, name TEXT NOT NULL, state TEXT NOT NULL,
    position REAL NOT NULL, argv TEXT NOT NULL, log TEXT NOT NULL, run_dir TEXT, config TEXT, meta TEXT NOT NULL,
    pid INTEGER, ident TEXT, returncode INTEGER, error TEXT, created REAL NOT NULL, started REAL, ended REAL,
    resume INTEGER NOT NULL DEFAULT 0)"""


ANSI_CODE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def log_tail(path: str | Path, lines: int = 30, max_bytes: int = 64 << 10) -> str:
    """The last ``lines`` lines of a log (reads at most ``max_bytes`` from its end)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return ""
    # a progress bar redraws its line with \r and moves with ANSI codes: keep each line's last drawing, no codes
    text = ANSI_CODE.sub("", data.decode("utf-8", errors="replace"))
    drawn = (line.rstrip("\r").rsplit("\r", 1)[-1] for line in text.split("\n"))
    return "\n".join([line for line in drawn if line.strip()][-lines:])


class JobStore:
    def __init__(self, path: str | Path):
        self.path = str(path)
        self.lock = threading.RLock()
        self.children: dict[int, object] = {}  # job id -> Popen of jobs this UI process started
        with self._db() as db:
            db.execute(SCHEMA)

    def _db(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        return db

    def _exec(self, sql: str, args=()) -> list[dict]:
        with self.lock:
            db = self._db()
            try:
                return [self._row(r) for r in db.execute(sql, args).fetchall()]
            finally:
                db.close()

    @staticmethod
    def _row(row) -> dict:
        job = dict(row)
        job["argv"], job["meta"] = json.loads(job["argv"]), json.loads(job["meta"])
        job["queue"] = QUEUES[job["kind"]]
        return job

    def add(self, kind: str, name: str, argv: list[str], log: str, *, run_dir: str | None = None,
            config: str | None = None, meta: dict | None = None) -> int:
        if kind not in QUEUES:
            raise ValueError(f"job kind {kind!r}: expected one of {', '.join(QUEUES)}.")
        with self.lock:
            db = self._db()
            try:
                pos = db.execute("SELECT COALESCE(MAX(position), 0) + 1 FROM jobs").fetchone()[0]
                cur = db.execute("INSERT INTO jobs (kind, name, state, position, argv, log, run_dir, config, meta, "
                                 "created) VALUES (?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?)",
                                 (kind, name, pos, json.dumps(argv), log, run_dir, config, json.dumps(meta or {}),
                                  time.time()))
                return cur.lastrowid
            finally:
                db.close()

    def update(self, job_id: int, **values) -> None:
        bad = set(values) - set(COLUMNS)
        if bad:
            raise KeyError(f"unknown job columns {sorted(bad)}")
        if "meta" in values:
            values["meta"] = json.dumps(values["meta"])
        if "argv" in values:
            values["argv"] = json.dumps(values["argv"])
        sets = ", ".join(f"{k} = ?" for k in values)
        self._exec(f"UPDATE jobs SET {sets} WHERE id = ?", (*values.values(), job_id))

    def get(self, job_id: int) -> dict:
        self.reconcile()
        rows = self._exec("SELECT * FROM jobs WHERE id = ?", (int(job_id),))
        if not rows:
            raise LookupError(f"job {job_id}: no such job.")
        return rows[0]

    def all(self) -> list[dict]:
        self.reconcile()
        return self._exec("SELECT * FROM jobs ORDER BY CASE WHEN state = 'queued' THEN position END, id DESC")

    def queued(self, queue: str) -> list[dict]:
        return [j for j in self._exec("SELECT * FROM jobs WHERE state = 'queued' ORDER BY position")
                if j["queue"] == queue]

    def active(self) -> list[dict]:
        return self._exec("SELECT * FROM jobs WHERE state IN ('running', 'stopping')")

    # -- the queue -----------------------------------------------------------------------------------
    def move(self, job_id: int, where: str) -> None:
        """Reorder a queued job: ``up``, ``down`` or ``top`` (within its queue)."""
        job = self.get(job_id)
        if job["state"] != "queued":
            raise ValueError(f"job {job_id} is {job['state']}; only queued jobs can be reordered.")
        order = self.queued(job["queue"])
        i = next(k for k, j in enumerate(order) if j["id"] == job["id"])
        if where == "top":
            order.insert(0, order.pop(i))
        elif where in ("up", "down"):
            k = i - 1 if where == "up" else i + 1
            if 0 <= k < len(order):
                order[i], order[k] = order[k], order[i]
        else:
            raise ValueError(f"move {where!r}: expected up, down or top.")
        base = min(j["position"] for j in order)
        for n, j in enumerate(order):
            self.update(j["id"], position=base + n)

    # -- truth from the processes ----------------------------------------------------------------------
    def reconcile(self) -> None:
        """Settle every running/stopping job whose process is gone (see the module docstring)."""
        with self.lock:
            for job in self.active():
                child = self.children.get(job["id"])
                code = child.poll() if child is not None else None  # reaps our own children
                if processes.alive(job["pid"], job["ident"]):
                    continue
                if child is not None and code is None:  # dead (a zombie) between poll() and alive(): reap it
                    try:
                        code = child.wait(timeout=5)
                    except subprocess.TimeoutExpired:
                        pass
                self.children.pop(job["id"], None)
                self.update(job["id"], **settle(job, code))


def settle(job: dict, returncode: int | None) -> dict:
    """The final state of a job whose process ended, from its return code (when this UI started it) and
    the files it left."""
    started = job["started"] or 0
    values = {"ended": time.time(), "returncode": returncode}
    if job["kind"] == "train" and job["run_dir"]:
        run_dir = Path(job["run_dir"])
        summary = run_dir / "summary.json"
        status = read_status(run_dir) or {}
        if summary.is_file() and summary.stat().st_mtime >= started - 1 and returncode in (None, 0):
            return {**values, "state": "completed", "error": None}
        if status.get("state") == "stopped" and status.get("updated", 0) >= started - 1 and returncode in (None, 0):
            return {**values, "state": "stopped", "error": None}
    elif returncode == 0 or (returncode is None and _done(job)):
        return {**values, "state": "completed", "error": None}
    how = (f"exit code {returncode}" if returncode is not None and returncode >= 0 else
           f"killed by signal {-returncode}" if returncode is not None else "the process is gone")
    if job["state"] == "stopping" and job["kind"] != "train":
        return {**values, "state": "cancelled", "error": f"stopped on request ({how})"}
    return {**values, "state": "failed", "error": f"{how}; last lines of the log:\n{log_tail(job['log'], 15)}"}


def _done(job: dict) -> bool:
    """A tool job that finished while no UI was watching: its declared output exists."""
    path = job["meta"].get("done_file")
    return bool(path) and Path(path).is_file() and Path(path).stat().st_mtime >= (job["started"] or 0) - 1
