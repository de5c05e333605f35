"""Merging a LoRA file into a 4-bit (lorakit.quant) base: the weight must change (regression: it did not).

``Linear4bit.weight`` is a freshly dequantised tensor, so writing W + ΔW into it changed nothing and the
merged model was the base model; a merge now replaces such layers by dense ones holding dequant(W) + ΔW.
"""

import copy

import torch
from sd_models import random_lora, sd1_parts, unet_out

from lorakit.quant import quantize_model
from lorakit.sd import load_lora


def test_merge_into_a_4bit_unet_equals_the_live_adapters():
    parts = sd1_parts()
    lf = random_lora({"unet": parts["unet"]}, seed=3)
    quantize_model(parts["unet"], "nf4")
    base = unet_out(parts["unet"])
    live, merged = copy.deepcopy(parts), copy.deepcopy(parts)
    load_lora(live, lf)
    load_lora(merged, lf, mode="merge")
    expected = unet_out(live["unet"])
    assert (expected - base).norm() / base.norm() > 1e-2
    torch.testing.assert_close(unet_out(merged["unet"]), expected, rtol=1e-5, atol=1e-5)
