"""merge-loras methods against their formulas, and merging into a base checkpoint."""

import pytest
import torch
from lora_files import SHAPES, delta, lora_file, tail

from lorakit.tools.merge import block_weight, merge_into_base, merge_loras


@pytest.fixture
def files():
    return [lora_file(1), lora_file(2, rank=2, alpha=5.0)]


def _deltas(lf):
    return {k: delta(m) for k, m in lf.modules.items()}


def test_cat_is_the_exact_weighted_sum(files):
    merged = merge_loras(files, [0.7, -1.3], "cat")
    for key in SHAPES:
        want = 0.7 * delta(files[0].modules[key]) - 1.3 * delta(files[1].modules[key])
        torch.testing.assert_close(delta(merged.modules[key]), want, rtol=1e-5, atol=1e-5)
        assert merged.modules[key]["lora_down.weight"].shape[0] == 5


def test_a_single_lora_is_not_squared(files):
    """kohya's merge_lora.py scales up and down by sqrt-ratios and gets ratio²·ΔW for one file; we get ratio·ΔW."""
    merged = merge_loras(files[:1], [0.5], "cat")
    key = "unet.mid_block.attentions.0.proj_in"
    torch.testing.assert_close(delta(merged.modules[key]), 0.5 * delta(files[0].modules[key]))


def test_linear_is_exact_at_the_numerical_rank(files):
    merged = merge_loras(files, [1.0, 0.25], "linear")
    for key in SHAPES:
        want = delta(files[0].modules[key]) + 0.25 * delta(files[1].modules[key])
        torch.testing.assert_close(delta(merged.modules[key]), want, rtol=1e-4, atol=1e-4)
        assert merged.modules[key]["lora_down.weight"].shape[0] <= 5


def test_svd_is_the_best_rank_k_approximation(files):
    merged = merge_loras(files, [1.0, 0.5], "svd", rank=2)
    for key in SHAPES:
        want = delta(files[0].modules[key]) + 0.5 * delta(files[1].modules[key])
        s = torch.linalg.svdvals(want.flatten(1))
        err = float((delta(merged.modules[key]) - want).norm())
        assert abs(err - tail(s, 2)) < 1e-4 * max(1.0, float(s[0]))


def _ties_reference(taus, density):
    """TIES written out entry by entry (Yadav et al. 2023, Alg. 1)."""
    flat = [t.flatten() for t in taus]
    kept = []
    for t in flat:
        k = max(1, round(density * t.numel()))
        order = sorted(range(t.numel()), key=lambda i: -abs(float(t[i])))
        keep = set(order[:k])
        kept.append([float(t[i]) if i in keep else 0.0 for i in range(t.numel())])
    out = []
    for i in range(len(kept[0])):
        vals = [v[i] for v in kept]
        sign = 1.0 if sum(vals) > 0 else -1.0 if sum(vals) < 0 else 0.0
        agree = [v for v in vals if v != 0 and (v > 0) == (sign > 0) and sign != 0]
        out.append(sum(agree) / len(agree) if agree else 0.0)
    return torch.tensor(out).reshape(taus[0].shape)


def test_ties_matches_the_algorithm(files):
    merged = merge_loras(files, [1.0, 0.8], "ties", density=0.4, rank=64)
    key = "unet.mid_block.attentions.0.proj_in"
    taus = [delta(files[0].modules[key]), 0.8 * delta(files[1].modules[key])]
    torch.testing.assert_close(delta(merged.modules[key]), _ties_reference(taus, 0.4), rtol=1e-4, atol=1e-4)


