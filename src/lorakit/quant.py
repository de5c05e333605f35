"""4-bit base weights for QLoRA (Dettmers et al. 2023, arXiv 2305.14314): NF4 / FP4, double quantisation.

Quantisation is a property of the frozen *base* weight, not an adapter: ``Linear4bit`` is an
``nn.Linear`` whose weight is stored packed and dequantised per forward, so LoRA, DoRA and any
other variant run on it unchanged (y = x·dequant(W)ᵀ + b + adapter(x)).

Storage follows bitsandbytes' reference algorithm (``backends/default/ops.py``); codes, scales and
packed bytes are bit-identical to it (tests/test_quant.py checks this when bitsandbytes is installed):

1. the weight is flattened row-major into blocks of 64 (a block may span rows; the tail is its own);
2. absmax = max|x| per block; x/absmax is rounded to the nearest code of the 16-value codebook
   (NF4: quantiles of N(0,1), exact float32 values below; FP4: E2M1 in bnb's bit order);
3. two codes per byte, the even element in the high nibble (an odd tail is padded with the code of 0);
4. double quantisation: the fp32 absmax values minus their mean are quantised again with bnb's
   signed 8-bit dynamic map in blocks of 256, keeping one fp32 absmax per 256 blocks and the mean.

Cost per weight: 4 + 8/64 + 32/(64·256) = 4.127 bits (0.516 bytes), vs 4.5 bits without DQ.
Merging an adapter into a 4-bit layer writes a dense ``nn.Linear`` holding dequant(W) + ΔW (see
``LoraLayer.merge``); unmerging restores the packed module bit for bit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

QUANT_TYPES = ("none", "nf4", "fp4")
COMPUTE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
BLOCK, DQ_BLOCK = 64, 256

#: bitsandbytes ``get_4bit_type("nf4")``, index = 4-bit code
NF4 = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0], dtype=torch.float32)
#: E2M1 magnitudes in bnb's bit order (codes 0-7), divided by the maximum 12; bit 3 is the sign
_FP4_MAG = torch.tensor([0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0]) / 12.0
FP4 = torch.cat([_FP4_MAG, -_FP4_MAG]).to(torch.float32)
CODEBOOKS = {"nf4": NF4, "fp4": FP4}


def dynamic_map() -> torch.Tensor:
    """bnb's signed 8-bit dynamic-tree map (create_dynamic_map(signed=True, 7, 8)): 256 sorted values.

    For exponent e = 0..6 the fraction interval [0.1, 1] is split into 2^e parts; their midpoints,
    times 10^(e-6), give 2^e values of each sign. With 0 and 1 that is 127·2 + 2 = 256 values.
    """
    values = []
    for e in range(7):
        edges = torch.linspace(0.1, 1, 2 ** e + 1, dtype=torch.float32)
        mids = (edges[:-1] + edges[1:]) / 2.0
        values += (10 ** (e - 6) * mids).tolist() + (-(10 ** (e - 6)) * mids).tolist()
    values += [0.0, 1.0]
    return torch.tensor(sorted(values), dtype=torch.float32)


DYNAMIC = dynamic_map()


def _nearest(x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """Index of the nearest code value: bucketize at the midpoints of the stably sorted codebook, as
    bitsandbytes' reference does (so FP4's +0/−0 tie goes to −0 for x > 0 and to +0 otherwise)."""
    values, order = torch.sort(code, stable=True)
    mids = (values[1:] + values[:-1]) / 2
    pos = torch.bucketize(x.reshape(-1), mids, out_int32=True)
    if torch.equal(order, torch.arange(order.numel(), device=order.device)):
        return pos.view(x.shape)  # sorted codebook (NF4, the dynamic map): position is the code
    return order.index_select(0, pos).view(x.shape)


def quantize_blockwise(x: torch.Tensor, code: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flatten ``x``, scale each ``block`` by its absmax, round to ``code``: (indices (int32), absmax fp32)."""
    flat = x.detach().reshape(-1).float()
    pad = (-flat.numel()) % block
    blocks = F.pad(flat, (0, pad)).view(-1, block)
    absmax = blocks.abs().amax(1).clamp_min(1e-38)  # an all-zero block would otherwise divide by 0
    # bitsandbytes' reference multiplies full blocks by 1/absmax but divides the tail block; the two
    # differ in the last bit, which decides values sitting on a midpoint, so do exactly the same.
    scaled = blocks * (1.0 / absmax)[:, None]
    if pad:
        scaled[-1] = blocks[-1] / absmax[-1]
    idx = _nearest(scaled.clamp_(-1, 1), code.to(scaled.device))
    return idx.reshape(-1)[: flat.numel()], absmax


