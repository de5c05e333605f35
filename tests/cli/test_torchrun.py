"""``torchrun --standalone --nproc-per-node 2 -m lorakit train`` as docs/distributed.md shows it (FSDP, QLoRA):
it trains; when one worker is SIGKILLed, torchrun stops the other with SIGTERM and that one still says what
happened and which checkpoint to ``--resume`` from, with exit code 1, within a bounded time."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from lorakit.train.checkpoint import list_checkpoints

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _workers(parent: int) -> dict[int, int]:
    """{LOCAL_RANK: pid} of the processes torchrun started."""
    out = {}
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit() or int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) != parent:
                continue
            env = dict(kv.split("=", 1) for kv in (entry / "environ").read_text().split("\0") if "=" in kv)
        except OSError:
            continue
        if "LOCAL_RANK" in env:
            out[int(env["LOCAL_RANK"])] = int(entry.name)
    return out


def test_torchrun_fsdp_qlora_then_one_worker_killed(tmp_path, llama_path):
    (tmp_path / "train.txt").write_text("the cat sat on the mat\n\nturn on the kitchen light\n\n" * 4)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"path": str(llama_path), "device": "cpu"},
        "data": {"train": str(tmp_path / "train.txt"), "max_length": 8, "packing": True},
        "lora": {"r": 4, "target_modules": "all-linear", "quantize": "nf4"},
        "train": {"output_dir": str(tmp_path / "run"), "batch_size": 1, "max_steps": 100000, "save_every": 2,
                  "distributed": "fsdp", "progress": False, "plot": False}}))
    log = open(tmp_path / "torchrun.log", "w")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             "-m", "lorakit", "train", str(config)], stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while len(list_checkpoints(tmp_path / "run")) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert len(list_checkpoints(tmp_path / "run")) >= 2, (tmp_path / "torchrun.log").read_text()[-3000:]
        os.kill(_workers(proc.pid)[1], signal.SIGKILL)
        killed = time.monotonic()
        proc.wait(timeout=90)
        assert time.monotonic() - killed < 60
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        log.close()
    out = " ".join((tmp_path / "torchrun.log").read_text().split())
    assert proc.returncode != 0
    assert "error: rank 0 of 2: another process of this run stopped or the connection failed" in out, out[-3000:]
    assert "restart every process with `--resume` to continue from it" in out and "exitcode : 1" in out
    assert (tmp_path / "run" / "checkpoint-000002" / "sharded").is_dir()
