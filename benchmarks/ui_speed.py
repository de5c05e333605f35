"""``lorakit ui`` speed: a page of a 1,000-image dataset after the first thumbnail pass, the server's CPU while
idle, and a training launched from the UI against the same training from the CLI, side by side.

    flock -x /tmp/cpu.lock .venv/bin/python benchmarks/ui_speed.py [--images 1000] [--idle 30] [--rounds 3] [--steps 30]

Everything runs against a real ``lorakit ui`` process (uvicorn) on a temporary workspace; the trainings use
the shipped sdworld base. Prints one table (docs/ui.md has the numbers of a run).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# one thread per training: two trainings side by side get a core each (lorakit's own switch, train/threads.py)
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
       "LORAKIT_NUM_THREADS": "1"}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def get(url: str, data: dict | None = None) -> bytes:
    body = None if data is None else json.dumps(data).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"} if body else {})
    with urllib.request.urlopen(req, timeout=600) as r:
        return r.read()


def start_ui(ws: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = ws.parent / "ui.log"
    proc = subprocess.Popen([sys.executable, "-m", "lorakit", "ui", str(ws), "--port", str(port)], env=ENV,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    while "open http" not in log.read_text():
        if proc.poll() is not None:
            raise SystemExit(log.read_text())
        time.sleep(0.1)
    return proc, f"http://127.0.0.1:{port}"


def write_dataset(ws: Path, n: int) -> None:
    from lorakit.demos.sdworld import world

    folder = ws / "datasets" / "big" / "img" / "1_shape"
    folder.mkdir(parents=True)
    rng = random.Random(0)
    for i in range(n):
        scene = world.random_scene(rng, size=rng.choice([(64, 64), (96, 64), (64, 96)]))
        world.draw(scene).save(folder / f"{i:05d}.png")
        (folder / f"{i:05d}.txt").write_text(scene.caption() + "\n")


def page_times(url: str, pages: int, per_page: int) -> tuple[list[float], list[float]]:
    """(first pass, second pass) seconds per page: the HTML, then its thumbnails 6 at a time (as a browser)."""
    import re

    out = []
    for _ in range(2):
        times = []
        for page in range(1, pages + 1):
            t0 = time.perf_counter()
            html = get(f"{url}/datasets/big?page={page}&per_page={per_page}").decode()
            thumbs = [t.replace("&amp;", "&") for t in re.findall(r'src="(/api/datasets/big/thumb[^"]+)"', html)]
            with ThreadPoolExecutor(6) as pool:
                list(pool.map(lambda t: len(get(url + t)), thumbs))
            times.append(time.perf_counter() - t0)
        out.append(times)
    return out[0], out[1]


def sd_config(ws: Path, out: str, steps: int) -> dict:
    from lorakit.demos.sdworld.concept import write_concept

    if not (ws / "datasets" / "rings").exists():
        write_concept(ws / "datasets" / "rings" / "img")
    return {"task": "diffusion", "model": {"path": str(ROOT / "assets" / "sdworld-base"), "device": "cpu"},
            "data": {"train_data_dir": "datasets/rings/img", "resolution": 32, "min_bucket_reso": 16,
                     "max_bucket_reso": 64, "bucket_reso_steps": 8, "cache_text_encoder_outputs": True},
            "network": {"module": "lora", "dim": 16, "alpha": 16, "conv_dim": 16, "conv_alpha": 16,
                        "train_unet_only": True},
            "train": {"output_dir": out, "output_name": "b", "max_steps": steps, "batch_size": 4, "lr": 5e-4,
                      "save_every_n_epochs": None, "plot": False, "seed": 42}}


def step_time(run_dir: Path) -> float:
    summary = json.loads((run_dir / "summary.json").read_text())
    return summary["train_seconds"] / summary["steps"]


def cli_start(ws: Path, name: str, steps: int) -> subprocess.Popen:
    cfg = ws / "configs" / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump(sd_config(ws, f"runs/{name}", steps)))
    return subprocess.Popen([sys.executable, "-m", "lorakit", "train", str(cfg)], cwd=ws, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def cli_run(ws: Path, name: str, steps: int) -> float:
    if cli_start(ws, name, steps).wait() != 0:
        raise SystemExit(f"CLI training {name} failed")
    return step_time(ws / "runs" / name)


def side_by_side(ws: Path, url: str, name: str, steps: int) -> tuple[float, float]:
    """(CLI, UI) seconds per step of two trainings started together, one core each."""
    cli = cli_start(ws, f"{name}-cli", steps)
    ui = ui_run(ws, url, f"{name}-ui", steps)
    if cli.wait() != 0:
        raise SystemExit(f"CLI training {name} failed")
    return step_time(ws / "runs" / f"{name}-cli"), ui


def ui_run(ws: Path, url: str, name: str, steps: int) -> float:
    (ws / "configs" / f"{name}.yaml").write_text(yaml.safe_dump(sd_config(ws, f"runs/{name}", steps)))
    job = json.loads(get(f"{url}/api/configs/{name}/launch", {"run": name}))["job"]

    def watch():  # the job page is open: its event stream polls the run once a second
        with urllib.request.urlopen(f"{url}/api/jobs/{job}/events", timeout=3600) as r:
            for _ in r:
                pass
    viewer = threading.Thread(target=watch, daemon=True)
    viewer.start()
    while json.loads(get(f"{url}/api/jobs/{job}"))["state"] in ("queued", "running"):
        time.sleep(1)
    state = json.loads(get(f"{url}/api/jobs/{job}"))
    if state["state"] != "completed":
        raise SystemExit(f"UI training failed: {state['error']}")
    viewer.join(timeout=10)
    return step_time(ws / "runs" / name)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--per-page", type=int, default=60)
    ap.add_argument("--idle", type=float, default=30.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp) / "ws"
        write_dataset(ws, args.images)
        (ws / "configs").mkdir(parents=True, exist_ok=True)
        proc, url = start_ui(ws)
        try:
            pages = -(-args.images // args.per_page)
            first, second = page_times(url, pages, args.per_page)
            time.sleep(10)  # let the last requests' threads and buffers settle; then nobody uses the UI
            c0 = cpu_seconds(proc.pid)
            time.sleep(args.idle)
            idle = cpu_seconds(proc.pid) - c0
            cli, ui, pairs = [], [], []
            for r in range(args.rounds):  # one after the other (alternating which goes first), then side by side
                for kind in (("cli", "ui") if r % 2 == 0 else ("ui", "cli")):
                    if kind == "cli":
                        cli.append(cli_run(ws, f"cli{r}", args.steps))
                    else:
                        ui.append(ui_run(ws, url, f"ui{r}", args.steps))
                pairs.append(side_by_side(ws, url, f"pair{r}", args.steps))
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
    print(f"dataset page ({args.per_page} of {args.images} images: HTML + thumbnails, 6 at a time), {pages} pages:")
    print(f"  first pass (thumbnails made): median {statistics.median(first):.3f} s, max {max(first):.3f} s")
    print(f"  after it (thumbnails cached): median {statistics.median(second):.3f} s, max {max(second):.3f} s")
    print(f"idle server: {idle:.3f} CPU seconds in {args.idle:g} s ({100 * idle / args.idle:.2f} % of one core)")
    print(f"training, {args.steps} steps, one thread each, seconds per step (train_seconds / steps):")
    print(f"  one after the other, CLI: {', '.join(f'{t:.3f}' for t in cli)} (min {min(cli):.3f}, median "
          f"{statistics.median(cli):.3f})")
    print(f"  one after the other, UI:  {', '.join(f'{t:.3f}' for t in ui)} (min {min(ui):.3f}, median "
          f"{statistics.median(ui):.3f}); UI / CLI of the minima {min(ui) / min(cli):.3f}")
    ratios = [u / c for c, u in pairs]
    print(f"  started together (CLI, UI): {', '.join(f'({c:.3f}, {u:.3f})' for c, u in pairs)}; UI / CLI per pair "
          f"{', '.join(f'{x:.3f}' for x in ratios)} (median {statistics.median(ratios):.3f})")


if __name__ == "__main__":
    main()