def dequantize_blockwise(idx: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, block: int) -> torch.Tensor:
    vals = code.to(absmax.device).index_select(0, idx.reshape(-1).int())
    return _scale_blocks(vals, absmax, block)


def _scale_blocks(vals: torch.Tensor, absmax: torch.Tensor, block: int) -> torch.Tensor:
    """vals (flat, fresh) times each block's absmax, in place where the length allows it."""
    numel, pad = vals.numel(), (-vals.numel()) % block
    if pad:
        return (F.pad(vals, (0, pad)).view(-1, block) * absmax[:, None]).reshape(-1)[:numel]
    return vals.view(-1, block).mul_(absmax[:, None]).view(-1)


def pack_nibbles(idx: torch.Tensor, pad_code: int = 0) -> torch.Tensor:
    """Two 4-bit codes per byte, element 2k in the high nibble, 2k+1 in the low one (an odd tail is
    padded with ``pad_code``; bitsandbytes pads with the code of 0.0)."""
    idx = F.pad(idx.to(torch.uint8), (0, idx.numel() % 2), value=pad_code)
    return (idx[0::2] << 4) | idx[1::2]


def unpack_nibbles(packed: torch.Tensor, numel: int) -> torch.Tensor:
    return torch.stack([packed >> 4, packed & 0xF], dim=1).reshape(-1)[:numel]


def packed_bytes(numel: int, double_quant: bool = True) -> int:
    """Bytes a ``Linear4bit`` stores for ``numel`` weights: the codes (two per byte) and the block scales."""
    blocks = -(-numel // BLOCK)
    scales = blocks + 4 * -(-blocks // DQ_BLOCK) + 4 if double_quant else 4 * blocks
    return -(-numel // 2) + scales


class Linear4bit(nn.Linear):
    """A frozen linear layer whose weight is stored as 4-bit codes (see module docstring).

    ``weight`` is a read-only property: dequant(W) in ``compute_dtype``. The packed state lives in
    buffers (``qweight``, ``absmax`` or ``absmax_q``/``absmax2``/``absmax_offset``), so it is saved
    with ``state_dict`` and moved with ``.to(device)``; :meth:`storage_as_parameters` makes them frozen
    parameters for FSDP2 (:mod:`lorakit.train.fsdp`).
    """

    is_quantized = True

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, quant_type: str = "nf4",
                 double_quant: bool = True, compute_dtype: torch.dtype = torch.float32):
        nn.Module.__init__(self)  # not nn.Linear.__init__: there is no dense weight parameter
        if quant_type not in CODEBOOKS:
            raise ValueError(f"quant_type={quant_type!r}: expected one of {sorted(CODEBOOKS)}.")
        if weight.dim() != 2:
            raise ValueError(f"Linear4bit needs a 2-D (out, in) weight, got shape {tuple(weight.shape)}.")
        self.out_features, self.in_features = weight.shape
        self.quant_type, self.double_quant, self.compute_dtype = quant_type, double_quant, compute_dtype
        idx, absmax = quantize_blockwise(weight, CODEBOOKS[quant_type], BLOCK)
        zero = int(_nearest(torch.zeros(1), CODEBOOKS[quant_type]))
        self.register_buffer("qweight", pack_nibbles(idx, zero))
        if double_quant:
            offset = absmax.mean()
            q, absmax2 = quantize_blockwise(absmax - offset, DYNAMIC, DQ_BLOCK)
            self.register_buffer("absmax_q", q.to(torch.uint8))
            self.register_buffer("absmax2", absmax2)
            self.register_buffer("absmax_offset", offset.reshape(1))
        else:
            self.register_buffer("absmax", absmax)
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(compute_dtype), requires_grad=False)

    @classmethod
    def from_linear(cls, module: nn.Module, quant_type: str = "nf4", double_quant: bool = True,
                    compute_dtype: torch.dtype = torch.float32) -> Linear4bit:
        """Quantise an ``nn.Linear`` or transformers ``Conv1D`` (whose (in, out) weight is transposed)."""
        weight = module.weight.detach()
        if not isinstance(module, nn.Linear):
            weight = weight.t()
        out = cls(weight, getattr(module, "bias", None), quant_type, double_quant, compute_dtype)
        return out.to(weight.device)

    def block_absmax(self) -> torch.Tensor:
        if not self.double_quant:
            return self.absmax
        return dequantize_blockwise(self.absmax_q, self.absmax2, DYNAMIC, DQ_BLOCK) + self.absmax_offset

    def dequantize(self) -> torch.Tensor:
        """dequant(W) as float32 (out, in): one gather through a 256-entry byte -> (high, low) value table."""
        numel = self.out_features * self.in_features
        pairs = _byte_table(self.quant_type, self.qweight.device).index_select(0, self.qweight.int())
        vals = pairs.view(torch.float32)[:numel] if numel % 2 else pairs.view(torch.float32)
        return _scale_blocks(vals, self.block_absmax(), BLOCK).view(self.out_features, self.in_features)

    @property
    def weight(self) -> torch.Tensor:
        return self.dequantize().to(self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Linear4bitFunction.apply(x.to(self.compute_dtype), self.bias, self)

    def dequantized_linear(self) -> nn.Linear:
        """A dense ``nn.Linear`` with dequant(W) (what merging writes into)."""
        dense = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                          device=self.qweight.device, dtype=self.compute_dtype)
        dense.weight.data.copy_(self.weight)
        if self.bias is not None:
            dense.bias.data.copy_(self.bias)
        dense.requires_grad_(False)
        return dense

    def storage_bytes(self) -> int:
        """Bytes of the quantised weight (codes + block scales), bias excluded."""
        return sum(t.numel() * t.element_size() for t in self._storage())

    def _storage(self) -> list[torch.Tensor]:
        names = ("qweight", "absmax_q", "absmax2", "absmax_offset") if self.double_quant else ("qweight", "absmax")
        return [getattr(self, n) for n in names]

    def storage_as_parameters(self) -> None:
        """Register the packed codes and scales as frozen parameters instead of buffers (same names, same
        state dict), so that FSDP2, which shards parameters and never buffers, shards the 4-bit base too."""
        for name in list(self._buffers):
            tensor = self._buffers.pop(name)
            self.register_parameter(name, nn.Parameter(tensor, requires_grad=False))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"quant_type={self.quant_type}, double_quant={self.double_quant}, compute_dtype={self.compute_dtype}")


