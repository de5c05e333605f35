"""Mixed-adapter batches: every row of a batch runs its own adapter (or none) at its own strength.

    with lorakit.per_row(model, ["a", "b", None, "a"], strengths=[1.0, 0.5, 0.0, 0.8]):
        logits = model(**batch).logits          # or model.generate(**batch)

Row i computes  y_i = base(x_i) + σ_i · adapter_{a_i}(x_i)  in every wrapped layer, exactly what a
batch of one row with ``set_active_adapters(model, {a_i: σ_i})`` computes (S-LoRA, Punica's SGMV/BGMV,
arXiv 2311.03285 / 2310.18547). A ``RowMap`` is built once per ``per_row`` block and shared by every
layer; layers never loop over rows. LoRA and DoRA on Linear/Conv1D layers take one of four kernels
over per-layer stacks A_all (N+1, r_max, in) and B_all (N+1, out, r_max) (the LoRA scale folded
into B, mixed ranks zero-padded, slot N all zeros for base rows); the per-row strength σ always
multiplies the rank-r intermediate (T·r multiplies, not T·out):

* gather-bmm (Punica's BGMV in PyTorch):  u = bmm(x, A_all[ids]ᵀ)·σ,  y += bmm(u, B_all[ids]ᵀ)  in
  place; copies r·(in + out) weight values per row.
* sort + segment (SGMV): one stable argsort per block; per adapter used, one gather of its rows,
  a GEMM pair and one ``index_add_``. The loop is over adapters in the batch, never over rows.
* dense-masked: H = x·[A_1; …; A_U]ᵀ over the U adapters present, masked to each row's block and
  σ, y += H·[B_1 … B_U]ᵀ: two GEMMs whatever U is, U times the LoRA FLOPs.
* padded groups: each adapter's rows padded to c rows, one bmm pair over the stack itself (no weight
  copy when most of it is in use), one ``index_add_``; groups larger than c take segments. Reads each
  adapter's weights once, in two kernels: the decode kernel (few tokens per adapter).

``_choose`` picks by a cost model whose constants were measured with benchmarks/mixed_batch.py
--kernels: gather-bmm in prefill, padded groups in decode.

DoRA (Liu et al. 2024): y = base(x) + σ·((c − 1) ⊙ W x + c ⊙ s·B A x) with c = m/‖W + s·BA‖ per
output. lorakit's strength interpolates in weight space (W_σ = W + σ·(W' − W)), so c does not depend
on σ: it is computed once per adapter when the stack is built (cached until a weight changes), folded
into B_all, and (c − 1) is gathered per row. Every other adapter (LoHa, LoKr, AdaLoRA, Embedding and
Conv layers, DoRA on a quantised base) takes the segment path through its own ``forward``: its
output at strength 1 minus the base output, times σ_i (every variant is linear in σ).
``modules_to_save`` copies run on their adapter's rows at the row's strength (``SavedModule``'s rule).

HF ``generate`` repeats rows for beam search / ``num_return_sequences`` with ``repeat_interleave``; a
batch k times the map's length uses each row's adapter for its k copies.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import torch
from torch import nn

from .adapters.dora import DoraAdapter
from .adapters.lora import LoraAdapter
from .layer import LoraLayer, SavedModule, blend

#: Cost model that picks the stacked kernel (constants measured on a 2-core AVX2 CPU with
#: benchmarks/mixed_batch.py --kernels): segments pay a fixed cost per adapter in the batch (gather,
#: two small GEMMs, index_add_, dispatch) plus an activation-sized temporary and index_add_ pass;
#: gather-bmm copies r_max·(in + out) weight values per row and accumulates in place.
SEGMENT_OVERHEAD_NS = 60_000
SEGMENT_NS_PER_VALUE = 1.4
GATHER_NS_PER_VALUE = 1.4
DENSE_NS_PER_MAC = 0.04
ALGORITHMS = (None, "gather", "segment", "dense", "padded")
# Padded groups: one fixed dispatch cost plus the padded rows' activation traffic (gather in, bmm,
# index_add_ out). Set so the choice matches the forced-kernel runs (--kernels): padded groups were the
# fastest kernel in every decode cell (8-128 adapters, uniform and Zipf), gather-bmm in prefill.
PADDED_OVERHEAD_NS = 60_000
PADDED_NS_PER_VALUE = 0.7


def _choose(n_adapters: int, rows: int, tokens: int, adapted_tokens: int, r_max: int, d_in: int,
            d_out: int, padded_ns: float = math.inf) -> str:
    costs = {"gather": rows * r_max * (d_in + d_out) * GATHER_NS_PER_VALUE,
             "segment": n_adapters * SEGMENT_OVERHEAD_NS + adapted_tokens * d_out * SEGMENT_NS_PER_VALUE,
             "dense": SEGMENT_OVERHEAD_NS + (n_adapters - 1) * tokens * r_max * (d_in + d_out) * DENSE_NS_PER_MAC,
             "padded": padded_ns}
    return min(costs, key=costs.get)


def _whole_stack(used: int, slots: int) -> bool:
    """Whether the padded kernel runs over the whole stack in place (most of it in use) rather than
    over a copy of the used adapters' factors."""
    return used * 2 >= slots


