"""How big a run is before it runs: parameters, the frozen base's bytes (by dtype, 4-bit packed), the adapter
with its gradients and optimizer state, activations per micro-batch, and what one process holds under DDP and
FSDP. ``lorakit validate`` prints it (the memory calculator kohya and axolotl users ask for);
``benchmarks/fsdp_memory.py`` compares it with measured peaks.

The model is built on the meta device (no weight is read or allocated) and the adapter injected into it, so
parameter counts are exact for every variant; bytes follow from dtypes and :func:`lorakit.quant.packed_bytes`.

Activations (transformer LMs and classifiers): per token and layer, the tensors autograd keeps when only
adapters train. A frozen Linear keeps no input; an adapted one keeps its input (shared by q/k/v and by
gate/up); norms and the activation function keep theirs (the accounting of Korthikanti et al. 2022,
"Reducing Activation Recomputation in Large Transformer Models", §4, redone for a frozen base). For a
LLaMA-style layer that is 7h + 2h_kv + 4f values (h hidden, h_kv key/value width, f MLP width), for a
BERT-style one 8h + 2f, plus the attention probabilities (heads x sequence) where eager attention keeps them,
plus the fp32 log-probabilities of the loss (vocabulary per token); the logits and their gradient are counted
as transient. This assumes adapters on every linear layer; with fewer (q/v only) fewer inputs are kept, so
the figure is an upper bound (1.3x on a LLaMA, 1.5x on a BERT with q/v adapters; 1.04x with all). With gradient
checkpointing only each layer's input is kept (h), plus one layer's worth during its recomputation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
#: optimizer state bytes per trainable parameter (AdamW: two fp32 moments; 8-bit AdamW: two uint8 ones)
OPTIMIZER_BYTES = {"adamw": 8, "adamw8bit": 2, "lion": 4, "adafactor": 4, "prodigy": 16}


@dataclass
class Part:
    """One model of a pipeline: its parameters (a 4-bit weight counts as its number of weights), the
    adapter's trainable parameters in it and its frozen storage by kind."""

    name: str
    params: int
    trainable: int
    frozen_bytes: dict[str, int]


@dataclass
class Estimate:
    params: int
    """Parameters of the base model (a 4-bit weight counts as its number of weights)."""
    trainable: int
    frozen_bytes: dict[str, int]
    """Frozen storage by kind: ``{"float32": ..., "nf4": ...}``."""
    optimizer: str = "adamw"
    activation_bytes: int | None = None
    """Per micro-batch (None: not estimated for this architecture)."""
    transient_bytes: int = 0
    """Short-lived buffers on top (a 4-bit layer dequantised for its matmul)."""
    blocks: int = 0
    block_bytes: int = 0
    """The largest FSDP unit's parameter bytes (gathered whole while it runs)."""
    root_bytes: int = 0
    """Parameters outside every unit (embeddings, head): FSDP's root unit."""
    held_bytes: dict[str, int] = field(default_factory=dict)
    """What every process holds whole, never sharded (a VAE outside the trained module, latent caches)."""
    parts: list[Part] = field(default_factory=list)
    """Per model part (U-Net, each text encoder, VAE): the calculator prints one row each."""
    notes: list[str] = field(default_factory=list)

    @property
    def states_bytes(self) -> int:
        """Adapter weights (fp32), their gradients (fp32) and the optimizer's state."""
        return self.trainable * (4 + 4 + OPTIMIZER_BYTES.get(self.optimizer, 8))

    def per_process(self, strategy: str, world: int) -> dict[str, int]:
        """Bytes one process holds while training, by item; ``strategy`` ``ddp`` or ``fsdp``."""
        frozen, states = sum(self.frozen_bytes.values()), self.states_bytes
        out = {"base weights": frozen, "adapter + grads + optimizer": states}
        if strategy == "fsdp" and world > 1:
            out = {k: math.ceil(v / world) for k, v in out.items()}
            out["gathered (root + 2 blocks)"] = self.root_bytes + 2 * self.block_bytes
        out.update(self.held_bytes)
        out["activations"] = (self.activation_bytes or 0) + self.transient_bytes
        return out


