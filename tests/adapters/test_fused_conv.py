"""The fused LoRA convolution (``adapters/_fused_conv.py``) against the generic two-conv path and PEFT:
the same outputs and the same gradients for x, A, B and the base weight/bias."""

import copy

import pytest
import torch
from torch import nn

import lorakit
from lorakit.adapters import LoraAdapter, _fused, spec_for
from lorakit.layer import LoraLayer

CONVS = {
    "1x1": lambda: nn.Conv2d(8, 6, 1),
    "1x1-nobias": lambda: nn.Conv2d(8, 6, 1, bias=False),
    "1x1-groups": lambda: nn.Conv2d(8, 6, 1, groups=2),
    "3x3": lambda: nn.Conv2d(8, 6, 3, padding=1),
    "3x3-stride-dilation-groups": lambda: nn.Conv2d(8, 6, 3, stride=2, padding=2, dilation=2, groups=2, bias=False),
    "1d": lambda: nn.Conv1d(4, 6, 5, padding=2),
    "3d-1x1": lambda: nn.Conv3d(4, 6, 1),
}


def _layer(conv: nn.Conv2d, seed: int = 0) -> LoraLayer:
    torch.manual_seed(seed)
    layer = LoraLayer(conv)
    layer.adapters["a"] = LoraAdapter(layer.spec, r=4, alpha=8)
    with torch.no_grad():
        layer.adapters["a"].lora_B.normal_()  # B = 0 at init would hide B's contribution
    return layer


def _grads(out, tensors, dy):
    return torch.autograd.grad(out, tensors, dy)


@pytest.fixture(params=["factored", "dense"])
def form(request, monkeypatch):
    """Force the kernels' factored or dense form (``_fused.dense_is_cheaper`` picks one per call)."""
    monkeypatch.setattr(_fused, "THIN_GEMM_COST", 0.0 if request.param == "factored" else 1e9)
    return request.param


@pytest.mark.parametrize("strength", [1.0, 0.6])
@pytest.mark.parametrize("name", list(CONVS))
def test_fused_conv_matches_generic_path(name, strength, form):
    """In float64, so that only a wrong formula (not summation order) can exceed the tolerance."""
    conv = CONVS[name]().double()
    conv.requires_grad_(True)  # also checks dW and db of an unfrozen base
    layer = _layer(conv).double()
    layer.active["a"] = strength
    ad = layer.adapters["a"]
    x = torch.randn(2, conv.in_channels, *([9] * (conv.weight.ndim - 2)), dtype=torch.float64, requires_grad=True)
    assert ad.fused_forward(x, conv, strength) is not None  # the fused kernel runs here
    fused = layer(x)
    generic = ad(x, conv(x), conv, strength)
    params = [x, ad.lora_A, ad.lora_B, *conv.parameters()]
    dy = torch.randn_like(generic)
    torch.testing.assert_close(fused, generic, atol=1e-10, rtol=1e-10)
    for got, want in zip(_grads(fused, params, dy), _grads(generic, params, dy), strict=True):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("kernel", [1, 3])
def test_fused_conv_step_equals_peft(kernel, form):
    """Loss and LoRA gradients of a conv stack equal PEFT's LoRA Conv2d with the same factors."""
    import peft

    torch.manual_seed(0)
    base = nn.Sequential(nn.Conv2d(8, 16, kernel, padding=kernel // 2), nn.SiLU(), nn.Conv2d(16, 8, kernel,
                                                                                              padding=kernel // 2))
    pm = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["0", "2"]))
    lk = lorakit.inject(copy.deepcopy(base), lorakit.LoraConfig(r=4, alpha=8, target_modules=["0", "2"]))
    theirs = {n[len("base_model.model."):-len(".default.weight")]: p  # "base_model.model.0.lora_A.default.weight"
              for n, p in pm.named_parameters() if p.requires_grad}
    ours = {f"{path}.{n}": p for path, layer in lorakit.lora_layers(lk)
            for n, p in layer.adapters["default"].named_parameters()}
    assert set(ours) == set(theirs)
    with torch.no_grad():
        for k, p in theirs.items():
            p.normal_(std=0.3)
            ours[k].copy_(p)
    x = torch.randn(2, 8, 10, 10, requires_grad=True)
    losses = [m(x).square().mean() for m in (lk, pm)]
    torch.testing.assert_close(losses[0], losses[1], atol=1e-6, rtol=1e-5)
    keys = sorted(ours)
    g_lk = _grads(losses[0], [x, *(ours[k] for k in keys)], None)
    g_pf = _grads(losses[1], [x, *(theirs[k] for k in keys)], None)
    for got, want in zip(g_lk, g_pf, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_channels_last_input_takes_the_strided_branch(form):
    layer = _layer(nn.Conv2d(8, 6, 1))
    layer.active["a"] = 1.0
    ad = layer.adapters["a"]
    x = torch.randn(2, 8, 5, 5).to(memory_format=torch.channels_last).requires_grad_()
    fused, generic = layer(x), ad(x, layer.base_layer(x), layer.base_layer)
    torch.testing.assert_close(fused, generic, atol=1e-5, rtol=1e-5)
    dy = torch.randn_like(generic)
    params = [x, ad.lora_A, ad.lora_B]
    for got, want in zip(_grads(fused, params, dy), _grads(generic, params, dy), strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_unfusable_convs_take_the_generic_path():
    """Non-zero padding modes, unbatched input, subclasses and live dropout are left to the generic path."""
    class MyConv(nn.Conv2d):
        pass

    circular = nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular")
    sub = MyConv(4, 4, 1)
    ad = LoraAdapter(spec_for(circular), r=2, alpha=2)
    x = torch.randn(1, 4, 6, 6)
    assert ad.fused_forward(x, circular, 1.0) is None
    assert LoraAdapter(spec_for(sub), r=2, alpha=2).fused_forward(x, sub, 1.0) is None
    plain = nn.Conv2d(4, 4, 1)
    assert LoraAdapter(spec_for(plain), r=2, alpha=2).fused_forward(x[0], plain, 1.0) is None
    dropping = LoraAdapter(spec_for(plain), r=2, alpha=2, dropout=0.1).train()
    assert dropping.fused_forward(x, plain, 1.0) is None
