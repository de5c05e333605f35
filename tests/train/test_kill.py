"""kill -9 at random moments (during steps, checkpoint writes and pruning), resume, repeat: every resume
starts from a complete checkpoint and the final adapter equals an uninterrupted run's.

Children come from the session's ``forkserver`` (tests/multiproc.py: torch and transformers imported once, no
OpenMP state forked); ``LORAKIT_CHECKPOINT_PAUSE`` sleeps between the files of each save/prune to widen those
windows. Every session still running when the test ends is killed.
"""

import json
import os
import random
import shutil
import signal
import time

import pytest
import torch
from multiproc import context
from safetensors.torch import load_file
from test_run import llama_cfg

from lorakit.train import Callback, run
from lorakit.train.checkpoint import MARKER, NAME, PAUSE_ENV, list_checkpoints

TRAIN = dict(max_steps=8, save_every=1, keep_last=2, batch_size=2, grad_accum=2, scheduler="linear", warmup_steps=2)
SEEDS, KILLS, PAUSE = (0, 1, 2), 7, 0.03  # 21 kills; PAUSE: seconds between the files of a save/prune


class RecordStart(Callback):
    """Appends the step each (resumed) session starts from, for the parent to check."""

    def __init__(self, path):
        self.path = path

    def on_train_begin(self, state):
        with open(self.path, "a") as f:
            f.write(f"{state.step}\n")


def _train(cfg, resume: bool, log: str, pause: float) -> None:
    os.environ[PAUSE_ENV] = str(pause)
    torch.set_num_threads(1)
    run(cfg, callbacks=[RecordStart(log)], resume=resume, quiet=True)


def _check_complete(ckpt) -> int:
    """Every file of a listed checkpoint is there and readable; returns its step."""
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert json.loads((ckpt / MARKER).read_text())["step"] == state["step"] == int(NAME.match(ckpt.name).group(1))
    for name in ("trainable.safetensors", "optimizer.safetensors", "state.safetensors",
                 "adapter/adapter_model.safetensors"):
        assert load_file(ckpt / name), name
    json.loads((ckpt / "optimizer.json").read_text())
    json.loads((ckpt / "adapter" / "adapter_config.json").read_text())
    return state["step"]


@pytest.fixture
def ctx():
    """The session's preloaded fork server (tests/multiproc.py); every session still alive at the end is killed."""
    started = []
    context()  # start the fork server (imports) before a session is timed

    class Ctx:
        def Process(self, *args, **kwargs):  # noqa: N802  (multiprocessing's name)
            p = context().Process(*args, **kwargs)
            started.append(p)
            return p

    yield Ctx()
    for p in started:
        if p.is_alive():
            os.kill(p.pid, signal.SIGKILL)
            p.join(30)


def _session(ctx, cfg, resume: bool, log: str, pause: float):
    p = ctx.Process(target=_train, args=(cfg, resume, log, pause))
    p.start()
    return p


def test_kill_9_anywhere_then_resume_matches_uninterrupted_run(tmp_path, llama_path, ctx):
    cfg = llama_cfg(tmp_path / "ref", llama_path, **TRAIN)
    cfg.lora.dropout = 0.1  # the RNG state must be restored exactly too
    t0 = time.perf_counter()
    ref = _session(ctx, cfg, False, str(tmp_path / "ref.txt"), PAUSE)
    ref.join(300)
    duration = time.perf_counter() - t0  # kills land anywhere in a session's life, however fast the machine
    assert ref.exitcode == 0
    want = load_file(tmp_path / "ref" / "run" / "adapter" / "adapter_model.safetensors")
    kills, resumed = 0, 0
    for seed in SEEDS:
        rng = random.Random(seed)
        cfg = llama_cfg(tmp_path / f"s{seed}", llama_path, **TRAIN)
        cfg.lora.dropout = 0.1
        run_dir, log = tmp_path / f"s{seed}" / "run", tmp_path / f"s{seed}" / "starts.txt"
        expected_starts, seed_kills = [], 0
        while True:
            found = list_checkpoints(run_dir)
            steps = [_check_complete(c) for c in found]
            resumed += bool(steps)
            expected_starts.append(steps[-1] if steps else 0)
            last = seed_kills == KILLS
            p = _session(ctx, cfg, bool(found), str(log), 0.0 if last else PAUSE)
            if last:
                break
            p.join(rng.uniform(0.05, 0.8) * duration)
            if p.is_alive():
                os.kill(p.pid, signal.SIGKILL)
                seed_kills += 1
            p.join(300)
            if p.exitcode == 0:  # finished before the kill: start this seed again from scratch
                shutil.rmtree(run_dir)
                log.unlink()
                expected_starts = []
        p.join(300)
        assert p.exitcode == 0
        kills += seed_kills
        starts = [int(x) for x in log.read_text().split()]
        # every session that got as far as training started from the newest complete checkpoint
        assert all(s in expected_starts for s in starts) and starts[-1] == expected_starts[-1]
        got = load_file(run_dir / "adapter" / "adapter_model.safetensors")
        assert got.keys() == want.keys()
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-6)
    assert kills >= 20 and resumed >= 10, (kills, resumed)
