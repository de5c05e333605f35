"""AdaLoRA's rank allocator as a training callback (Zhang et al. 2023, arXiv 2303.10512, §3–4, App. A).

Per optimizer step t (1-based, counted after the step), for every entry w of P, Λ, Q:

    I = |w · ∇w|,  Ī ← β1·Ī + (1−β1)·I,  Ū ← β2·Ū + (1−β2)·|I − Ī|,  s(w) = Ī·Ū          (Eqs. 10–13)
    S_i = s(λ_i) + mean_j s(Q_ij) + mean_j s(P_ji)                                         (Eq. 9)

The budget b(t) of kept triplets falls cubically from b(0) = Σ init ranks to b(T) = target_r · n:
b(t) = b(T) + (b(0) − b(T))·(1 − (t − t_i)/(T − t_i − t_f))³ for t_i < t ≤ T − t_f. Every ΔT steps in
that phase, λ entries with S ≤ the (b(0) − b(t))-th smallest score are zeroed. At t = T − t_f the
final mask is fixed and then re-applied after every later step. The loss gets
γ · mean(||QQᵀ − I||_F, ||PᵀP − I||_F) over all matrices (``extra_loss``).

Why the work happens in ``on_step_end`` (after ``optimizer.step``) rather than before the step:
a λ zeroed before the step would be revived by that very step, so the next forward would not see
the mask; the paper's code and PEFT mask after the step, with w the updated weight and ∇w the
gradient of the step just taken. The gradients are snapshot in ``on_before_optimizer_step``, so the
callback does not depend on when the loop clears them. Step numbering, scores and masks match
PEFT's ``update_and_allocate(t)`` called after the step.
"""

from __future__ import annotations

import torch

from ..adapters.adalora import AdaLoraAdapter
from ..config import AdaLoraConfig, ConfigError
from ..model import lora_layers
from .callbacks import Callback, TrainState


