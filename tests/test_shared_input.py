"""share_input: layers reading one tensor take their LoRA downs from one GEMM; outputs and gradients equal
the ungrouped layers' (float64), and anything the group cannot serve takes the layer's own path."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import lorakit
import lorakit.adapters._shared_down as sd
from lorakit.shared_input import share_input

NAMES = ["q", "k", "v", "mlp"]


class Block(nn.Module):
    """q, k, v and an MLP input reading one normalised tensor (a DiT single block's shape of use)."""

    def __init__(self, width: int = 64):
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(width, width) for _ in range(3))
        self.mlp = nn.Linear(width, 2 * width)

    def forward(self, x, other=None):
        h = torch.nn.functional.layer_norm(x, x.shape[-1:])
        att = torch.softmax(self.q(h) @ self.k(h).transpose(-1, -2), -1) @ self.v(h if other is None else other)
        return att.sum(-1) + torch.tanh(self.mlp(h)).sum(-1)


def pair(tied: bool = False, variant: str = "lora", seed: int = 0, alpha: float = 2):
    """(plain, grouped) copies of one adapted Block with random non-zero factors, in float64."""
    torch.manual_seed(seed)
    model = lorakit.inject(Block().double(), lorakit.LoraConfig(r=4, alpha=alpha, target_modules=NAMES, variant=variant))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)
    if tied:
        first = model.q.adapters["default"]
        for name in NAMES[1:]:
            model.get_submodule(name).adapters["default"].lora_A = first.lora_A
    grouped = copy.deepcopy(model)
    assert share_input(grouped, [NAMES]) == 1
    return model, grouped


def grads(model, x, other=None):
    x = x.clone().requires_grad_()
    out = model(x, other)
    out.square().sum().backward()
    named = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return out.detach(), x.grad, named


def count_up_calls(monkeypatch) -> list:
    calls = []
    original = sd.LoraUpFunction.forward

    def counted(ctx, *args):
        calls.append(1)
        return original(ctx, *args)

    monkeypatch.setattr(sd.LoraUpFunction, "forward", staticmethod(counted))
    return calls


def assert_same(a, b):
    for want, got in zip(a[:2], b[:2], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert a[2].keys() == b[2].keys()
    for name in a[2]:
        torch.testing.assert_close(b[2][name], a[2][name], rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("tied", [False, True], ids=["own-downs", "tied-down"])
@pytest.mark.parametrize(("alpha", "strength"), [(4, 1.0), (2, 0.7)], ids=["scale-1", "scale-0.35"])
def test_grouped_outputs_and_gradients_equal_the_plain_layers(monkeypatch, tied, alpha, strength):
    plain, grouped = pair(tied, alpha=alpha)
    for m in (plain, grouped):
        lorakit.set_active_adapters(m, {"default": strength})
    x = torch.randn(2, 7, 64, dtype=torch.float64)
    want = grads(plain, x)
    calls = count_up_calls(monkeypatch)
    assert_same(want, grads(grouped, x))
    assert len(calls) == 4  # every member took its down from the group's GEMM
    assert grouped.q.shared._x is None  # all members served: no reference to the input is kept


def test_a_member_reading_another_tensor_takes_its_own_path(monkeypatch):
    plain, grouped = pair()
    x, other = torch.randn(2, 7, 64, dtype=torch.float64), torch.randn(2, 7, 64, dtype=torch.float64)
    want = grads(plain, x, other)
    calls = count_up_calls(monkeypatch)
    assert_same(want, grads(grouped, x, other))
    assert len(calls) == 3  # v reads `other`: q, k and the MLP share, v runs the fused kernel alone


@pytest.mark.parametrize("variant", ["dora", "loha"])
def test_other_variants_are_not_grouped_and_stay_exact(monkeypatch, variant):
    plain, grouped = pair(variant=variant)
    x = torch.randn(2, 7, 64, dtype=torch.float64)
    want = grads(plain, x)
    calls = count_up_calls(monkeypatch)
    assert_same(want, grads(grouped, x))
    assert calls == []


def test_merged_disabled_and_no_grad_forwards_equal_the_plain_layers(monkeypatch):
    plain, grouped = pair()
    x = torch.randn(2, 7, 64, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(grouped(x), plain(x), rtol=1e-10, atol=1e-12)
        grouped.k.merge()
        plain.k.merge()
        calls = count_up_calls(monkeypatch)
        torch.testing.assert_close(grouped(x), plain(x), rtol=1e-10, atol=1e-12)
        assert len(calls) == 3  # the merged k runs its base alone
        with lorakit.disable_adapters(grouped), lorakit.disable_adapters(plain):
            torch.testing.assert_close(grouped(x), plain(x), rtol=1e-10, atol=1e-12)


def test_share_input_refuses_modules_that_are_not_adapted():
    _, grouped = pair()
    grouped.extra = nn.Linear(64, 64)
    with pytest.raises(ValueError, match=r"\['extra'\] are not adapted layers"):
        share_input(grouped, [["q", "extra"]])
