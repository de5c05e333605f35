"""extract: the LoRA of tuned − base is its truncated SVD (Eckart–Young), with rank or energy rules."""

import pytest
import torch
from lora_files import delta, tail

from lorakit.tools.extract import extract_lora


def _models(rank_of_change=3, noise=0.0):
    g = torch.Generator().manual_seed(0)
    base = {"unet": {"down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight": torch.randn(16, 12, generator=g),
                     "down_blocks.0.resnets.0.conv1.weight": torch.randn(6, 4, 3, 3, generator=g),
                     "down_blocks.0.resnets.0.norm1.weight": torch.randn(4, generator=g)},
            "text_encoder": {"encoder.layers.0.mlp.fc1.weight": torch.randn(8, 8, generator=g)}}
    tuned = {p: dict(sd) for p, sd in base.items()}
    for sd in tuned.values():
        for k, w in sd.items():
            if w.dim() >= 2:
                flat = w.flatten(1)
                change = torch.randn(flat.shape[0], rank_of_change, generator=g) @ torch.randn(rank_of_change, flat.shape[1], generator=g)
                sd[k] = w + (change + noise * torch.randn(flat.shape, generator=g)).reshape(w.shape)
    return base, tuned


def test_rank_k_extraction_error_is_the_svd_tail():
    base, tuned = _models(rank_of_change=5, noise=0.1)
    lf, skipped = extract_lora(base, tuned, rank=2, conv_rank=2, clamp_quantile_=None)
    assert not skipped and "text_encoder.text_model.encoder.layers.0.mlp.fc1" in lf.modules  # kohya spelling
    assert "unet.down_blocks.0.resnets.0.norm1" not in lf.modules
    for key, m in lf.modules.items():
        part, path = key.split(".", 1)
        name = (path.removeprefix("text_model.") if part != "unet" else path) + ".weight"
        diff = (tuned[part][name] - base[part][name]).flatten(1)
        s = torch.linalg.svdvals(diff)
        err = float((delta(m).flatten(1) - diff).norm())
        assert abs(err - tail(s, 2)) < 1e-3 * float(s[0]), key


def test_exact_low_rank_change_is_recovered():
    base, tuned = _models(rank_of_change=2)
    lf, _ = extract_lora(base, tuned, rank=4, clamp_quantile_=None)
    key = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    diff = tuned["unet"][key[5:] + ".weight"] - base["unet"][key[5:] + ".weight"]
    torch.testing.assert_close(delta(lf.modules[key]), diff, rtol=1e-4, atol=1e-4)
    assert "unet.down_blocks.0.resnets.0.conv1" not in lf.modules  # convs only with conv_rank


def test_energy_threshold_and_min_diff():
    base, tuned = _models(rank_of_change=6, noise=0.05)
    lf, _ = extract_lora(base, tuned, rank=None, energy=0.95, clamp_quantile_=None)
    for key, m in lf.modules.items():
        part, path = key.split(".", 1)
        name = (path.removeprefix("text_model.") if part != "unet" else path) + ".weight"
        diff = (tuned[part][name] - base[part][name]).flatten(1)
        assert float(delta(m).flatten(1).norm() / diff.norm()) >= 0.95 - 1e-4
    same = {p: dict(sd) for p, sd in base.items()}
    lf, skipped = extract_lora(base, same, rank=2)
    assert not lf.modules and len(skipped) == 2


def test_clamp_limits_the_factors_at_the_quantile():
    base, tuned = _models(rank_of_change=3)
    key = "text_encoder.text_model.encoder.layers.0.mlp.fc1"
    free = extract_lora(base, tuned, rank=3, clamp_quantile_=None)[0].modules[key]
    clamped = extract_lora(base, tuned, rank=3, clamp_quantile_=0.9)[0].modules[key]
    both = torch.cat([free["lora_up.weight"].flatten(), free["lora_down.weight"].flatten()]).abs()
    hi = torch.quantile(both, 0.9, interpolation="nearest")
    for name in ("lora_up.weight", "lora_down.weight"):
        torch.testing.assert_close(clamped[name], free[name].clamp(-hi, hi))
    assert float(hi) < float(both.max())  # something was clamped


def test_needs_rank_or_energy():
    base, tuned = _models()
    with pytest.raises(ValueError, match="give a rank or an energy"):
        extract_lora(base, tuned, rank=None)