class AdaLoraCallback(Callback):
    """Rank allocation and orthogonality regularisation for one AdaLoRA adapter (see module docstring)."""

    whole_parameters = True  # changes parameters in place between steps: not under FSDP's shards

    def __init__(self, adapter_name: str = "default"):
        self.adapter_name = adapter_name
        self.avg_ipt: dict[str, torch.Tensor] = {}
        self.avg_unc: dict[str, torch.Tensor] = {}
        self._grads: dict[str, torch.Tensor] = {}

    # -- setup ------------------------------------------------------------------------------------
    def _layers(self, model) -> dict[str, AdaLoraAdapter]:
        found = {p: ly.adapters[self.adapter_name] for p, ly in lora_layers(model) if self.adapter_name in ly.adapters}
        if not found or not all(isinstance(a, AdaLoraAdapter) for a in found.values()):
            raise ValueError(f"AdaLoraCallback needs adapter {self.adapter_name!r} injected with variant='adalora'; "
                             f"found {sorted({type(a).__name__ for a in found.values()}) or 'no such adapter'}.")
        return dict(sorted(found.items()))

    def on_train_begin(self, state: TrainState) -> None:
        lcfg = state.model.lorakit_configs[self.adapter_name]
        if lcfg.adalora is None:
            lcfg.adalora = AdaLoraConfig()
        cfg = self.cfg = lcfg.adalora
        if cfg.total_step is None:
            cfg.total_step = state.total_steps or None
        errors = cfg.problems(lcfg.r, training=True)
        if cfg.total_step is None:
            errors.append("adalora.total_step is unknown: set it, or give the trainer a total step count.")
        if errors:
            raise ConfigError(errors, "AdaLoRA schedule")
        layers = self._layers(state.model)
        trimmed = [p for p, a in layers.items() if a.r != a.ranknum]
        if trimmed:
            raise ValueError(f"{len(trimmed)} layer(s) (e.g. {trimmed[0]}) hold only their kept triplets (an AdaLoRA "
                             "file loaded after pruning), so there is nothing left to allocate. Fine-tune it without "
                             "the callback, or convert it with export_as_lora and train that.")
        self.init_budget = sum(a.r for a in layers.values())
        self.target_budget = cfg.target_r * len(layers)

    def budget(self, t: int) -> tuple[int, bool]:
        """(b(t), whether to mask at step t) — the cubic schedule of the module docstring."""
        c = self.cfg
        if t <= c.tinit:
            return self.init_budget, False
        if t > c.total_step - c.tfinal:
            return self.target_budget, True
        frac = 1 - (t - c.tinit) / (c.total_step - c.tfinal - c.tinit)
        budget = int((self.init_budget - self.target_budget) * frac ** 3 + self.target_budget)
        return budget, t % c.deltaT == 0

    # -- hooks ------------------------------------------------------------------------------------
    def extra_loss(self, state: TrainState) -> torch.Tensor | None:
        gamma = state.model.lorakit_configs[self.adapter_name].adalora
        gamma = gamma.orth_reg_weight if gamma is not None else AdaLoraConfig().orth_reg_weight
        if gamma == 0:
            return None
        terms = [t for a in self._layers(state.model).values() for t in a.orthogonality()]
        return gamma * torch.stack(terms).mean()

    def on_before_optimizer_step(self, state: TrainState) -> None:
        self._grads = {}
        if state.step + 1 < self.cfg.total_step - self.cfg.tfinal:  # scores are frozen afterwards
            for path, a in self._layers(state.model).items():
                for name, p in (("A", a.lora_A), ("E", a.lora_E), ("B", a.lora_B)):
                    if p.grad is not None:
                        self._grads[f"{path}:{name}"] = p.grad.detach().clone()

    @torch.no_grad()
    def on_step_end(self, state: TrainState) -> None:
        t, c = state.step, self.cfg
        layers = self._layers(state.model)
        final = c.total_step - c.tfinal
        if t < final:
            self._update_scores(layers)
            budget, due = self.budget(t)
            if due:
                c.rank_pattern = self._mask_to_budget(layers, budget)
        elif t == final:
            c.rank_pattern = self._mask_to_budget(layers, self.budget(t)[0])
            self.avg_ipt, self.avg_unc = {}, {}
        elif c.rank_pattern:
            for path, a in layers.items():
                a.lora_E.masked_fill_(~torch.tensor(c.rank_pattern[path], device=a.lora_E.device)[:, None], 0.0)

    def _update_scores(self, layers: dict[str, AdaLoraAdapter]) -> None:
        b1, b2 = self.cfg.beta1, self.cfg.beta2
        for path, a in layers.items():
            for name, p in (("A", a.lora_A), ("E", a.lora_E), ("B", a.lora_B)):
                key = f"{path}:{name}"
                if key not in self._grads:
                    continue
                ipt = (p.detach() * self._grads[key]).abs()
                avg = self.avg_ipt.get(key, torch.zeros_like(ipt)) * b1 + (1 - b1) * ipt
                self.avg_ipt[key] = avg
                self.avg_unc[key] = self.avg_unc.get(key, torch.zeros_like(ipt)) * b2 + (1 - b2) * (ipt - avg).abs()

    def _score(self, key: str, like: torch.Tensor) -> torch.Tensor:
        if key not in self.avg_ipt:
            return torch.zeros_like(like)
        return self.avg_ipt[key] * self.avg_unc[key]

    def triplet_scores(self, layers: dict[str, AdaLoraAdapter]) -> dict[str, torch.Tensor]:
        """S_i per layer (Eq. 9): λ's score + row-mean of Q's scores + column-mean of P's scores."""
        return {path: self._score(f"{path}:E", a.lora_E).view(-1) + self._score(f"{path}:A", a.lora_A).mean(1)
                + self._score(f"{path}:B", a.lora_B).mean(0) for path, a in layers.items()}

    def _mask_to_budget(self, layers: dict[str, AdaLoraAdapter], budget: int) -> dict[str, list[bool]]:
        scores = self.triplet_scores(layers)
        k = self.init_budget - budget
        if k <= 0:
            return {path: [True] * a.r for path, a in layers.items()}
        threshold = torch.kthvalue(torch.cat([s.cpu() for s in scores.values()]), k).values.item()
        pattern = {}
        for path, a in layers.items():
            drop = scores[path] <= threshold
            a.lora_E.masked_fill_(drop[:, None], 0.0)
            pattern[path] = (~drop).tolist()
        return pattern

    # -- resume -----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"avg_ipt": dict(self.avg_ipt), "avg_unc": dict(self.avg_unc)}

    def load_state_dict(self, state: dict) -> None:
        self.avg_ipt, self.avg_unc = dict(state["avg_ipt"]), dict(state["avg_unc"])