def _sizes(model: nn.Module, dtype: str, quantized: set[str], quant: tuple[str, bool]) -> dict[str, tuple[str, int]]:
    """Parameter name -> (storage kind, bytes): trainable ones in fp32, 4-bit weights packed, the rest in ``dtype``."""
    from ..quant import packed_bytes

    out = {}
    for name, p in model.named_parameters():
        module = name.rsplit(".", 1)[0].removesuffix(".base_layer")
        if p.requires_grad:
            out[name] = ("trainable", p.numel() * 4)
        elif module in quantized and name.endswith(".weight"):
            out[name] = (quant[0], packed_bytes(p.numel(), quant[1]))
        else:
            out[name] = (dtype, p.numel() * BYTES[dtype])
    return out


def _units(model: nn.Module, classes: list[str] | None, sizes: dict[str, tuple[str, int]]) -> tuple[int, int, int]:
    """(number of units, largest unit's bytes, root bytes) under :func:`lorakit.train.fsdp.block_policy`."""
    from .fsdp import block_policy

    try:
        policy = block_policy(model, classes)
    except ValueError:
        return 0, 0, sum(b for _, b in sizes.values())
    units = [n for n, m in model.named_modules() if n and policy(m)]
    inner = [n for n in units if not any(n.startswith(u + ".") for u in units if u != n)]
    own, root = dict.fromkeys(inner, 0), 0
    for name, (_, size) in sizes.items():
        owner = next((u for u in inner if name.startswith(u + ".")), None)
        if owner is None:
            root += size
        else:
            own[owner] += size
    return len(inner), max(own.values(), default=0), root


