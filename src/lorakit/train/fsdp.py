"""FSDP2 for lorakit runs (``train.distributed: fsdp``): PyTorch's own ``fully_shard``, one unit per block.

Every rank keeps 1/N of each parameter (frozen base and adapters alike) and all-gathers a block's weights
just before its forward (and backward), so a model that does not fit one device trains on several
(Zhao et al. 2023, "PyTorch FSDP", arXiv 2304.11277). Only the adapters have ``requires_grad``, so only
they get gradients (reduce-scattered) and optimizer state, each rank for its own shard.

* Units: the modules a ``policy(module) -> bool`` picks, inner ones first, then the root. The default
  policy takes ``train.fsdp_wrap`` (class names) or else the blocks the model classes themselves declare
  unsplittable (``_no_split_modules``: ``LlamaDecoderLayer``, ``BertLayer``, the U-Net's
  ``BasicTransformerBlock``/``ResnetBlock2D``, Flux's ``FluxTransformerBlock`` ...); a task or model
  family may pass its own callable instead (``Parts.extra["fsdp_policy"]``).
* QLoRA: a ``Linear4bit`` keeps its packed NF4/FP4 codes and scales in buffers, which FSDP2 never shards;
  here they become frozen ``uint8``/``float32`` parameters, so the 4-bit base is sharded too. FSDP1
  flattened a unit into one tensor of one dtype, hence fsdp_qlora's ``bnb_4bit_quant_storage=bfloat16``;
  FSDP2 all-gathers parameters of mixed dtypes as bytes and never casts integer ones, so ``uint8`` is a
  storage it shards as it is.
* Knobs: ``fsdp_reshard_after_forward`` (free the gathered weights after each block's forward: less
  memory, one more all-gather in backward), ``fsdp_cpu_offload`` (parameters, gradients and optimizer
  state in CPU memory; CUDA only), ``mixed_precision: bf16`` (all-gather and compute in bf16, reduce
  gradients in fp32; CUDA).
* Checkpoints: :func:`save_sharded` writes every rank's shards with ``torch.distributed.checkpoint`` as
  safetensors (no pickle) with their offsets, and :func:`load_sharded` reads them into any number of
  ranks, one process included. The adapter itself is written once, gathered (:func:`full_trainable`).
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

SHARDED = "sharded"
"""Subdirectory of a checkpoint with the trainable tensors and optimizer state, one safetensors file per rank."""


def is_sharded(model: nn.Module) -> bool:
    return hasattr(model, "set_requires_gradient_sync")  # what fully_shard adds (FSDPModule)


def block_policy(model: nn.Module, classes: list[str] | None = None):
    """``module -> bool``: the module is a unit of its own (its class name is in ``classes``, or by default in
    some model's ``_no_split_modules``). Raises when the model declares no blocks and none are configured."""
    names = set(classes or ())
    if not names:
        for m in model.modules():
            names.update(getattr(m, "_no_split_modules", None) or ())
    if not names:
        raise ValueError(f"train.distributed='fsdp': {type(model).__name__} declares no blocks to shard "
                         "(_no_split_modules); list its block classes in train.fsdp_wrap, e.g. [MyDecoderLayer].")
    return lambda m: type(m).__name__ in names


def shard_model(model: nn.Module, cfg, device: torch.device, world: int, policy=None) -> nn.Module:
    """``fully_shard`` every unit of ``model`` (inner first), then the root; returns ``model`` (sharded in place)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    from ..quant import Linear4bit

    t = cfg.train
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(t.mixed_precision)
    kwargs = {"mesh": init_device_mesh(device.type, (world,)), "reshard_after_forward": t.fsdp_reshard_after_forward,
              "mp_policy": MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32 if dtype else None),
              "offload_policy": CPUOffloadPolicy() if t.fsdp_cpu_offload else OffloadPolicy()}
    for m in model.modules():
        if isinstance(m, Linear4bit):
            m.storage_as_parameters()
    policy = policy or block_policy(model, t.fsdp_wrap)
    units = [m for m in model.modules() if m is not model and policy(m)]
    for m in reversed(units):  # modules() lists parents before children; FSDP2 wants children first
        fully_shard(m, **kwargs)
    fully_shard(model, **kwargs)
    return model


@contextlib.contextmanager
def full_trainable(model: nn.Module):
    """Inside: rank 0's ``model`` holds every trainable parameter whole (gathered from the shards), so the
    usual exporters (PEFT directory, kohya file) write it as a single process would. Collective: every
    rank enters. Outside FSDP it does nothing."""
    from torch.distributed.tensor import DTensor

    slots = [(m, n, p) for m in model.modules() for n, p in m._parameters.items()
             if isinstance(p, DTensor) and p.requires_grad]
    if not slots:
        yield
        return
    whole: dict[int, nn.Parameter] = {}
    with torch.no_grad():
        for _, _, p in slots:  # same order on every rank: each full_tensor() is an all-gather
            if id(p) not in whole:
                whole[id(p)] = nn.Parameter(p.detach().full_tensor(), requires_grad=True)
    main = dist.get_rank() == 0
    if main:
        for m, n, p in slots:
            m._parameters[n] = whole[id(p)]
    try:
        yield
    finally:
        if main:
            for m, n, p in slots:
                m._parameters[n] = p  # the very DTensor FSDP2 tracks


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


def _state(model: nn.Module, optimizer) -> tuple[dict, dict]:
    """(tensors by key, the JSON-able rest): trainable parameters as ``model.<name>`` and the optimizer's state
    keyed by parameter name (``optim.state.<name>.exp_avg``), so any number of ranks can read them back."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    from .checkpoint import split_tensors

    tensors = {f"model.{n}": p.detach() for n, p in model.named_parameters() if p.requires_grad}
    meta = split_tensors(get_optimizer_state_dict(model, optimizer), "optim", tensors, convert=_identity)
    return tensors, meta


def _refs(obj) -> set[str]:
    """The tensor keys a JSON-able state (``split_tensors``'s output) refers to."""
    if isinstance(obj, dict):
        return {obj["__tensor__"]} if set(obj) == {"__tensor__"} else set().union(*map(_refs, obj.values()))
    if isinstance(obj, list):
        return set().union(*map(_refs, obj))
    return set()


def save_sharded(model: nn.Module, optimizer, directory: Path) -> dict:
    """Every rank writes its shards to ``directory`` (collective); returns the optimizer's JSON-able rest."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.hf_storage import HuggingFaceStorageWriter

    tensors, meta = _state(model, optimizer)
    dcp.save(tensors, storage_writer=HuggingFaceStorageWriter(str(directory), save_distributed=dist.is_initialized()))
    return meta


def load_sharded(model: nn.Module, optimizer, directory: Path, meta: dict) -> None:
    """Read a :func:`save_sharded` checkpoint of any number of ranks into this run's parameters (sharded or not)
    and optimizer; ``meta`` is what ``save_sharded`` returned."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.hf_storage import HuggingFaceStorageReader
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    from .checkpoint import join_tensors

    tensors, _ = _state(model, optimizer)  # also creates the optimizer state that the files fill in
    differ = sorted(_refs(meta) ^ {k for k in tensors if k.startswith("optim.")})
    try:
        if differ:
            raise ValueError(f"Missing key in checkpoint state_dict: {differ[0]}")
        with warnings.catch_warnings():  # one process reading a checkpoint of several: the intent, not a problem
            warnings.filterwarnings("ignore", "torch.distributed is disabled")
            dcp.load(tensors, storage_reader=HuggingFaceStorageReader(str(directory)),
                     no_dist=not dist.is_initialized())
    except Exception as exc:  # DCP wraps every rank's failure in CheckpointException
        text = str(exc)
        if "Missing key" not in text and "mismatch sizes" not in text:
            raise
        detail = text.split("Missing key in checkpoint state_dict:")[-1].strip().split("\n")[0][:200]
        raise ValueError(f"{directory.parent} does not match this model's trainable parameters or optimizer "
                         f"({detail}); was the config changed since the run started?") from exc
    state = join_tensors(meta, tensors)
    for group in state["param_groups"]:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    set_optimizer_state_dict(model, optimizer, state)
