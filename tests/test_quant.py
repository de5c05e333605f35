"""QLoRA base quantisation (lorakit.quant): codebooks from their published construction, an independent
blockwise reference written from bitsandbytes' description, error bounds, packing, memory, merging."""

import copy

import pytest
import torch
from contract import assert_close, randomize
from models import build, example_input, run
from torch import nn

import lorakit
from lorakit.quant import DYNAMIC, FP4, NF4, Linear4bit, dequantize_model, pack_nibbles, unpack_nibbles


def test_nf4_codebook_from_normal_quantiles():
    offset = (1 - 1 / 30 + 1 - 1 / 32) / 2  # 0.9677083, QLoRA appendix
    pos = torch.special.ndtri(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])
    neg = -torch.special.ndtri(torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1])
    values = torch.sort(torch.cat([pos, neg, torch.zeros(1, dtype=torch.float64)])).values
    assert_close(NF4.double(), values / values.max(), atol=1e-6, rtol=0, msg="NF4")
    assert NF4[7] == 0 and NF4[0] == -1 and NF4[15] == 1


def test_fp4_codebook_is_e2m1_in_bnb_bit_order():
    # bits s e1 e0 m: exponent field 01 -> 2^3, 10 -> 2^2, 11 -> 2^1, 00 subnormal (m * 2^-4); then / 12
    mags = []
    for code in range(8):
        e, m = code >> 1, code & 1
        mags.append(m * 0.0625 if e == 0 else 2.0 ** (4 - e) * (1 + 0.5 * m))
    expected = torch.tensor(mags + [-v for v in mags]) / 12
    assert torch.equal(FP4, expected.float())


def test_dynamic_map_structure():
    assert DYNAMIC.numel() == 256 and torch.all(DYNAMIC[1:] > DYNAMIC[:-1]), "256 distinct sorted values"
    assert DYNAMIC.max() == 1.0 and 0.0 in DYNAMIC
    positive = DYNAMIC[(DYNAMIC > 0) & (DYNAMIC < 1)]
    assert torch.equal(torch.sort(-positive).values, DYNAMIC[DYNAMIC < 0]), "symmetric apart from 1.0"
    assert_close(positive.min(), torch.tensor(0.55e-6), rtol=1e-5, msg="smallest step: 1e-6 * (0.1+1)/2")


def test_packing_layout_high_nibble_first():
    packed = pack_nibbles(torch.tensor([1, 2, 3]))
    assert packed.tolist() == [0x12, 0x30]
    assert pack_nibbles(torch.tensor([1, 2, 3]), pad_code=7).tolist() == [0x12, 0x37]
    assert Linear4bit(torch.tensor([[0.5, 1.0, -1.0]])).qweight[-1] & 0xF == 7, "NF4 pads with the code of 0"
    assert unpack_nibbles(packed, 3).tolist() == [1, 2, 3]


# -- an independent reference: loops, argmin, explicit bit packing ------------------------------------
def _ref_nearest(v: float, code: torch.Tensor) -> int:
    dist = (torch.tensor(v, dtype=torch.float32) - code).abs()
    ties = (dist == dist.min()).nonzero().flatten().tolist()
    if len(ties) > 1:  # only FP4's +0 / -0: bitsandbytes gives positive values the -0 code (8)
        return 8 if v > 0 else 0
    return ties[0]


def _ref_blockwise(values: list[float], code: torch.Tensor, block: int):
    """bnb's reference as published: x * (1/absmax) for full blocks, x / absmax for the tail, nearest code."""
    codes, scales = [], []
    for start in range(0, len(values), block):
        chunk = torch.tensor(values[start:start + block], dtype=torch.float32)
        absmax = torch.tensor(max(chunk.abs().max().item(), 1e-38), dtype=torch.float32)
        scales.append(absmax.item())
        scaled = chunk * (1.0 / absmax) if len(chunk) == block else chunk / absmax
        codes += [_ref_nearest(v, code) for v in scaled.clamp(-1, 1).tolist()]
    return codes, torch.tensor(scales, dtype=torch.float32)


def _ref_quantize(w: torch.Tensor, codebook: torch.Tensor, double_quant: bool):
    codes, absmax = _ref_blockwise(w.flatten().tolist(), codebook, 64)
    codes += [_ref_nearest(0.0, codebook)] * (len(codes) % 2)  # odd tail: the code of 0.0
    packed = [(codes[i] << 4) | codes[i + 1] for i in range(0, len(codes), 2)]
    out = {"qweight": torch.tensor(packed, dtype=torch.uint8)}
    if double_quant:
        offset = absmax.mean()
        q, absmax2 = _ref_blockwise((absmax - offset).tolist(), DYNAMIC, 256)
        out.update(absmax_q=torch.tensor(q, dtype=torch.uint8), absmax2=absmax2, absmax_offset=offset.reshape(1))
    else:
        out["absmax"] = absmax
    return out


@pytest.mark.parametrize("quant_type,double_quant,shape", [("nf4", True, (150, 130)), ("fp4", True, (151, 131)),
                                                            ("nf4", False, (7, 45)), ("fp4", False, (33, 64))])