def rank_pattern(model, adapter_name: str = "default") -> dict[str, int]:
    """Surviving rank per module: Σ kept triplets of the saved mask, else non-zero λ entries."""
    masks = (model.lorakit_configs[adapter_name].adalora or AdaLoraConfig()).rank_pattern or {}
    out = {}
    for path, layer in lora_layers(model):
        if adapter_name in layer.adapters:
            a = layer.adapters[adapter_name]
            out[path] = sum(masks[path]) if path in masks and len(masks[path]) == a.r else int((a.lora_E != 0).sum())
    return out


@torch.no_grad()
def export_as_lora(model, adapter_name: str = "default", new_name: str | None = None, activate: bool = True) -> str:
    """Add a plain LoRA adapter ``new_name`` equal to AdaLoRA adapter ``adapter_name``; return its name.

    Only surviving triplets are kept: B' = P[:, keep], A' = s·diag(λ_keep)·Q[keep] and alpha = r
    per module (scale 1), so B'A' = s·P Λ Q exactly. Layers with no surviving triplet get no adapter.
    Save it with ``lorakit.save_adapter(model, dir, new_name)`` (PEFT LORA format).
    """
    import re

    from ..config import LoraConfig
    from ..inject import inject
    from ..model import _saved_modules, set_active_adapters

    cfg = model.lorakit_configs[adapter_name]
    if cfg.variant != "adalora":
        raise ValueError(f"adapter {adapter_name!r} is a {cfg.variant!r} adapter; export_as_lora converts AdaLoRA.")
    new_name = new_name or f"{adapter_name}_lora"
    masks = (cfg.adalora.rank_pattern if cfg.adalora else None) or {}
    kept = {}
    for path, layer in lora_layers(model):
        a = layer.adapters[adapter_name] if adapter_name in layer.adapters else None
        if a is None:
            continue
        keep = a.lora_E.view(-1) != 0
        if path in masks and len(masks[path]) == a.r:
            keep &= torch.tensor(masks[path], device=keep.device)
        if keep.any():
            if layer.spec.kind == "conv" and layer.spec.groups != 1:
                raise ValueError(f"{path} is a grouped convolution (groups={layer.spec.groups}); its AdaLoRA update "
                                 "has no exact plain-LoRA form. Merge it instead (lorakit.merge_and_unload).")
            kept[path] = (a, keep.nonzero().flatten())
    if not kept:
        raise ValueError(f"every triplet of adapter {adapter_name!r} is pruned (all λ = 0); nothing to export.")
    ranks = {re.escape(p): int(idx.numel()) for p, (_, idx) in kept.items()}
    lora_cfg = LoraConfig(r=max(ranks.values()), alpha=float(max(ranks.values())), dropout=cfg.dropout,
                          target_modules="|".join(re.escape(p) for p in kept), rank_pattern=ranks,
                          alpha_pattern={k: float(v) for k, v in ranks.items()}, bias=cfg.bias,
                          modules_to_save=cfg.modules_to_save)
    inject(model, lora_cfg, new_name, activate=False, trainable=False, init=False)
    for path, (a, idx) in kept.items():
        lora = model.get_submodule(path).adapters[new_name]
        q = (a.lora_A * a.lora_E * a.scale).index_select(0, idx)
        lora.lora_A.copy_(q.reshape(lora.lora_A.shape))
        lora.lora_B.copy_(a.lora_B.index_select(1, idx).reshape(lora.lora_B.shape))
    for _, saved in _saved_modules(model):
        if adapter_name in saved.modules_to_save:
            saved.modules_to_save[new_name].load_state_dict(saved.modules_to_save[adapter_name].state_dict())
    if activate:
        set_active_adapters(model, new_name)
    return new_name
