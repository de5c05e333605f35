"""PeriodicLoRA (Meng et al. 2024, arXiv 2402.16141) as a training callback.

Every ``period`` optimizer steps each adapted layer is *unloaded*: W ← W + s·B·A, then A is
re-initialised (Kaiming-uniform, a=√5) and B = 0, so the model's function is unchanged, and the
optimizer state of A and B (Adam's exp_avg, exp_avg_sq, step — whatever the optimizer keeps) is
dropped so it restarts as for fresh parameters. With ``reset_scheduler`` the LR schedule restarts too.

``momentum`` m > 0 adds the paper's momentum-style partial unloading after *every* step, in its
function-preserving form: W ← W + m·s·B·A, B ← (1−m)·B (the known third-party code also scales A,
which changes the model's output; we do not).

Precision: the callback keeps ΔW_total (all unloaded updates) in fp32. For a float32 base the update
is added to W in place; for a bf16/fp16 base W is rewritten as round(W_orig + ΔW_total) from an fp32
master, so sub-ulp updates are not lost; for a quantised base (``is_quantized``, e.g.
``lorakit.quant.Linear4bit``) the weight is re-quantised from dequant(W_orig) + ΔW_total, so
quantisation error does not compound across merges.

Saving: ``to_lora(model, callback)`` puts the original base weights back and turns
ΔW_total + s·B·A into one plain LoRA adapter (exact SVD at rank ≤ (stages+1)·r; or the full
min(out, in) with momentum), which ``lorakit.save_adapter`` writes in PEFT format and which loads
onto the ORIGINAL base model.
"""

from __future__ import annotations

import re

import torch

from ..adapters.base import to_weight_layout
from ..model import lora_layers
from .callbacks import Callback, TrainState

SUPPORTED = ("lora", "loha", "lokr")


class PeriodicLoRA(Callback):
    """Merge-and-restart every ``period`` steps (see module docstring)."""

    whole_parameters = True  # changes parameters in place between steps: not under FSDP's shards

    def __init__(self, period: int, adapter_name: str = "default", momentum: float = 0.0,
                 reset_scheduler: bool = False):
        if not isinstance(period, int) or period <= 0:
            raise ValueError(f"period={period!r}: expected a positive number of optimizer steps, e.g. 100.")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum={momentum!r}: expected 0 (off) or a fraction in (0, 1), e.g. 0.1.")
        self.period, self.adapter_name, self.momentum = period, adapter_name, momentum
        self.reset_scheduler = reset_scheduler
        self.stages = 0
        self.delta: dict[str, torch.Tensor] = {}  # fp32 ΔW_total, base weight layout
        self.original: dict[str, torch.Tensor] = {}  # W_orig of low-precision / quantised bases

    def _layers(self, model):
        cfg = model.lorakit_configs.get(self.adapter_name)
        if cfg is None or cfg.variant not in SUPPORTED:
            raise ValueError(f"PeriodicLoRA needs adapter {self.adapter_name!r} with an additive variant "
                             f"{SUPPORTED}; got {getattr(cfg, 'variant', 'no such adapter')!r}.")
        if self.momentum and cfg.variant != "lora":
            raise ValueError(f"momentum unloading scales the B factor of plain LoRA; variant {cfg.variant!r} has "
                             "none. Use momentum=0.")
        return [(p, ly) for p, ly in lora_layers(model) if self.adapter_name in ly.adapters]

    def on_train_begin(self, state: TrainState) -> None:
        for path, layer in self._layers(state.model):
            if layer.merged:
                raise ValueError(f"{path} has merged adapters; unmerge before training with PeriodicLoRA.")

    # -- the unloading ------------------------------------------------------------------------------
    @torch.no_grad()
    def _unload(self, path: str, layer, fraction: float) -> None:
        adapter = layer.adapters[self.adapter_name]
        d = adapter.delta_weight().float() * fraction * layer.active.get(self.adapter_name, 1.0)
        base = layer.base_layer
        quantized = getattr(base, "is_quantized", False)
        if quantized or base.weight.dtype != torch.float32:
            if path not in self.original:  # the quantised module itself, or a copy of the low-precision W
                self.original[path] = base if quantized else base.weight.detach().clone()
            total = self.delta[path] = self.delta.get(path, 0) + d
            orig = self.original[path]
            master = (orig.dequantize() if quantized else orig.float()) + total
            if quantized:
                layer.base_layer = _requantize(orig, master)
            else:
                base.weight.copy_(master.to(base.weight.dtype))
        else:
            self.delta[path] = self.delta.get(path, 0) + d
            base.weight.add_(d)

    @torch.no_grad()
    def unload_all(self, state: TrainState) -> None:
        """Unload every layer now, re-initialise the factors and drop their optimizer state."""
        layers = self._layers(state.model)
        for path, layer in layers:
            self._unload(path, layer, 1.0)
            layer.adapters[self.adapter_name].reset("kaiming")
        self.stages += 1
        if state.optimizer is not None:
            for _, layer in layers:
                for p in layer.adapters[self.adapter_name].parameters():
                    state.optimizer.state.pop(p, None)  # the optimizer re-creates fresh state lazily
        if self.reset_scheduler and state.scheduler is not None:
            _restart_schedule(state.scheduler)

    def on_step_end(self, state: TrainState) -> None:
        if self.momentum:
            with torch.no_grad():
                for path, layer in self._layers(state.model):
                    self._unload(path, layer, self.momentum)
                    layer.adapters[self.adapter_name].lora_B.mul_(1 - self.momentum)
        if state.step % self.period == 0:
            self.unload_all(state)

    def state_dict(self) -> dict:
        return {"stages": self.stages, "delta": dict(self.delta), "original": dict(self.original)}

    def load_state_dict(self, state: dict) -> None:
        self.stages, self.delta, self.original = state["stages"], dict(state["delta"]), dict(state["original"])


