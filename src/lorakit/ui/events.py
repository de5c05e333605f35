"""Live job pages: one server-sent-events stream per open page.

Once a second the stream looks at what the job's process left (the job row, ``status.json``, new
``metrics.jsonl`` rows from the last byte read, the samples folder, the saved files, the log's size)
and sends only what changed: ``job``, ``progress``, ``metrics`` (new rows; ``reset`` when a resume
rewrote the file), ``samples``, ``files``, ``log``, and ``end`` once the job is over. Nothing runs
while no page is open.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from . import runs
from .jobs import log_tail

FINAL = ("completed", "failed", "stopped", "cancelled")
PERIOD = 1.0


def sse(event: str, data) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


def _size(path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return -1


def _progress_file(job: dict) -> dict | None:
    path = job["meta"].get("progress")
    try:
        return json.loads(Path(path).read_text()) if path else None
    except (OSError, ValueError):
        return None


def _outputs(ws, job: dict) -> list[str]:
    folder = job["meta"].get("outputs")
    if not folder:
        return []
    return sorted(ws.rel(p) for p in (ws.root / folder).glob("*.png"))


async def job_events(request, job_id: int):
    s = request.app.state.ui
    sent: dict = {}
    offset = 0
    while True:
        job = await asyncio.to_thread(s.store.get, job_id)
        out = []
        view = {k: job[k] for k in ("id", "state", "error", "returncode", "started", "ended", "name", "kind")}
        if view != sent.get("job"):
            out.append(sse("job", view))
            sent["job"] = view
        if job["kind"] == "train" and job["run_dir"]:
            run_dir = Path(job["run_dir"])
            rows, new_offset = runs.read_metrics(run_dir / "metrics.jsonl", offset)
            if rows or new_offset < offset:
                out.append(sse("metrics", {"rows": rows, "reset": new_offset < offset or offset == 0}))
            offset = new_offset
            for name, value in (("progress", runs.progress(run_dir)), ("samples", runs.samples(run_dir)),
                                ("files", runs.saved_files(run_dir))):
                if value != sent.get(name):
                    out.append(sse(name, value))
                    sent[name] = value
        else:
            for name, value in (("progress", _progress_file(job)), ("outputs", _outputs(s.ws, job))):
                if value is not None and value != sent.get(name):
                    out.append(sse(name, value))
                    sent[name] = value
        size = _size(job["log"])
        if size != sent.get("log_size"):
            out.append(sse("log", {"tail": log_tail(job["log"], 40)}))
            sent["log_size"] = size
        if out:
            yield "".join(out)
        if job["state"] in FINAL:
            yield sse("end", {"state": job["state"]})
            return
        for _ in range(int(PERIOD / 0.25)):
            if await request.is_disconnected():
                return
            await asyncio.sleep(0.25)