def _padded_cost(sizes: list[int], slots: int, c: int, tokens: int, r: int, d_in: int, d_out: int) -> float:
    """Estimated ns of the padded kernel with pad width ``c`` (``sizes``: rows per adapter, descending)."""
    big = [n for n in sizes if n > c]
    whole = _whole_stack(len(sizes), slots)
    groups = slots if whole else len(sizes) - len(big)
    copies = 0 if whole else groups * r * (d_in + d_out)
    return (PADDED_OVERHEAD_NS + (groups * c * tokens * (d_in + d_out) + copies) * PADDED_NS_PER_VALUE
            + len(big) * SEGMENT_OVERHEAD_NS + sum(big) * tokens * d_out * SEGMENT_NS_PER_VALUE)


class RowMap:
    """Which adapter (index into ``names``, −1 = none) and strength each row of a batch uses."""

    def __init__(self, names: tuple[str, ...], slot: torch.Tensor, strength: torch.Tensor):
        self.names, self.slot, self.strength = names, slot, strength
        self.rows = int(slot.numel())
        self.adapted = int((slot >= 0).sum())  # rows with an adapter
        self.algorithm: str | None = None  # None = choose per layer by size; a name in ALGORITHMS forces it
        self._expanded: dict[int, RowMap] = {}
        self._segments: list[tuple[int, torch.Tensor]] | None = None
        self._luts: dict[tuple, tuple[list[int], torch.Tensor]] = {}
        self._scales: dict[torch.dtype, torch.Tensor] = {}
        self._plans: dict[tuple, tuple] = {}

    @classmethod
    def build(cls, known: Sequence[str], adapters: Sequence[str | None],
              strengths: Sequence[float] | None = None) -> RowMap:
        """Validate the per-row names and strengths against the model's adapters ``known``."""
        adapters = list(adapters)
        if not adapters:
            raise ValueError("per_row needs one adapter name (or None) per row; got an empty list.")
        strengths = [1.0] * len(adapters) if strengths is None else [float(s) for s in strengths]
        if len(strengths) != len(adapters):
            raise ValueError(f"got {len(adapters)} adapter names but {len(strengths)} strengths; "
                             "give one strength per row (or none for 1.0 everywhere).")
        bad = [n for n in adapters if n is not None and (not isinstance(n, str) or n not in known)]
        if bad:
            raise ValueError(f"unknown adapter(s) {sorted(set(map(str, bad)))}; this model has {list(known)} "
                             "(use None for a row without adapter).")
        if not all(math.isfinite(s) for s in strengths):
            raise ValueError(f"strengths must be finite numbers; got {strengths}.")
        live = [n if n is not None and s != 0 else None for n, s in zip(adapters, strengths, strict=True)]
        names = tuple(dict.fromkeys(n for n in live if n is not None))
        index = {n: i for i, n in enumerate(names)}
        slot = torch.tensor([-1 if n is None else index[n] for n in live], dtype=torch.long)
        strength = torch.tensor([s if n is not None else 0.0 for n, s in zip(live, strengths, strict=True)])
        return cls(names, slot, strength)

    def for_batch(self, batch: int) -> RowMap:
        """This map for a batch of ``batch`` rows: itself, or each row repeated k times (generate)."""
        if batch == self.rows:
            return self
        if batch % self.rows:
            raise ValueError(f"per_row was given {self.rows} rows but a layer saw a batch of {batch}; the batch "
                             "must be the rows given (or a multiple: generate's beams / num_return_sequences).")
        k = batch // self.rows
        if k not in self._expanded:
            m = RowMap(self.names, self.slot.repeat_interleave(k), self.strength.repeat_interleave(k))
            m.algorithm = self.algorithm
            self._expanded[k] = m
        return self._expanded[k]

    def segments(self) -> list[tuple[int, torch.Tensor]]:
        """(name index, row indices) per adapter in the batch, from one stable sort of the map."""
        if self._segments is None:
            order = torch.argsort(self.slot, stable=True)
            counts = torch.bincount(self.slot + 1, minlength=len(self.names) + 1).tolist()
            bounds = [0, *torch.tensor(counts).cumsum(0).tolist()]
            self._segments = [(i, order[bounds[i + 1]:bounds[i + 2]]) for i in range(len(self.names))
                              if counts[i + 1]]
        return self._segments

    def lut(self, stack_names: tuple[str, ...], device) -> tuple[list[int], torch.Tensor]:
        """Map from this map's name index (−1 last) to a layer stack's slot (missing: the zero slot),
        as a list and as a tensor."""
        key = (stack_names, device)
        if key not in self._luts:
            where = {n: i for i, n in enumerate(stack_names)}
            zero = len(stack_names)
            lut = [where.get(n, zero) for n in self.names] + [zero]
            self._luts[key] = (lut, torch.tensor(lut, device=device))
        return self._luts[key]

    def padded_plan(self, lut: list[int], n_slots: int, tokens: int, r: int, d_in: int, d_out: int, device):
        """(estimated ns, plan) for the padded kernel on a layer stack of ``n_slots`` adapters; cached.

        The plan: slot index of each group (None: the whole stack, in order), row index per padded
        position (G, c), σ per position (0 on padding), the positions holding real rows, and the
        groups larger than c as (slot, rows) segments.
        """
        key = (tuple(lut), n_slots, tokens, r, d_in + d_out, device)
        if key not in self._plans:
            groups = sorted(((lut[i], idx) for i, idx in self.segments() if lut[i] < n_slots),
                            key=lambda g: -g[1].numel())
            sizes = [int(idx.numel()) for _, idx in groups]
            c = min(set(sizes), key=lambda w: _padded_cost(sizes, n_slots, w, tokens, r, d_in, d_out))
            small = [(slot, idx) for slot, idx in groups if idx.numel() <= c]
            whole = _whole_stack(len(groups), n_slots)
            order = list(range(n_slots)) if whole else [slot for slot, _ in small]
            pos = {slot: k for k, slot in enumerate(order)}
            index = torch.zeros(len(order), c, dtype=torch.long)
            valid = torch.zeros(len(order), c, dtype=torch.bool)
            for slot, idx in small:
                index[pos[slot], : idx.numel()] = idx
                valid[pos[slot], : idx.numel()] = True
            sigma = torch.where(valid, self.strength[index], 0.0)
            flat = valid.flatten().nonzero().flatten()
            plan = (None if whole else torch.tensor(order, device=device), index.flatten().to(device),
                    sigma.to(device), flat.to(device), index.flatten()[flat].to(device),
                    [(slot, idx.to(device)) for slot, idx in groups if idx.numel() > c])
            self._plans[key] = (_padded_cost(sizes, n_slots, c, tokens, r, d_in, d_out), plan)
        return self._plans[key]

    def lora_forward(self, layer: LoraLayer, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return lora_forward(layer, self, x, *args, **kwargs)

    def saved_forward(self, saved: SavedModule, *args, **kwargs):
        return saved_forward(saved, self, *args, **kwargs)

    def scales(self, dtype, device) -> torch.Tensor:
        key = (dtype, device)
        if key not in self._scales:
            self._scales[key] = self.strength.to(device=device, dtype=dtype)
        return self._scales[key]


def _stackable(adapter: nn.Module, base: nn.Module) -> bool:
    """LoRA, or DoRA on a dense base weight, on a Linear/Conv1D layer without live dropout."""
    if adapter.spec.kind != "linear" or (adapter.training and adapter.dropout > 0):
        return False
    return type(adapter) is LoraAdapter or (type(adapter) is DoraAdapter
                                            and type(getattr(base, "weight", None)) is nn.Parameter)


def _stack(layer: LoraLayer):
    """(names, A_all, B_all, C_all) over the layer's stackable adapters, or None if it has none.

    B_all holds s·B (DoRA: c ⊙ s·B, with c = m/‖W + s·BA‖ computed once here); C_all holds c − 1 per
    adapter (0 for LoRA), or is None without DoRA. Cached per layer and rebuilt when adapters come or
    go or a factor, magnitude or the base weight is written in place (version counters). The check
    avoids ``Module.__getattr__``: it runs in every layer on every decode step.
    """
    modules = layer.adapters._modules
    ident = (layer.training, *map(id, modules.values()))
    cached = layer.__dict__.get("_row_stack")
    if cached is not None and cached[0] == ident:
        _, tensors, versions, stack = cached
        if stack is None or versions == tuple(t._version for t in tensors):
            return stack
    chosen = [(n, a) for n, a in modules.items() if _stackable(a, layer.base_layer)]
    tensors = [t for _, a in chosen for t in a._parameters.values()]
    if any(isinstance(a, DoraAdapter) for _, a in chosen):
        tensors.append(layer.base_layer.weight)
    stack = _build_stack(layer, chosen) if chosen else None
    layer.__dict__["_row_stack"] = (ident, tensors, tuple(t._version for t in tensors), stack)
    return stack


def _build_stack(layer: LoraLayer, chosen: list) -> tuple:
    r_max = max(a.r for _, a in chosen)
    ref = chosen[0][1].lora_A
    dora = any(isinstance(a, DoraAdapter) for _, a in chosen)
    # plain tensors even under inference_mode, so a later forward outside it can use the cache
    with torch.inference_mode(False), torch.no_grad():
        a_all = ref.new_zeros(len(chosen) + 1, r_max, layer.spec.in_features)
        b_all = ref.new_zeros(len(chosen) + 1, layer.spec.out_features, r_max)
        c_all = ref.new_zeros(len(chosen) + 1, layer.spec.out_features) if dora else None
        for i, (_, a) in enumerate(chosen):
            a_all[i, : a.r] = a.lora_A
            b_all[i, :, : a.r] = a.lora_B * a.scale
            if isinstance(a, DoraAdapter):
                c = a._scale_vector(layer.base_layer.weight).to(ref.dtype)
                b_all[i, :, : a.r] *= c[:, None]
                c_all[i] = c - 1
    return tuple(n for n, _ in chosen), a_all, b_all, c_all


def _gather_bmm(x, result, ids, sigma, a_all, b_all):
    """y += ((x A_all[ids]ᵀ)·σ) B_all[ids]ᵀ, per row (BGMV); the expand accumulates into y in place,
    so no activation-sized temporary is made (on CPU that memory traffic costs more than the GEMMs)."""
    rows = x.shape[0]
    x3 = x.reshape(rows, -1, x.shape[-1]).to(a_all.dtype)
    u = torch.bmm(x3, a_all[ids].transpose(1, 2)).mul_(sigma.view(-1, 1, 1))
    y3 = result.view(rows, -1, result.shape[-1])
    if y3.dtype == u.dtype:
        y3.baddbmm_(u, b_all[ids].transpose(1, 2))
    else:
        y3.add_(torch.bmm(u, b_all[ids].transpose(1, 2)).to(y3.dtype))
    return result


def _dense_masked(x, result, ids, sigma, a_all, b_all, slots: list[int]):
    """H = x·[A_1; …; A_U]ᵀ over the U adapters in the batch, zero outside each row's own rank block
    and scaled by σ there, then y += H·[B_1 … B_U]ᵀ: two GEMMs U·r wide, whatever U is (LoRAX's
    fallback, restricted to the adapters present; wins while U·r is small, e.g. in decode)."""
    rows, r = x.shape[0], a_all.shape[1]
    index = torch.tensor(slots, device=x.device)
    a_cat = a_all.index_select(0, index).reshape(len(slots) * r, -1)
    b_cat = b_all.index_select(0, index).permute(1, 0, 2).reshape(b_all.shape[1], len(slots) * r)
    local = torch.full((a_all.shape[0],), -1, dtype=torch.long, device=x.device)
    local[index] = torch.arange(len(slots), device=x.device)
    local = local[ids]
    live = (local >= 0).nonzero().flatten()
    mask = sigma.new_zeros(rows, len(slots), r)
    mask[live, local[live]] = sigma[live, None]
    h = x.reshape(rows, -1, x.shape[-1]).to(a_all.dtype) @ a_cat.t()
    h = h.mul_(mask.view(rows, 1, -1)).view(-1, a_cat.shape[0])
    y2 = result.view(-1, result.shape[-1])
    if y2.dtype == h.dtype:
        y2.addmm_(h, b_cat.t())
    else:
        y2.add_((h @ b_cat.t()).to(y2.dtype))
    return result


def _padded(x, result, plan, sigma, a_all, b_all):
    """Each adapter's rows padded to c: u = bmm(X_pad, A_gᵀ)·σ_pad, Y = bmm(u, B_gᵀ), then the real
    positions added into y with one ``index_add_``; groups larger than c take segments."""
    order, index, sigma_pad, flat, targets, big = plan
    a_g = a_all[: sigma_pad.shape[0]] if order is None else a_all.index_select(0, order)
    b_g = b_all[: sigma_pad.shape[0]] if order is None else b_all.index_select(0, order)
    groups, c = sigma_pad.shape
    rows = x.shape[0]
    x3 = x.reshape(rows, -1, x.shape[-1])
    tokens = x3.shape[1]
    xp = x3.index_select(0, index).to(a_all.dtype).view(groups, c * tokens, -1)
    u = torch.bmm(xp, a_g.transpose(1, 2))
    u.view(groups, c, tokens, -1).mul_(sigma_pad.to(u.dtype).view(groups, c, 1, 1))
    yp = torch.bmm(u, b_g.transpose(1, 2)).view(groups * c, tokens, -1).index_select(0, flat)
    result.view(rows, tokens, -1).index_add_(0, targets, yp.to(result.dtype))
    return _segment_stacked(x, result, big, sigma, a_all, b_all) if big else result


def _segment_stacked(x, result, segs, sigma, a_all, b_all):
    """Per adapter in the batch: gather its rows, one GEMM pair, one index_add_ (SGMV)."""
    for slot, idx in segs:
        xs = x.index_select(0, idx).to(a_all.dtype)
        u = (xs @ a_all[slot].t()).mul_(sigma.index_select(0, idx).view(-1, *([1] * (x.dim() - 1))))
        result.index_add_(0, idx, (u @ b_all[slot].t()).to(result.dtype))
    return result


def _segment_generic(layer, x, result, rows: RowMap, names, skip: tuple[str, ...]):
    """Any adapter through its own forward: σ_i·(adapter(x_i, y_i, 1) − y_i) on its rows."""
    for i, idx in rows.segments():
        name = names[i]
        if name in skip or name not in layer.adapters:
            continue
        xs, ys = x.index_select(0, idx), result.index_select(0, idx)
        delta = layer.adapters[name](xs, ys, layer.base_layer, 1.0) - ys
        sigma = rows.scales(delta.dtype, delta.device).index_select(0, idx)
        result = result.index_add(0, idx, delta * sigma.view(-1, *([1] * (delta.dim() - 1))))
    return result


def lora_forward(layer: LoraLayer, rows: RowMap, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """``LoraLayer.forward`` under a row map (see module docstring)."""
    if layer.merged:
        raise RuntimeError("adapters are merged into the weights; call lorakit.unmerge(model) before per_row.")
    rows = rows.for_batch(x.shape[0])
    result = layer.base_layer(x, *args, **kwargs)
    if not rows.names:
        return result
    stack = _stack(layer) if not args and not kwargs else None
    stacked: tuple[str, ...] = ()
    if stack is not None:
        stacked, a_all, b_all, c_all = stack
        lut, lut_t = rows.lut(stacked, x.device)
        used = sum(slot < len(stacked) for slot in lut[:-1])
        if used:
            sigma = rows.scales(a_all.dtype, x.device)
            ids = lut_t[rows.slot.to(x.device)]
            dora = None
            if c_all is not None:  # DoRA: + σ·(c − 1) ⊙ (W x), the base output without bias
                bias = getattr(layer.base_layer, "bias", None)
                scale = (c_all[ids] * sigma[:, None]).view(rows.rows, *([1] * (result.dim() - 2)), -1)
                dora = (result if bias is None else result - bias) * scale.to(result.dtype)
            per_row_tokens = x.numel() // (x.shape[-1] * rows.rows)
            dims = (a_all.shape[1], a_all.shape[2], b_all.shape[1])
            padded = (rows.padded_plan(lut, len(stacked), per_row_tokens, *dims, x.device)
                      if rows.algorithm in (None, "padded") else (math.inf, None))
            algo = rows.algorithm or _choose(used, rows.rows, rows.rows * per_row_tokens,
                                             rows.adapted * per_row_tokens, *dims, padded_ns=padded[0])
            if algo == "padded":
                result = _padded(x, result, padded[1], sigma, a_all, b_all)
            elif algo == "dense":
                slots = sorted({s for s in lut[:-1] if s < len(stacked)})
                result = _dense_masked(x, result, ids, sigma, a_all, b_all, slots)
            elif algo == "segment":
                segs = [(lut[i], idx) for i, idx in rows.segments() if lut[i] < len(stacked)]
                result = _segment_stacked(x, result, segs, sigma, a_all, b_all)
            else:
                result = _gather_bmm(x, result, ids, sigma, a_all, b_all)
            if dora is not None:
                result = result.add_(dora)
    modules = layer.adapters._modules
    if len(stacked) < len(modules) and any(n not in stacked and n in modules for n in rows.names):
        result = _segment_generic(layer, x, result, rows, rows.names, stacked)
    return result


def saved_forward(saved: SavedModule, rows: RowMap, *args, **kwargs):
    """``SavedModule.forward`` under a row map: each adapter's copy runs on its rows, blended with the
    base output at each row's strength (``SavedModule``'s rule; strength-0 rows have no adapter)."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if not tensors:
        raise TypeError("per_row needs the batch as a tensor argument of modules_to_save modules.")
    batch = tensors[0].shape[0]
    rows = rows.for_batch(batch)
    used = [(i, idx) for i, idx in rows.segments() if rows.names[i] in saved.modules_to_save]
    if len(used) == 1 and used[0][1].numel() == batch and bool((rows.strength == 1).all()):
        return saved.modules_to_save[rows.names[used[0][0]]](*args, **kwargs)  # every row: one copy, in full
    result = saved.original_module(*args, **kwargs)
    if not used:
        return result
    if not isinstance(result, torch.Tensor):
        raise TypeError(f"per_row can route modules_to_save only for modules returning one tensor; "
                        f"{type(saved.original_module).__name__} returned {type(result).__name__}.")
    result = result.clone()
    for i, idx in used:
        sub = [a.index_select(0, idx) if isinstance(a, torch.Tensor) and a.dim() and a.shape[0] == batch else a
               for a in args]
        out = saved.modules_to_save[rows.names[i]](*sub, **kwargs).to(result.dtype)
        sigma = rows.strength.index_select(0, idx)
        result.index_copy_(0, idx, out if bool((sigma == 1).all()) else blend(result.index_select(0, idx), out, sigma))
    return result


def _wrappers(module: nn.Module, found: list | None = None) -> list[nn.Module]:
    """The LoraLayer / SavedModule wrappers, without walking into them: with many adapters loaded,
    ``named_modules`` spends most of its time inside the adapters (this runs once per decode step)."""
    found = [] if found is None else found
    for child in module._modules.values():
        if isinstance(child, (LoraLayer, SavedModule)):
            found.append(child)
        elif child is not None:
            _wrappers(child, found)
    return found


@contextlib.contextmanager
def per_row(model: nn.Module, adapters: Sequence[str | None], strengths: Sequence[float] | None = None,
            algorithm: str | None = None):
    """Inside the block each row i of a batch runs adapter ``adapters[i]`` (None: the base model) at
    ``strengths[i]`` (default 1.0). ``algorithm`` forces ``"gather"``, ``"segment"``, ``"dense"`` or
    ``"padded"`` for LoRA/DoRA (default: chosen by size). Yields the ``RowMap``. Adapters must not be merged.
    """
    from .model import swapped

    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm={algorithm!r}: expected None (automatic), 'gather', 'segment', 'dense' "
                         "or 'padded'.")
    modules = _wrappers(model)
    known = dict.fromkeys(n for m in modules for n in (m.adapters if isinstance(m, LoraLayer) else m.modules_to_save))
    rows = RowMap.build(list(known), adapters, strengths)
    rows.algorithm = algorithm
    if any(getattr(m, "merged", None) for m in modules):
        raise RuntimeError("adapters are merged into the weights; call lorakit.unmerge(model) before per_row.")
    with swapped(modules, "rows", rows):
        yield rows