def _out_in(layer, delta: torch.Tensor) -> torch.Tensor:
    return to_weight_layout(layer.spec, delta)  # a transpose for (in, out) layouts: its own inverse


def _requantize(base, weight: torch.Tensor):
    """A new quantised module holding ``weight`` (out, in); the quantiser's own ``requantized`` if it has one."""
    if hasattr(base, "requantized"):
        return base.requantized(weight)
    return type(base)(weight, base.bias, base.quant_type, base.double_quant, base.compute_dtype)


def _restart_schedule(scheduler) -> None:
    for group, lr in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, strict=True):
        group["lr"] = lr
    scheduler.last_epoch = -1
    scheduler.step()  # recomputes the LR of step 0


@torch.no_grad()
def to_lora(model, callback: PeriodicLoRA, new_name: str | None = None, rank: int | None = None) -> str:
    """Restore the original base weights and express ΔW_total + live adapter as one plain LoRA adapter.

    The factors come from an SVD of the total update per layer (B = U√S, A = √S·Vᵀ, scale 1), at
    ``rank`` or, by default, at the largest rank the update can have: (stages + 1)·r without
    momentum (exact), min(out, in) with it. Returns the new adapter's name (active afterwards);
    save it with ``lorakit.save_adapter(model, directory, name)``.
    """
    from ..config import LoraConfig
    from ..inject import inject
    from ..model import set_active_adapters

    name = new_name or f"{callback.adapter_name}_periodic"
    cfg = model.lorakit_configs[callback.adapter_name]
    if cfg.init in ("pissa", "olora"):
        raise ValueError(f"adapter {callback.adapter_name!r} was initialised with init={cfg.init!r}, so the base holds "
                         "the residual W − s·B0·A0, not the original W; an update relative to the original base needs "
                         "B0·A0 too. Train PeriodicLoRA with init='kaiming' or 'gaussian' to export it this way.")
    factors, ranks = {}, {}
    for path, layer in callback._layers(model):
        adapter, spec = layer.adapters[callback.adapter_name], layer.spec
        if spec.kind == "conv" and spec.groups != 1:
            raise ValueError(f"{path} is a grouped convolution; its update has no exact plain-LoRA form.")
        live = adapter.delta_weight().float() * layer.active.get(callback.adapter_name, 1.0)
        total = callback.delta.get(path, torch.zeros_like(live)) + live
        mat = _out_in(layer, total) if spec.kind != "conv" else total.reshape(total.shape[0], -1)
        cap = min(mat.shape) if callback.momentum else (callback.stages + 1) * getattr(adapter, "r", min(mat.shape))
        k = min(rank or cap, *mat.shape)
        u, s, vh = torch.linalg.svd(mat, full_matrices=False)
        root = s[:k].sqrt()
        factors[path] = (vh[:k] * root[:, None], u[:, :k] * root)
        ranks[re.escape(path)] = k
        _restore_base(callback, path, layer)
    lora_cfg = LoraConfig(r=max(ranks.values()), alpha=float(max(ranks.values())), dropout=cfg.dropout,
                          target_modules="|".join(re.escape(p) for p in factors), rank_pattern=ranks,
                          alpha_pattern={p: float(k) for p, k in ranks.items()})
    inject(model, lora_cfg, name, activate=False, trainable=False, init=False)
    for path, (a, b) in factors.items():
        lora = model.get_submodule(path).adapters[name]
        lora.lora_A.copy_(a.reshape(lora.lora_A.shape))
        lora.lora_B.copy_(b.reshape(lora.lora_B.shape))
    callback.delta, callback.original, callback.stages = {}, {}, 0
    set_active_adapters(model, name)
    return name


def _restore_base(callback: PeriodicLoRA, path: str, layer) -> None:
    base = layer.base_layer
    if path in callback.original:
        orig = callback.original[path]
        if isinstance(orig, torch.Tensor):
            base.weight.copy_(orig)
        else:  # the original quantised module, bit for bit
            layer.base_layer = orig
    elif path in callback.delta:
        base.weight.sub_(callback.delta[path].to(base.weight.dtype))

