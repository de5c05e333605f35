"""Several processes (``torchrun``, or ``srun`` under SLURM): the process group's life, the data-parallel
wrapper (DDP or FSDP2, :mod:`lorakit.train.fsdp`) and a clean end, whatever happens.

    d = setup(device_kind)              # RANK / WORLD_SIZE / LOCAL_RANK from torchrun (or SLURM_* from srun)
    model = d.wrap(model, cfg, device)  # before the optimizer: FSDP2 replaces the parameters by shards
    ...                                 # train: every rank runs the same collectives in the same order
    d.close(model, ok=True)             # finish the work, free the DDP reducer, barrier, destroy the group

Why the end is explicit (issue 19, item 0): a rank that returned from ``run`` and left its process group to
garbage collection hung for minutes in gloo's destructor, which joins its worker threads while holding the
GIL, reached from the DDP reducer's destructor, while a worker waited for the GIL to release a tensor of
its last all-reduce. ``close`` makes the last collective a barrier on every rank, frees the DDP reducer while
the group is alive, gives the workers the GIL (a sleep) to finish their work, then destroys the group at a
known point. When another process has died, the next collective fails at once (gloo: "Connection closed by
peer"; on GPUs nccl's watchdog, after its timeout), or torchrun sends SIGTERM to every other process (which
raises :class:`Terminated` while training); :meth:`Distributed.lost_peer` turns either into a
:class:`DistributedRunError` that names the newest complete checkpoint to ``--resume`` from.
"""

from __future__ import annotations

import contextlib
import gc
import os
import re
import signal
import threading
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

#: env of a ``srun`` task (one process per task) -> torchrun's names (MASTER_ADDR/PORT come from the job script)
SLURM = {"RANK": "SLURM_PROCID", "WORLD_SIZE": "SLURM_NTASKS", "LOCAL_RANK": "SLURM_LOCALID",
         "LOCAL_WORLD_SIZE": "SLURM_NTASKS_PER_NODE"}
_LOST = re.compile(r"closed by peer|reset by peer|broken pipe|connection refused|timed out|timeout|nccl|gloo|"
                   r"process ?group|DistBackendError|has been destroyed|watchdog", re.I)


class DistributedRunError(RuntimeError):
    """Another process of a multi-process run stopped (or the network failed), so this one stopped too."""


class Terminated(RuntimeError):
    """SIGTERM: torchrun stops every process when one fails, and a scheduler when the job ends or is cancelled."""


def _raise_terminated(signum, frame):
    raise Terminated("SIGTERM: the launcher stops every process when one fails, or the job was cancelled")


