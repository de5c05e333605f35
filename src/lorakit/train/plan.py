"""``lorakit validate --nproc-per-node N --nnodes M``: a config checked for the processes it will run on, and the
memory calculator (:mod:`lorakit.train.estimate`).

Checks: one GPU per process on each node (LOCAL_RANK picks it), at least one optimizer step per epoch for the
global batch (batch x accumulation x processes), and a note when FSDP would run unsharded (one process) or
when processes outnumber the cores of a CPU node.
"""

from __future__ import annotations

import os

from .checks import device_kind


def processes(nproc_per_node: int | None, nnodes: int | None, env: dict | None = None) -> tuple[int, int]:
    """(world size, processes per node): the options, else torchrun's environment, else one process."""
    env = dict(os.environ) if env is None else env
    per_node = nproc_per_node or int(env.get("LOCAL_WORLD_SIZE") or 1)
    nodes = nnodes or max(1, int(env.get("WORLD_SIZE") or per_node) // per_node)
    return per_node * nodes, per_node


def device_problems(device: str, per_node: int) -> tuple[list[str], list[str]]:
    """(problems, notes) of ``per_node`` processes on this machine's devices."""
    import torch

    if device_kind(device) == "cuda":
        have = torch.cuda.device_count()
        if per_node > have:
            return [f"{per_node} processes per node but this machine has {have} CUDA device(s); each process "
                    f"takes GPU LOCAL_RANK of its node: use --nproc-per-node {have} (torchrun's too)."], []
        return [], []
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if per_node > cores:
        return [], [f"{per_node} CPU processes share {cores} cores: each gets one thread and they wait on each other."]
    return [], []


def _text_steps(cfg, world: int) -> tuple[list[str], str, int]:
    """(problems, the step arithmetic, tokens per sample) from the tokenized training file."""
    from ..tasks.text.data import read_records, step_plan, tokenize
    from ..tasks.text.models import load_tokenizer

    t = cfg.train
    samples, _ = tokenize(read_records(cfg.data.train)[: cfg.data.limit], cfg.data, load_tokenizer(cfg.model.path),
                          cfg.model.task)
    items = len(samples) * cfg.data.repeats
    seq = max((len(s["input_ids"]) for s in samples), default=cfg.data.max_length)
    text = (f"global batch: {t.batch_size} per process x {t.grad_accum} accumulation x {world} processes = "
            f"{t.batch_size * t.grad_accum * world} samples per optimizer step; {items} samples per epoch")
    try:
        per_epoch, total = step_plan(items, t.batch_size, t.grad_accum, world, t.epochs, t.max_steps)
    except ValueError as exc:
        return [str(exc)], text, seq
    return [], f"{text}: {per_epoch} steps per epoch, {total} in all", seq


def _diffusion_steps(cfg, world: int) -> tuple[list[str], str, object]:
    """(problems, the step arithmetic, the scanned dataset)."""
    from ..tasks.diffusion.dataset import build_dataset

    t = cfg.train
    data = build_dataset(cfg.data, batch_size=t.batch_size, seed=t.seed, world=world, scan_only=True)
    if data.problems:
        return [], "", None  # validate reports them
    per_epoch = len(data) // t.grad_accum
    text = (f"global batch: {t.batch_size} per process x {t.grad_accum} accumulation x {world} processes; "
            f"{data.total_batches} batches per epoch, ceil({data.total_batches}/{world}) = {len(data)} per process")
    if data.total_batches % world:
        text += f" (the last {world - data.total_batches % world} process(es) wrap to the epoch's first batches)"
    if per_epoch < 1:
        return [f"{len(data)} micro-batches per process per epoch, fewer than train.grad_accum={t.grad_accum}: lower "
                "grad_accum or the number of processes, or add images/repeats."], text, data
    return [], f"{text}: {per_epoch} steps per epoch", data


def plan(task_name: str, cfg, world: int, per_node: int) -> tuple[list[str], str]:
    """(problems, report) of ``cfg`` on ``world`` processes, ``per_node`` per node, with the memory table."""
    from .estimate import format_estimate, text_estimate

    t = cfg.train
    problems, notes = device_problems(cfg.model.device, per_node)
    if t.distributed == "fsdp" and world == 1:
        notes.append("train.distributed='fsdp' with one process trains unsharded (FSDP needs several processes).")
    lines = [f"processes: {world} ({per_node} per node x {world // per_node} node(s)), {t.distributed}"]
    if task_name == "text":
        more, steps, seq = _text_steps(cfg, world)
        problems += more
        lines.append(steps)
        try:
            lines.append(format_estimate(text_estimate(cfg, seq), world, t.distributed, f"batch {t.batch_size} x {seq} tokens"))
        except (OSError, ValueError) as exc:
            notes.append(f"memory estimate unavailable: {exc}")
    else:
        from ..tasks.diffusion.estimate import diffusion_estimate

        more, steps, data = _diffusion_steps(cfg, world)
        problems += more
        lines += [steps] if steps else []
        try:
            est = diffusion_estimate(cfg, data)
            lines.append(format_estimate(est, world, t.distributed, f"batch {t.batch_size} images"))
        except (OSError, ValueError, KeyError, AttributeError) as exc:
            notes.append(f"memory estimate unavailable: {type(exc).__name__}: {exc}")
    return problems, "\n".join(lines + notes)
