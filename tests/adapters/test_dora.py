"""DoRA: the factorised row norm against the dense formula, the fused kernel against autograd,
strengths, merge/unmerge exactness and parity with PEFT's DoRA in both directions."""

import copy

import pytest
import torch
from contract import assert_close, randomize
from models import build, example_input, run
from torch import nn

import lorakit
from lorakit.adapters import BaseSpec, DoraAdapter, spec_for
from lorakit.adapters._fused_dora import dora_linear


def _dense_norm(adapter: DoraAdapter, weight: torch.Tensor) -> torch.Tensor:
    """‖W + ΔW‖ per output feature, straight from the definition (ΔW formed densely)."""
    v = (weight + adapter.delta_weight()).detach().double()
    if adapter.spec.kind == "embedding" or adapter.spec.fan_in_fan_out:
        v = v.t()
    return v.reshape(v.shape[0], -1).norm(dim=1)


LAYERS = {
    "linear": lambda: nn.Linear(13, 7),
    "conv-grouped": lambda: nn.Conv2d(6, 8, 3, padding=1, groups=2),
    "conv1d": lambda: nn.Conv1d(3, 5, 3),
    "embedding": lambda: nn.Embedding(11, 6),
}


@pytest.mark.parametrize("layer", list(LAYERS))
def test_factorised_norm_matches_dense(layer):
    torch.manual_seed(0)
    base = LAYERS[layer]()
    adapter = DoraAdapter(spec_for(base), r=4, alpha=8, base=base)
    with torch.no_grad():
        for p in (adapter.lora_A, adapter.lora_B):
            p.normal_()
    assert_close(adapter.weight_norm(base.weight).double(), _dense_norm(adapter, base.weight), atol=1e-5,
                 msg="norm")


def test_conv1d_hf_fan_in_fan_out_norm():
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    base = Conv1D(9, 5)  # weight stored (in=5, out=9)
    adapter = DoraAdapter(spec_for(base), r=3, alpha=3, base=base)
    assert adapter.magnitude.shape == (9,)
    torch.nn.init.normal_(adapter.lora_B)
    assert_close(adapter.weight_norm(base.weight).double(), _dense_norm(adapter, base.weight), atol=1e-5)


def test_norm_cache_follows_base_weight_changes():
    torch.manual_seed(0)
    base = nn.Linear(8, 4)
    adapter = DoraAdapter(spec_for(base), r=2, alpha=2, base=base)
    first = adapter.weight_norm(base.weight)
    with torch.no_grad():
        base.weight.mul_(2)  # in-place: same storage, new version
    assert_close(adapter.weight_norm(base.weight), 2 * first, msg="cache invalidated by in-place change")
    base.weight = nn.Parameter(torch.ones(4, 8))  # new storage
    assert_close(adapter.weight_norm(base.weight), torch.full((4,), 8 ** 0.5), msg="cache invalidated by swap")


def _reference_dora(x, w, b, a, bb, m, s):
    """DoRA linear written from the paper: W' = m ⊙ V/‖V‖ with the norm detached (§4.3)."""
    v = w + s * bb @ a
    n = v.detach().norm(dim=1)
    return x @ (m / n)[:, None].mul(v).t() + (b if b is not None else 0)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("zero_magnitude", [False, True])