_TABLES: dict = {}


def _byte_table(quant_type: str, device) -> torch.Tensor:
    """The two float32 code values each byte value holds (high nibble first), bit-cast to one int64 each
    so that dequantising is a single 1-D gather."""
    key = (quant_type, str(device))
    if key not in _TABLES:
        code, b = CODEBOOKS[quant_type].to(device), torch.arange(256, device=device)
        _TABLES[key] = torch.stack([code[b >> 4], code[b & 0xF]], dim=1).view(torch.int64).reshape(256)
    return _TABLES[key]


class _Linear4bitFunction(torch.autograd.Function):
    """y = x·dequant(W)ᵀ + b that keeps no dense W for backward: it dequantises again there (as QLoRA
    does), so training memory holds the 4-bit weights only. The frozen W gets no gradient."""

    @staticmethod
    def forward(ctx, x, bias, layer):
        ctx.layer, ctx.has_bias = layer, bias is not None
        return F.linear(x, layer.weight, bias)

    @staticmethod
    def backward(ctx, dy):
        dx = dy @ ctx.layer.weight if ctx.needs_input_grad[0] else None
        db = dy.reshape(-1, dy.shape[-1]).sum(0) if ctx.needs_input_grad[1] else None
        return dx, db, None


def quantizable_names(model: nn.Module, skip: set[str]) -> list[str]:
    """Linear/Conv1D modules QLoRA quantises: all of them except names in ``skip`` and modules inside wrappers."""
    from .inject import _LINEAR, plain_modules

    return [n for n, m in plain_modules(model)
            if isinstance(m, _LINEAR) and not getattr(m, "is_quantized", False) and n not in skip
            and not any(n.startswith(s + ".") for s in skip)]


def quantize_model(model: nn.Module, quant_type: str = "nf4", double_quant: bool = True,
                   compute_dtype: str = "float32", skip: set[str] | None = None) -> list[str]:
    """Replace every quantisable linear layer of ``model`` by a ``Linear4bit`` in place; return their names."""
    from .inject import _set_module

    names = quantizable_names(model, skip or set())
    for name in names:
        _set_module(model, name, Linear4bit.from_linear(model.get_submodule(name), quant_type, double_quant,
                                                        COMPUTE_DTYPES[compute_dtype]))
    return names


def dequantize_model(model: nn.Module) -> nn.Module:
    """Replace every ``Linear4bit`` in ``model`` by its dense ``nn.Linear`` (in place); returns ``model``."""
    from .inject import _set_module

    for name, module in list(model.named_modules()):
        if isinstance(module, Linear4bit):
            _set_module(model, name, module.dequantized_linear())
    return model