def _activations(config, tokens: int, seq: int, dtype: str, checkpointing: bool) -> int | None:
    """Bytes autograd keeps for one micro-batch of ``tokens`` (``seq`` per sample); None for unknown shapes."""
    h, layers = getattr(config, "hidden_size", None), getattr(config, "num_hidden_layers", None)
    f = getattr(config, "intermediate_size", None)
    if not (h and layers and f):
        return None
    heads = getattr(config, "num_attention_heads", 1) or 1
    kv = (getattr(config, "num_key_value_heads", None) or heads) * (h // heads)
    gated = getattr(config, "hidden_act", "") in ("silu", "swish") or getattr(config, "model_type", "") in (
        "llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "olmo", "granite")
    per_layer = 7 * h + 2 * kv + 4 * f if gated else 8 * h + 2 * f
    if getattr(config, "_attn_implementation", None) == "eager":
        per_layer += heads * seq
    size = BYTES[dtype]
    if checkpointing:
        kept = tokens * (layers * h + per_layer) * size
    else:
        kept = tokens * (layers * per_layer + h) * size
    return kept + 4 * tokens * _vocab(config)  # the loss keeps the fp32 log-probabilities


def _vocab(config) -> int:
    """Logit width of a language model's head (a classifier's handful of labels is negligible)."""
    return getattr(config, "vocab_size", 0) if getattr(config, "model_type", "") not in ("bert", "roberta") else 0


def text_estimate(cfg, tokens_per_sample: int | None = None) -> Estimate:
    """The text task's run (``cfg``: a text ``RunConfig``): counts on a meta model, nothing allocated."""
    import dataclasses

    import transformers

    from ..inject import inject, quantize_targets
    from .config import resolve_path

    m, t = cfg.model, cfg.train
    config = transformers.AutoConfig.from_pretrained(str(resolve_path(m.path)), local_files_only=True)
    cls = transformers.AutoModelForSequenceClassification if m.task == "classification" else \
        transformers.AutoModelForCausalLM
    if m.task == "classification":
        config.num_labels = max(getattr(config, "num_labels", 2), 2)
    with torch.device("meta"):
        model = cls.from_config(config)
    notes, quantized, lora = [], set(), cfg.lora
    if t.method == "lora" and lora is not None:
        quantized = set(quantize_targets(model, lora))
        inject(model, dataclasses.replace(lora, quantize="none"), init=False)
    elif t.method == "full":
        model.requires_grad_(True)
    else:
        notes.append("method head: the head modules' size is counted as trainable only once training selects them")
    params = sum(p.numel() for n, p in model.named_parameters() if ".modules_to_save." not in n)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    quant = (lora.quantize, lora.double_quant) if quantized else ("nf4", True)
    sizes = _sizes(model, m.dtype, quantized, quant)
    frozen: dict[str, int] = {}
    for kind, size in sizes.values():
        if kind != "trainable":
            frozen[kind] = frozen.get(kind, 0) + size
    est = Estimate(params, trainable, frozen, t.optimizer)
    est.blocks, est.block_bytes, est.root_bytes = _units(model, t.fsdp_wrap, sizes)
    seq = tokens_per_sample or cfg.data.max_length
    compute = "bfloat16" if t.mixed_precision == "bf16" else "float16" if t.mixed_precision == "fp16" else m.dtype
    if quantized and lora.compute_dtype in BYTES:
        compute = lora.compute_dtype
    tokens = t.batch_size * seq
    est.activation_bytes = _activations(config, tokens, seq, compute, t.gradient_checkpointing)
    est.transient_bytes = 2 * 4 * tokens * _vocab(config)  # the fp32 logits and their gradient
    if quantized:  # one 4-bit layer dequantised at a time (forward, and again in backward)
        largest = max(model.get_submodule(n).base_layer.weight.numel() if hasattr(model.get_submodule(n), "base_layer")
                      else model.get_submodule(n).weight.numel() for n in quantized)
        est.transient_bytes += 2 * largest * BYTES[compute]
    est.notes = notes
    return est


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _storage(frozen: dict[str, int]) -> str:
    return ", ".join(f"{human(v)} {k}" for k, v in frozen.items())


def format_estimate(est: Estimate, world: int, strategy: str, what: str) -> str:
    """The calculator's table: one process, and each of ``world`` processes under DDP and FSDP; ``what``
    names the micro-batch the activations are for ("batch 2 x 512 tokens")."""
    lines = [f"model: {est.params:,} parameters ({_storage(est.frozen_bytes)}), trainable {est.trainable:,} "
             f"({100 * est.trainable / max(est.params, 1):.3f}%)"
             + (f", {est.blocks} FSDP units" if est.blocks else "")]
    if est.parts:
        width = max(len(p.name) for p in est.parts) + 2
        lines.append(f"{'part':<{width}}{'parameters':>14}{'trainable':>12}   frozen storage")
        lines += [f"{p.name:<{width}}{p.params:>14,}{p.trainable:>12,}   {_storage(p.frozen_bytes)}" for p in est.parts]
    columns = [("1 process", "ddp", 1)]
    if world > 1:
        columns += [(f"DDP x{world}, each", "ddp", world), (f"FSDP x{world}, each", "fsdp", world)]
    rows: dict[str, dict[str, int]] = {}
    for title, kind, w in reversed(columns):  # the widest column (FSDP's) first: its rows' order
        for item, value in est.per_process(kind, w).items():
            rows.setdefault(item, {})[title] = value
    rows["total (estimate)"] = {t: sum(est.per_process(kind, w).values()) for t, kind, w in columns}
    width, col = max(len(r) for r in rows) + 2, max(len(t) for t, _, _ in columns) + 3
    lines.append(" " * width + "".join(f"{t:>{col}}" for t, _, _ in columns))
    for item, values in rows.items():
        lines.append(f"{item:<{width}}" + "".join(f"{human(values[t]) if t in values else '-':>{col}}"
                                                   for t, _, _ in columns))
    lines.append(f"activations: {what} per micro-batch" + ("" if est.activation_bytes is not None else
                                                          " (not estimated for this architecture)")
                 + f"; this run uses {strategy if world > 1 else 'one process'}."
                 + " Loading reads the whole base into each process's CPU memory first.")
    return "\n".join(lines + est.notes)
