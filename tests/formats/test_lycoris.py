"""LyCORIS files written by the lycoris-lora package (LoHa, LoKr, DoRA, Tucker) apply as LyCORIS applies them."""

import copy

import pytest
import torch
from sd_models import sd1_parts, te_out, unet_out

from lorakit import sd
from lorakit.formats.lycoris import delta_weight, dora_delta

lycoris_kohya = pytest.importorskip("lycoris.kohya")

PRESET = """enable_conv = true
unet_target_module = ["Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D"]
unet_target_name = []
text_encoder_target_module = ["CLIPAttention", "CLIPMLP"]
text_encoder_target_name = []
"""
CASES = {
    "loha": dict(algo="loha"),
    "loha_tucker": dict(algo="loha", use_tucker=True),
    "lokr": dict(algo="lokr", factor=4),
    "lora_dora": dict(algo="lora", dora_wd=True),
    "locon_tucker": dict(algo="lora", use_tucker=True),
}


@pytest.fixture(scope="module")
def parts():
    return sd1_parts()


def _lycoris_file(parts, tmp_path, kwargs):
    """Apply a LyCORIS network to copies of the parts, randomise it, save it; return (path, live parts)."""
    preset = tmp_path / "preset.toml"
    preset.write_text(PRESET)
    live = {k: copy.deepcopy(v) for k, v in parts.items()}
    torch.manual_seed(0)
    net = lycoris_kohya.create_network(1.0, 4, 2.0, None, live["text_encoder"], live["unet"], conv_dim=4,
                                       conv_alpha=2.0, preset=str(preset), **kwargs)
    net.apply_to(live["text_encoder"], live["unet"], True, True)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.2)  # LyCORIS starts as a no-op; make every factor count
    path = tmp_path / "lyco.safetensors"
    net.save_weights(str(path), torch.float32, {})
    return path, live


@pytest.mark.parametrize("case", CASES)
def test_lycoris_files_match_lycoris(case, parts, tmp_path):
    path, live = _lycoris_file(parts, tmp_path, CASES[case])
    base = unet_out(parts["unet"])
    want_u, want_t = unet_out(live["unet"]), te_out(live["text_encoder"])
    assert (want_u - base).abs().max() > 1e-2
    for mode in ("adapter", "merge"):
        ours = {k: copy.deepcopy(v) for k, v in parts.items()}
        sd.load_lora(ours, path, mode=mode)
        torch.testing.assert_close(unet_out(ours["unet"]), want_u, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(te_out(ours["text_encoder"]), want_t, rtol=1e-4, atol=1e-5)


def test_dora_formula_and_legacy_layout():
    g = torch.Generator().manual_seed(0)
    w, d = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g) * 0.1
    m_row = torch.rand(6, generator=g) + 0.5
    merged = w + d
    want = m_row[:, None] * merged / merged.norm(dim=1, keepdim=True)
    torch.testing.assert_close(dora_delta(w, d, m_row[:, None]), want - w, rtol=1e-5, atol=1e-6)
    m_col = torch.rand(1, 4, generator=g) + 0.5  # old LyCORIS layout: one magnitude per input column
    want = m_col * merged / merged.norm(dim=0, keepdim=True)
    torch.testing.assert_close(dora_delta(w, d, m_col), want - w, rtol=1e-5, atol=1e-6)


def test_lokr_full_factors_use_scale_one():
    w1, w2 = torch.randn(2, 3), torch.randn(4, 5)
    module = {"lokr_w1": w1, "lokr_w2": w2, "alpha": torch.tensor(7.0)}
    torch.testing.assert_close(delta_weight(module, torch.zeros(8, 15)), torch.kron(w1, w2))