@pytest.mark.parametrize("tokens", [(3, 5), (1, 2)])  # more / fewer tokens than inputs: both backward forms
def test_fused_kernel_matches_autograd_reference(bias, zero_magnitude, tokens):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*tokens, 12, generator=g, dtype=torch.float64)
    w, a, bb = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((7, 12), (4, 12), (7, 4)))
    m = torch.rand(7, generator=g, dtype=torch.float64) + 0.5
    if zero_magnitude:
        m[2] = 0.0  # the backward must recompute z for rows whose scale is 0
    b = torch.randn(7, generator=g, dtype=torch.float64) if bias else None
    s = 0.7
    leaves = [t.clone().requires_grad_() for t in (x, a, bb, m)] + ([b.clone().requires_grad_()] if bias else [])
    ref_leaves = [t.detach().clone().requires_grad_() for t in leaves]
    xr, ar, br, mr = ref_leaves[:4]
    ref = _reference_dora(xr, w, ref_leaves[4] if bias else None, ar, br, mr, s)
    norm = (w + s * bb @ a).norm(dim=1)
    out = dora_linear(leaves[0], w, leaves[4] if bias else None, leaves[1], leaves[2], leaves[3], norm, s)
    assert_close(out, ref, atol=1e-10, msg="forward")
    dy = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    ref.backward(dy)
    out.backward(dy)
    for name, p, q in zip(["x", "A", "B", "m", "bias"], leaves, ref_leaves, strict=False):
        assert_close(p.grad, q.grad, atol=1e-9, msg=f"grad {name}")


def test_fused_and_generic_paths_agree():
    torch.manual_seed(0)
    model = lorakit.inject(build("mlp"), lorakit.LoraConfig(target_modules=["lin0", "lin1"], variant="dora"))
    randomize(model)
    x = example_input("mlp")
    fused = model(x)
    fused.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    assert model.lin0.adapters["default"].fused_forward(x, model.lin0.base_layer, 1.0) is not None, \
        "the fused path should apply here"
    for _, layer in lorakit.lora_layers(model):
        layer.adapters["default"].fused_forward = lambda *a: None  # force the generic path
    generic = model(x)
    generic.sum().backward()
    assert_close(fused, generic, atol=1e-5, msg="output")
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert_close(p.grad, grads[n], atol=1e-5, msg=f"grad {n}")


@pytest.mark.parametrize("strength", [0.5, -1.0, 1.0])
def test_strength_interpolates_in_weight_space(strength):
    torch.manual_seed(0)
    model = lorakit.inject(build("mlp"), lorakit.LoraConfig(target_modules=["lin0", "lin1"], variant="dora"))
    randomize(model)
    lorakit.set_active_adapters(model, {"default": strength})
    x = example_input("mlp")
    layer = model.lin0
    adapter = layer.adapters["default"]
    w = layer.weight.detach().clone()
    w_dora = (adapter.magnitude / _dense_norm(adapter, w).float())[:, None] * (w + adapter.delta_weight())
    expected_w = w + strength * (w_dora - w)
    assert_close(layer.merged_weight(), expected_w.detach(), atol=1e-5, msg="merged weight")
    out = model(x)
    lorakit.merge(model)
    assert_close(model(x), out, atol=1e-5, msg="merged output")
    lorakit.unmerge(model)
    assert_close(layer.weight, w, atol=1e-6, msg="unmerge")


def test_unmerge_without_merge_is_refused():
    adapter = DoraAdapter(BaseSpec("linear", 3, 2), r=1, alpha=1, base=nn.Linear(3, 2))
    with pytest.raises(RuntimeError, match="was not merged by lorakit"):
        adapter.unmerge(torch.zeros(2, 3))


def test_init_without_base_is_refused():
    with pytest.raises(ValueError, match="needs the base layer"):
        DoraAdapter(BaseSpec("linear", 3, 2), r=1, alpha=1)


# -- PEFT parity ----------------------------------------------------------------------------------
PEFT_CASES = {
    "mlp": ("mlp", dict(target_modules=["lin0", "lin1"], r=4, alpha=8)),
    "conv": ("conv", dict(target_modules=["conv1d", "conv", "pw"], r=4, alpha=4)),  # PEFT drops dilation/groups
    "emb": ("emb", dict(target_modules=["emb", "lin"], r=4, alpha=8)),
    "llama": ("llama", dict(target_modules=["q_proj", "v_proj", "down_proj"], r=4, alpha=8)),
    "gpt2": ("gpt2", dict(target_modules=["c_attn", "c_proj"], r=4, alpha=8)),
}