def test_matches_reference_implementation(quant_type, double_quant, shape):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(0)) * 0.02
    w[0, :5] = 0.0  # exact zeros round to the zero code
    layer = Linear4bit(w, quant_type=quant_type, double_quant=double_quant)
    ref = _ref_quantize(w, NF4 if quant_type == "nf4" else FP4, double_quant)
    buffers = dict(layer.named_buffers())
    assert set(buffers) == set(ref)
    for name, expected in ref.items():
        assert torch.equal(buffers[name], expected), f"{name} differs from the reference"


def _max_half_gap(code: torch.Tensor) -> float:
    v = torch.unique(code)
    return ((v[1:] - v[:-1]) / 2).max().item()


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_round_trip_error_bound(quant_type):
    w = torch.randn(40, 96, generator=torch.Generator().manual_seed(1))
    plain = Linear4bit(w, quant_type=quant_type, double_quant=False)
    absmax = plain.absmax.repeat_interleave(64)[: w.numel()].view_as(w)
    bound = absmax * _max_half_gap(plain_code := (NF4 if quant_type == "nf4" else FP4))
    assert torch.all((plain.dequantize() - w).abs() <= bound + 1e-7), "error within half a code gap"
    dq = Linear4bit(w, quant_type=quant_type, double_quant=True)
    scale_err = (dq.block_absmax() - plain.absmax).abs()
    assert torch.all(scale_err <= dq.absmax2.repeat_interleave(256)[: scale_err.numel()] * _max_half_gap(DYNAMIC)
                     + 1e-7), "double-quantised scales within half a dynamic-map gap"
    assert torch.all((dq.dequantize() - w).abs() <= bound + scale_err.repeat_interleave(64)[: w.numel()].view_as(w)
                     * plain_code.abs().max() + 1e-6)


def test_nf4_beats_fp4_on_normal_weights():
    w = torch.randn(256, 256, generator=torch.Generator().manual_seed(2))
    err = {t: (Linear4bit(w, quant_type=t).dequantize() - w).pow(2).mean().item() for t in ("nf4", "fp4")}
    assert err["nf4"] < err["fp4"], err  # QLoRA Table 2: NF4 is the better 4-bit type for normal weights


def test_bytes_per_parameter():
    w = torch.randn(1408, 512)
    dq, plain = Linear4bit(w), Linear4bit(w, double_quant=False)
    assert dq.storage_bytes() / w.numel() <= 0.52
    assert plain.storage_bytes() / w.numel() == pytest.approx(0.5 + 4 / 64)


def test_forward_is_dense_matmul_of_dequantised_weight():
    base = nn.Linear(20, 9)
    q = Linear4bit.from_linear(base)
    x = torch.randn(3, 20)
    assert torch.equal(q(x), torch.nn.functional.linear(x, q.dequantize(), base.bias))
    assert isinstance(q, nn.Linear) and lorakit.adapters.spec_for(q).kind == "linear"


def test_hf_conv1d_is_quantised_transposed():
    from transformers.pytorch_utils import Conv1D

    conv = Conv1D(12, 8)  # weight (in=8, out=12)
    q = Linear4bit.from_linear(conv)
    assert torch.equal(q.dequantize(), Linear4bit(conv.weight.detach().t()).dequantize())
    x = torch.randn(2, 8)
    assert_close(q(x), conv(x), atol=0.2, msg="4-bit Conv1D approximates the original")


@pytest.mark.parametrize("variant", ["lora", "dora"])
def test_merge_writes_dense_and_unmerge_restores_packed(variant):
    model = lorakit.inject(build("mlp"), lorakit.LoraConfig(target_modules=["lin0"], quantize="nf4",
                                                            variant=variant))
    randomize(model)
    x = example_input("mlp")
    packed = model.lin0.base_layer.qweight.clone()
    expected = run(model, "mlp", x)
    lorakit.merge(model)
    assert type(model.lin0.base_layer) is nn.Linear
    assert_close(run(model, "mlp", x), expected, atol=1e-5, msg="merged")
    lorakit.unmerge(model)
    assert isinstance(model.lin0.base_layer, Linear4bit) and torch.equal(model.lin0.base_layer.qweight, packed)
    plain = lorakit.merge_and_unload(model)
    assert not any(isinstance(m, Linear4bit) for m in plain.modules()), "merged QLoRA model is dense"
    assert_close(run(plain, "mlp", x), expected, atol=1e-5, msg="merge_and_unload")


def test_head_and_modules_to_save_stay_dense():
    model = lorakit.inject(build("llama"), lorakit.LoraConfig(target_modules=["q_proj"], quantize="nf4"))
    assert type(model.lm_head) is nn.Linear
    assert isinstance(model.model.layers[0].mlp.down_proj, Linear4bit), "non-target linears are quantised too"
    mlp = lorakit.inject(build("mlp"), lorakit.LoraConfig(target_modules=["lin0"], quantize="fp4",
                                                          modules_to_save=["head"]))
    assert type(mlp.head.original_module) is nn.Linear