def launch_env(env: dict) -> dict:
    """Rank variables of this process: torchrun's when set, else a ``srun`` task's (``SLURM_*``), else none.

    Only when ``MASTER_ADDR`` is set does a SLURM task count (the job script exports it, see docs/distributed.md):
    ``srun python -m lorakit train`` inside an allocation without it stays a single process."""
    if env.get("WORLD_SIZE"):
        return {k: env[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE") if env.get(k)}
    if env.get("SLURM_NTASKS") and env.get("MASTER_ADDR") and int(env["SLURM_NTASKS"]) > 1:
        out = {k: env[s] for k, s in SLURM.items() if env.get(s)}
        out["LOCAL_WORLD_SIZE"] = out.get("LOCAL_WORLD_SIZE", "1").split("(")[0]  # "4(x2)" -> "4"
        return out
    return {}


@dataclass
class Distributed:
    """Where this process stands: ``rank`` of ``world``; ``strategy`` is ``none`` (one process), ``ddp`` or ``fsdp``."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    strategy: str = "none"
    started: bool = False
    """This process created the group (so ``close`` destroys it); False when the caller had made one."""
    sigterm: object = None
    """The SIGTERM handler to restore in ``close`` (while training, SIGTERM raises :class:`Terminated`)."""

    @property
    def main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module, cfg, device: torch.device, policy=None) -> nn.Module:
        """``model`` ready for the loop: DDP, FSDP2 (sharded in place; ``policy(module) -> bool`` picks the
        units, default :func:`lorakit.train.fsdp.block_policy`) or unchanged in one process."""
        if self.world > 1 and self.strategy == "ddp":
            # no buffer broadcast each step: the frozen base's buffers never change (a 4-bit base keeps its packed
            # weights in buffers, which DDP would otherwise send from rank 0 to every process at every forward)
            return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                                       broadcast_buffers=False)
        if self.world > 1 and self.strategy == "fsdp":
            from .fsdp import shard_model

            return shard_model(model, cfg, device, self.world, policy)
        return model

    def close(self, holder: dict, ok: bool) -> None:
        """End the run's distributed part; ``holder["model"]`` (the wrapper) is released here.

        ``ok``: every rank got here normally, so a barrier is safe; after a failure (a peer lost, an
        exception on this rank) the group is destroyed at once, since the other ranks may never reach one."""
        if self.sigterm is not None:  # after a failure the launcher's SIGTERM must not cut the error message short
            signal.signal(signal.SIGTERM, self.sigterm if ok else signal.SIG_IGN)
        holder.clear()  # the trainer and the wrapper: their references go first
        gc.collect()  # the DDP reducer (and its reference to the group) goes now, while the group is alive
        if self.world > 1 and dist.is_initialized():
            if ok:
                with contextlib.suppress(RuntimeError):  # a peer that died after its last step: nothing to wait for
                    dist.barrier()
            time.sleep(0.05)  # GIL released: gloo's workers finish freeing their last work before the join
            if self.started:
                dist.destroy_process_group()

    def lost_peer(self, exc: BaseException, run_dir) -> DistributedRunError | None:
        """A clear error when ``exc`` says another process (or the network) failed; None for other errors."""
        if self.world <= 1 or isinstance(exc, DistributedRunError):
            return None
        text = f"{type(exc).__name__}: {exc}"
        if not (isinstance(exc, (Terminated, getattr(dist, "DistError", ()))) or _LOST.search(text)):
            return None
        from .checkpoint import list_checkpoints

        found = list_checkpoints(run_dir)
        resume = (f"The newest complete checkpoint is {found[-1]}; restart every process with `--resume` to continue "
                  "from it" if found else "No checkpoint was written yet (set train.save_every to make runs resumable)")
        first = re.sub(r"\[[^\]]*\.(cc|cpp|h):\d+\] ", "", text.splitlines()[0])  # gloo's source location
        first = first.split(". ")[0][:200]
        return DistributedRunError(f"rank {self.rank} of {self.world}: another process of this run stopped or the "
                                   f"connection failed ({first}); this process stops too. {resume}.")


def setup(device_kind: str, strategy: str = "ddp") -> Distributed:
    """Join (or start) the process group when the launcher says there are several processes."""
    env = launch_env(dict(os.environ))
    world = int(env.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return Distributed()
    os.environ.update(env)  # the env:// rendezvous reads RANK and WORLD_SIZE
    started = not dist.is_initialized()
    if started:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo", store=_run_store(rank, world),
                                rank=rank, world_size=world)
    d = Distributed(dist.get_rank(), dist.get_world_size(), int(env.get("LOCAL_RANK", dist.get_rank())), strategy,
                    started)
    if threading.current_thread() is threading.main_thread():  # a message and a clean end instead of a silent kill
        d.sigterm = signal.signal(signal.SIGTERM, _raise_terminated)
    return d


_STORE: list = []  # [store, groups made]: one rendezvous store per process, whatever the number of runs


def _run_store(rank: int, world: int):
    """The process's rendezvous store (created once: torchrun's agent store, or MASTER_ADDR:MASTER_PORT) under
    a prefix new for each group. A second run in the same process must not bind the port again nor read the
    first group's addresses: its FSDP model may keep that group (and its store) alive, and the new group
    then connected to the old one's stale addresses and hung (seen here)."""
    if not _STORE:
        _STORE[:] = [next(dist.rendezvous("env://", rank=rank, world_size=world))[0], 0]
    _STORE[1] += 1
    return dist.PrefixStore(f"lorakit/run{_STORE[1]}", _STORE[0])


def device_for(spec: str, d: Distributed) -> torch.device:
    """``model.device`` as a torch device; on CUDA each process takes GPU ``LOCAL_RANK`` of its node."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("model.device='cuda' but no CUDA device is available; use 'auto' or 'cpu'.")
        torch.cuda.set_device(d.local_rank % torch.cuda.device_count())
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(spec)


@contextlib.contextmanager
def skip_sync(model: nn.Module, skip: bool):
    """Accumulate gradients locally for a micro-step that is not the last of an optimizer step (no
    all-reduce / reduce-scatter); the last micro-step synchronises the sum."""
    if not skip:
        yield
    elif isinstance(model, nn.parallel.DistributedDataParallel):
        with model.no_sync():
            yield
    elif hasattr(model, "set_requires_gradient_sync"):  # an FSDP2 module
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


def global_mean(value: torch.Tensor, world: int) -> float:
    """The mean of ``value`` over every process (all of them see the same loss and stop together on NaN)."""
    if world > 1:
        value = value.detach().clone()
        dist.all_reduce(value)
        value /= world
    return float(value)


def full_value(t: torch.Tensor) -> torch.Tensor:
    """A DTensor (FSDP2's sharded parameters, gradients, norms) as its whole value; other tensors as they are."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t