@pytest.mark.parametrize("case", list(PEFT_CASES))
def test_lorakit_saved_dora_runs_identically_in_peft(case, tmp_path):
    peft = pytest.importorskip("peft")
    name, cfg = PEFT_CASES[case]
    base = build(name)
    model = lorakit.inject(copy.deepcopy(base), lorakit.LoraConfig(variant="dora", **cfg))
    randomize(model)
    x = example_input(name)
    expected = run(model, name, x)
    lorakit.save_adapter(model, tmp_path)
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval()
    assert theirs.peft_config["default"].use_dora
    assert_close(run(theirs, name, x), expected, atol=1e-5, msg="PEFT output of a lorakit DoRA")
    assert_close(run(theirs.merge_and_unload(), name, x), expected, atol=1e-4, msg="PEFT merged")


@pytest.mark.parametrize("case", list(PEFT_CASES))
def test_peft_saved_dora_runs_identically_in_lorakit(case, tmp_path):
    peft = pytest.importorskip("peft")
    name, cfg = PEFT_CASES[case]
    base = build(name)
    pcfg = peft.LoraConfig(r=cfg["r"], lora_alpha=cfg["alpha"], target_modules=cfg["target_modules"],
                           use_dora=True)
    theirs = peft.get_peft_model(copy.deepcopy(base), pcfg).eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for pname, p in theirs.named_parameters():
            if p.requires_grad:  # lora_A/B and the magnitude
                p.copy_(torch.randn(p.shape, generator=g) * 0.3 + (1.0 if "magnitude" in pname else 0.0))
    x = example_input(name)
    expected = run(theirs, name, x)
    theirs.save_pretrained(tmp_path)
    ours = lorakit.load_adapter(copy.deepcopy(base), tmp_path)
    assert {a.__class__.__name__ for _, layer in lorakit.lora_layers(ours) for a in layer.adapters.values()} == {"DoraAdapter"}
    assert_close(run(ours, name, x), expected, atol=1e-5, msg="lorakit output of a PEFT DoRA")
    lorakit.merge(ours)
    assert_close(run(ours, name, x), expected, atol=1e-4, msg="lorakit merged")


@pytest.mark.parametrize("order", [("lora", "dora"), ("dora", "lora"), ("dora", "dora2")])
def test_stacked_adapters_merge_exactly(order):
    torch.manual_seed(0)
    model = build("mlp")
    for name in order:
        variant = "lora" if name == "lora" else "dora"
        lorakit.inject(model, lorakit.LoraConfig(target_modules=["lin0", "lin1"], variant=variant), name)
    randomize(model)
    lorakit.set_active_adapters(model, {order[0]: 0.7, order[1]: 1.0})
    x = example_input("mlp")
    before = {n: layer.weight.detach().clone() for n, layer in lorakit.lora_layers(model)}
    expected = model(x)
    lorakit.merge(model)
    assert_close(model(x), expected, atol=1e-5, msg="merged stack")
    lorakit.unmerge(model)
    for n, layer in lorakit.lora_layers(model):
        assert_close(layer.weight, before[n], atol=1e-6, msg=f"unmerge {n}")


def test_unmerge_restores_rows_merge_cannot_invert():
    # strength 2 and c = 1/2 make 1 − σ + σc = 0: that row of the merged weight no longer depends on W
    torch.manual_seed(0)
    model = lorakit.inject(build("mlp"), lorakit.LoraConfig(target_modules=["lin0"], variant="dora"))
    randomize(model)
    layer, adapter = model.lin0, model.lin0.adapters["default"]
    with torch.no_grad():
        adapter.magnitude[3] = adapter.weight_norm(layer.weight)[3] / 2
    lorakit.set_active_adapters(model, {"default": 2.0})
    before = layer.weight.detach().clone()
    lorakit.merge(model)
    lorakit.unmerge(model)
    assert torch.isfinite(layer.weight).all()
    assert_close(layer.weight, before, atol=1e-6, msg="unmerge with a singular row")