def test_dare_drops_and_rescales(files):
    key = "unet.mid_block.attentions.0.proj_in"
    full = merge_loras(files, [1.0, 0.5], "dare", density=1.0, rank=64)  # nothing dropped: the plain sum
    want = delta(files[0].modules[key]) + 0.5 * delta(files[1].modules[key])
    torch.testing.assert_close(delta(full.modules[key]), want, rtol=1e-4, atol=1e-4)
    gen = torch.Generator().manual_seed(7)
    taus = {k: [delta(f.modules[k]) * w for f, w in zip(files, [1.0, 0.5], strict=True)] for k in SHAPES}
    ref = {}
    for k in SHAPES:  # same draws as the implementation: one mask per LoRA, modules in file order
        ref[k] = sum(t.flatten(1) * (torch.rand(t.flatten(1).shape, generator=gen) < 0.3) / 0.3 for t in taus[k])
    merged = merge_loras(files, [1.0, 0.5], "dare", density=0.3, seed=7, rank=64)
    for k in SHAPES:
        torch.testing.assert_close(delta(merged.modules[k]).flatten(1), ref[k], rtol=1e-4, atol=1e-4)


def test_bad_requests_are_explained(files):
    with pytest.raises(ValueError, match="needs a target rank"):
        merge_loras(files, method="svd")
    with pytest.raises(ValueError, match="2 weights for 1 LoRAs"):
        merge_loras(files[:1], [1, 2])
    other = lora_file(3, shapes={"unet.mid_block.attentions.0.proj_in": (12, 11)})
    with pytest.raises(ValueError, match="different base models"):
        merge_loras([files[0], other])


def test_mixed_families_name_each_file(files):
    """Before: "different model families (['sd1', 'sdxl'])" without saying which file is which."""
    xl = lora_file(4)
    xl.metadata["ss_base_model_version"] = "sdxl_base_v1-0"
    files[0].path, xl.path = "heart.safetensors", "xl/style.safetensors"
    for call in (lambda: merge_loras([files[0], xl]), lambda: merge_into_base({}, [files[0], xl])):
        with pytest.raises(ValueError, match=r"heart.safetensors is SD1, xl/style.safetensors is SDXL"):
            call()


def test_merge_into_base_with_strengths_and_block_weights(files):
    g = torch.Generator().manual_seed(0)
    state = {"unet": {"mid_block.attentions.0.proj_in.weight": torch.randn(12, 10, generator=g), "conv_in.weight": torch.randn(6, 4, 3, 3, generator=g),
                      "conv_in.bias": torch.randn(6, generator=g)},
             "text_encoder": {"text_model.encoder.layers.0.mlp.fc1.weight": torch.randn(8, 8, generator=g)}}
    original = {p: {k: v.clone() for k, v in sd.items()} for p, sd in state.items()}
    out = merge_into_base(state, files, [0.5, 2.0], {"unet.conv_in": 0.0, "text_encoder": 0.25})
    for part in state:  # inputs untouched
        for k in state[part]:
            assert torch.equal(state[part][k], original[part][k])
    want = original["unet"]["mid_block.attentions.0.proj_in.weight"] + 0.5 * delta(files[0].modules["unet.mid_block.attentions.0.proj_in"]) \
        + 2.0 * delta(files[1].modules["unet.mid_block.attentions.0.proj_in"])
    torch.testing.assert_close(out["unet"]["mid_block.attentions.0.proj_in.weight"], want, rtol=1e-5, atol=1e-5)
    assert torch.equal(out["unet"]["conv_in.weight"], original["unet"]["conv_in.weight"])  # block weight 0
    key = "text_encoder.text_model.encoder.layers.0.mlp.fc1"
    want = original["text_encoder"]["text_model.encoder.layers.0.mlp.fc1.weight"] + 0.25 * (
        0.5 * delta(files[0].modules[key]) + 2.0 * delta(files[1].modules[key]))
    torch.testing.assert_close(out["text_encoder"]["text_model.encoder.layers.0.mlp.fc1.weight"], want, rtol=1e-5, atol=1e-5)
    assert block_weight("unet.conv_in", {"unet": 2.0, "unet.conv_in": 3.0}) == 3.0
    with pytest.raises(ValueError, match="no weight mid_block.attentions.0.proj_in.weight in the checkpoint's unet"):
        merge_into_base({"unet": {}, "text_encoder": state["text_encoder"]}, files)
