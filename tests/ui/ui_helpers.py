"""Helpers of the web UI's tests (a module of its own: ``from conftest import`` would pick whichever conftest
was imported first when several test folders run together)."""

from __future__ import annotations

import io
import random
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "assets" / "sdworld-base"
HOST = "http://127.0.0.1:7870"
SLEEP = [sys.executable, "-c", "import time; print('child up', flush=True); time.sleep(60)"]  # a stand-in job


def png_bytes(size=(48, 32), colour=(200, 30, 30)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def write_images(folder: Path, n: int, size=(48, 32), captions=True, seed=0) -> list[Path]:
    """``n`` small PNGs (sdworld scenes) with ``.txt`` captions in ``folder``."""
    from lorakit.demos.sdworld import world

    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    out = []
    for i in range(n):
        scene = world.random_scene(rng, size=size)
        path = folder / f"{i:04d}.png"
        world.draw(scene).save(path)
        if captions:
            path.with_suffix(".txt").write_text(scene.caption().replace(" on ", ", on ") + "\n")
        out.append(path)
    return out


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (but the UI's own state) with its bytes: 'nothing written' checks compare two."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and ".lorakit" not in p.relative_to(root).parts}


def kill_jobs(store) -> None:
    """Kill every job process of ``store`` still running and reap this process's children (a test's cleanup)."""
    from lorakit.ui import processes

    for job in store.active():
        processes.signal_group(job["pid"], job["ident"], signal.SIGKILL)
    for child in list(store.children.values()):
        child.kill()
        child.wait(timeout=10)
