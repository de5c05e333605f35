"""LoRA math against formulas: the fused kernel against autograd, convs and embeddings against dense ΔW."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lorakit.adapters import LoraAdapter, _fused, spec_for
from lorakit.adapters._fused import dense_is_cheaper, lora_linear


@pytest.mark.parametrize("form", ["factored", "dense"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("fifo", [False, True])
@pytest.mark.parametrize("s", [0.7, 1.0])  # 1.0: alpha = r, where the backward skips the scaling pass
def test_fused_linear_matches_autograd(bias, fifo, form, s, monkeypatch):
    monkeypatch.setattr(_fused, "THIN_GEMM_COST", 0.0 if form == "factored" else 1e9)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 12, generator=g, requires_grad=True)
    w = torch.randn(12, 7, generator=g) if fifo else torch.randn(7, 12, generator=g)
    w.requires_grad_()
    b = torch.randn(7, generator=g, requires_grad=True) if bias else None
    a = torch.randn(4, 12, generator=g, requires_grad=True)
    bb = torch.randn(7, 4, generator=g, requires_grad=True)
    dy = torch.randn(3, 5, 7, generator=g)

    y = lora_linear(x, w, b, a, bb, s, fifo)
    grads = torch.autograd.grad(y, [t for t in (x, w, b, a, bb) if t is not None], dy)
    wt = w.t() if fifo else w
    ref = F.linear(x, wt, b) + s * (x @ a.t()) @ bb.t()
    ref_grads = torch.autograd.grad(ref, [t for t in (x, w, b, a, bb) if t is not None], dy)
    torch.testing.assert_close(y, ref)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_dense_form_only_where_it_saves_work_and_never_in_half_precision():
    # SD1's first level (64 channels, r=16, 2048 tokens): the dense ΔW form; SD1.5's 320 channels: factored
    assert dense_is_cheaper(2048, 64, 64, 16, torch.float32)
    assert not dense_is_cheaper(8192, 320, 320, 16, torch.float32)
    assert not dense_is_cheaper(2048, 64, 64, 16, torch.bfloat16)
    assert not dense_is_cheaper(2048, 64, 64, 16, torch.float16)


def test_scale_rslora():
    spec = spec_for(nn.Linear(8, 8))
    assert LoraAdapter(spec, r=16, alpha=32).scale == 2.0
    assert LoraAdapter(spec, r=16, alpha=32, use_rslora=True).scale == pytest.approx(32 / math.sqrt(16))


def test_kaiming_init_statistics():
    torch.manual_seed(0)
    ad = LoraAdapter(spec_for(nn.Linear(400, 30)), r=64, alpha=8)
    bound = 1 / math.sqrt(400)  # kaiming_uniform(a=sqrt(5)) -> U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert ad.lora_A.abs().max() <= bound
    assert ad.lora_A.abs().max() > 0.95 * bound
    assert torch.count_nonzero(ad.lora_B) == 0


@pytest.mark.parametrize("conv", [
    nn.Conv2d(4, 6, 3, padding=1),
    nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2),
    nn.Conv2d(4, 6, 3, padding=1, groups=2),
    nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular"),
    nn.Conv1d(4, 6, 5, padding=2, dilation=1),
    nn.Conv3d(2, 4, 3, padding=1),
])
def test_conv_branch_equals_dense_delta(conv):
    """The two-conv adapter branch equals one convolution with the dense ΔW in the base layout."""
    torch.manual_seed(0)
    spec = spec_for(conv)
    ad = LoraAdapter(spec, r=4, alpha=4)
    with torch.no_grad():
        ad.lora_B.normal_()
    x = torch.randn(2, conv.in_channels, *([7] * (conv.weight.ndim - 2)))
    base_out = conv(x)
    out = ad(x, base_out, conv)
    merged = type(conv)(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                        padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                        padding_mode=conv.padding_mode)
    with torch.no_grad():
        merged.weight.copy_(conv.weight + ad.delta_weight())
        merged.bias.copy_(conv.bias)
    torch.testing.assert_close(out, merged(x), atol=1e-5, rtol=1e-5)


def test_grouped_conv_rank_must_divide_groups():
    with pytest.raises(ValueError, match="rank 3 is not divisible by the convolution's groups=2"):
        LoraAdapter(spec_for(nn.Conv2d(4, 4, 3, groups=2)), r=3, alpha=3)


def test_embedding_delta_and_init():
    torch.manual_seed(0)
    emb = nn.Embedding(20, 6)
    ad = LoraAdapter(spec_for(emb), r=3, alpha=6)
    assert torch.count_nonzero(ad.lora_A) == 0 and ad.lora_B.std() > 0.5  # PEFT: A=0, B~N(0,1)
    with torch.no_grad():
        ad.lora_A.normal_()
    ids = torch.randint(0, 20, (4, 5))
    out = ad(ids, emb(ids), emb)
    torch.testing.assert_close(out, F.embedding(ids, emb.weight + ad.delta_weight()))


def test_unsupported_layer_message():
    with pytest.raises(TypeError, match="cannot wrap a LayerNorm: lorakit adapts nn.Linear"):
        spec_for(nn.LayerNorm(4))


def test_no_dropout_copy_when_p0():
    ad = LoraAdapter(spec_for(nn.Linear(4, 4)), r=2, alpha=2, dropout=0.0).train()
    x = torch.randn(3, 4)
    assert ad.drop(x) is x