def test_dequantize_model():
    model = build("mlp")
    lorakit.quant.quantize_model(model)
    dense = dequantize_model(copy.deepcopy(model))
    x = example_input("mlp")
    assert all(type(m) is nn.Linear for m in (dense.lin0, dense.lin1, dense.head))
    assert torch.equal(dense(x), model(x))


def test_saved_qlora_adapter_requantises_an_fp_base(tmp_path):
    base = build("mlp")
    model = lorakit.inject(copy.deepcopy(base), lorakit.LoraConfig(target_modules=["lin0"], quantize="fp4",
                                                                    double_quant=False))
    randomize(model)
    lorakit.save_adapter(model, tmp_path)
    loaded = lorakit.load_adapter(copy.deepcopy(base), tmp_path)
    assert loaded.lorakit_configs["default"].quantize == "fp4"
    x = example_input("mlp")
    assert torch.equal(run(loaded, "mlp", x), run(model, "mlp", x))


def test_config_errors_name_the_field():
    with pytest.raises(lorakit.ConfigError) as err:
        lorakit.LoraConfig(quantize="int3", compute_dtype="float8", double_quant="yes")
    msg = str(err.value)
    assert "quantize='int3': expected one of ['none', 'nf4', 'fp4']" in msg
    assert "compute_dtype='float8'" in msg and "double_quant='yes'" in msg


@pytest.mark.parametrize("init", ["pissa", "olora"])
@pytest.mark.parametrize("variant", ["lora", "dora"])
def test_principal_init_on_4bit_base_quantises_the_residual(init, variant):
    """QPiSSA (Meng et al. 2024): factor the full-precision W, then quantise only W − s·BA."""
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(64, 6, generator=g), torch.randn(6, 48, generator=g)
    w = u @ v + 0.05 * torch.randn(64, 48, generator=g)  # strong principal part + small rest
    dense = nn.Sequential()
    dense.add_module("lin", nn.Linear(48, 64, bias=False))
    with torch.no_grad():
        dense.lin.weight.copy_(w)
    model = lorakit.inject(copy.deepcopy(dense), lorakit.LoraConfig(target_modules=["lin"], r=8, alpha=8,
                                                                    init=init, quantize="nf4", variant=variant))
    layer = model.lin
    assert isinstance(layer.base_layer, Linear4bit)
    adapter = layer.adapters["default"]
    residual_q = layer.base_layer.dequantize()
    effective = layer.merged_weight()  # what the fresh layer computes with
    assert_close(effective, residual_q + adapter.delta_weight().detach(), atol=1e-5, msg="W_res,q + s·BA")
    qlora_error = (Linear4bit(w).dequantize() - w).norm()
    assert (effective - w).norm() < 0.5 * qlora_error, "principal part kept exactly, only the rest quantised"


def test_principal_init_on_an_already_quantised_model_requantises_the_residual():
    model = build("mlp")
    lorakit.quant.quantize_model(model, "fp4", double_quant=False)
    before = model.lin0.dequantize()
    lorakit.inject(model, lorakit.LoraConfig(target_modules=["lin0"], r=4, init="pissa"))
    base = model.lin0.base_layer
    assert isinstance(base, Linear4bit) and (base.quant_type, base.double_quant) == ("fp4", False)
    adapter = model.lin0.adapters["default"]
    assert_close(base.dequantize() + adapter.delta_weight().detach(), before, atol=0.05,
                 msg="PiSSA of dequant(W), residual re-quantised")
    assert not torch.allclose(base.dequantize(), before), "the base now holds the residual"


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_bit_identical_to_bitsandbytes_reference(quant_type):
    """Optional peer check: bitsandbytes' own quantiser (its PyTorch reference kernels, CPU)."""
    bnb_f = pytest.importorskip("bitsandbytes.functional")
    w = torch.randn(151, 131, generator=torch.Generator().manual_seed(4)) * 0.02
    packed, state = bnb_f.quantize_4bit(w, blocksize=64, quant_type=quant_type, compress_statistics=False)
    ours = Linear4bit(w, quant_type=quant_type, double_quant=False)
    assert torch.equal(packed.flatten(), ours.qweight) and torch.equal(state.absmax, ours.absmax)
    assert torch.equal(bnb_f.dequantize_4bit(packed, state), ours.dequantize())
    # double quantisation: bnb's CPU build routes the 8-bit step to a C kernel that rounds a few values
    # lying within ~1e-5 of a midpoint the other way, so compare with its PyTorch reference kernel.
    op = torch.ops.bitsandbytes.quantize_blockwise.default
    keys = torch._C.DispatchKeySet(torch._C.DispatchKey.CompositeExplicitAutograd)
    offset = state.absmax.mean()
    q, absmax2 = op.redispatch(keys, state.absmax - offset, bnb_f.create_dynamic_map(signed=True), 256)
    dq = Linear4bit(w, quant_type=quant_type, double_quant=True)
    assert torch.equal(dq.absmax_q, q) and torch.equal(dq.absmax2, absmax2)
    assert torch.equal(dq.absmax_offset, offset.reshape(1)) and torch.equal(DYNAMIC, bnb_f.create_dynamic_map())
