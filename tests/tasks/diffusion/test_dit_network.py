"""The FLUX.1 / SD3 network: kohya's module set (one LoRA per Linear of the original fused layout),
block selection, CLIP-only text-encoder LoRAs unless T5 is asked for, QLoRA of the transformer (a
4-bit base trains exactly like LoRA on its dequantised weights), and the text conditioning (T5's
padding mask, SD3 without T5) against diffusers' pipelines."""

import copy

import pytest
import torch
from dit_tiny import components, pipe

from lorakit.model import lora_layers
from lorakit.tasks.diffusion.config import NetworkArgs, SDTrainArgs
from lorakit.tasks.diffusion.dit import DIT_FAMILIES, encode_prompts
from lorakit.tasks.diffusion.dit_network import add_dit_network
from lorakit.tasks.diffusion.dit_step import DitNetwork

# Linear layers kohya adapts per block of the original checkpoints (networks/lora_flux.py, lora_sd3.py)
FLUX_DOUBLE = {"img_mod.lin", "img_attn.qkv", "img_attn.proj", "img_mlp.0", "img_mlp.2",
               "txt_mod.lin", "txt_attn.qkv", "txt_attn.proj", "txt_mlp.0", "txt_mlp.2"}
FLUX_SINGLE = {"linear1", "linear2", "modulation.lin"}
SD3_X = {"attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "adaLN_modulation.1"}


def _network(family, **net):
    comps = components(family)
    fam = DIT_FAMILIES[family]
    lrs = {"transformer": 1.0, **{p: 1.0 for p in fam.text_parts(net.get("train_t5xxl", False))}}
    return comps, add_dit_network(comps, fam, NetworkArgs(dim=4, alpha=4, **net), lrs)


def _distinct_downs(model, prefix):
    return {id(layer.adapters["default"].lora_A) for p, layer in lora_layers(model) if p.startswith(prefix)}


def test_flux_targets_are_kohyas_one_lora_per_original_linear():
    comps, adapted = _network("flux1")
    tr = comps["transformer"]
    assert len(_distinct_downs(tr, "transformer_blocks.0.")) == len(FLUX_DOUBLE)
    assert len(_distinct_downs(tr, "single_transformer_blocks.0.")) == len(FLUX_SINGLE)
    assert not any(n.startswith(("x_embedder", "context_embedder", "time_text_embed", "norm_out", "proj_out"))
                   for n in adapted["transformer"])  # kohya leaves the embedders and the final layer alone
    te = adapted["text_encoder"]
    assert "text_encoder_2" not in adapted and any(n.endswith("mlp.fc2") for n in te)  # CLIP yes, T5 only if asked
    _, with_t5 = _network("flux1", train_t5xxl=True)
    assert any(n.endswith("DenseReluDense.wo") for n in with_t5["text_encoder_2"])


def test_sd3_targets_include_both_streams_and_the_second_attention():
    comps, adapted = _network("sd3")
    tr = comps["transformer"]
    first = len(_distinct_downs(tr, "transformer_blocks.0."))  # x (+ SD3.5's attn2) and context streams
    assert first == 2 * len(SD3_X) + 2
    last = len(_distinct_downs(tr, f"transformer_blocks.{len(tr.transformer_blocks) - 1}."))
    assert last == len(SD3_X) + 2  # the last context block is pre-only: its qkv and modulation
    assert set(adapted) == {"transformer", "text_encoder", "text_encoder_2"}


@pytest.mark.parametrize(("net", "double", "single"), [
    ({"train_blocks": "single"}, 0, 2), ({"train_blocks": "double"}, 1, 0),
    ({"train_single_block_indices": "1"}, 1, 1), ({"train_double_block_indices": "none"}, 0, 2)])
def test_block_selection(net, double, single):
    comps = components("flux1")
    comps["transformer"] = type(comps["transformer"]).from_config({**comps["transformer"].config,
                                                                   "num_single_layers": 2})
    fam = DIT_FAMILIES["flux1"]
    adapted = add_dit_network(comps, fam, NetworkArgs(dim=4, alpha=4, **net), {"transformer": 1.0})["transformer"]
    blocks = {n.split(".")[0] + "." + n.split(".")[1] for n in adapted}
    assert len([b for b in blocks if b.startswith("transformer_blocks")]) == double
    assert len([b for b in blocks if b.startswith("single_transformer_blocks")]) == single


def test_qlora_trains_like_lora_on_the_dequantised_weights():
    """network.quantize: nf4 keeps the frozen transformer in 4 bits; the same step on a dense copy of
    dequant(W) gives the same loss and adapter gradients."""
    from lorakit.quant import Linear4bit, dequantize_model

    fam = DIT_FAMILIES["flux1"]
    comps, _ = _network("flux1", quantize="nf4", train_unet_only=True)
    assert sum(isinstance(m, Linear4bit) for m in comps["transformer"].modules()) > 20
    dense = {**comps, "transformer": dequantize_model(copy.deepcopy(comps["transformer"]))}
    assert not any(isinstance(m, Linear4bit) for m in dense["transformer"].modules())
    g = torch.Generator().manual_seed(0)
    for _, layer in lora_layers(comps["transformer"]):
        with torch.no_grad():
            layer.adapters["default"].lora_B.normal_(0, 0.1, generator=g)
    dense["transformer"].load_state_dict(comps["transformer"].state_dict(), strict=False)
    args = SDTrainArgs(t5xxl_max_token_length=8)
    batch = {"latents": torch.randn(2, 16, 4, 4, generator=g), "captions": ["a red cat", "sks dog"]}
    noise, sigma = torch.randn(2, 16, 4, 4, generator=g), torch.tensor([0.2, 0.7])
    losses, grads = [], []
    for parts in (comps, dense):
        net = DitNetwork(fam, parts, args, "raw", 8)
        lat, cond = net.condition(batch)
        loss = net.weigh(*net.predict(lat, cond, noise, sigma), sigma, None).mean()
        loss.backward()
        losses.append(loss)
        grads.append({p: layer.adapters["default"].lora_B.grad for p, layer in lora_layers(parts["transformer"])})
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    for p in grads[0]:
        torch.testing.assert_close(grads[0][p], grads[1][p], rtol=1e-4, atol=1e-6)


def test_t5_mask_ignores_the_padding_in_t5_and_in_the_transformer():
    """With apply_t5_attn_mask, a caption padded to 16 tokens conditions the transformer exactly as the
    same caption encoded without padding (FLUX.1's text tokens all sit at position 0)."""
    comps = components("flux1")
    fam = DIT_FAMILIES["flux1"]
    add_dit_network(comps, fam, NetworkArgs(), {"transformer": 0.0})
    caption = ["a red sks ring"]
    n = len(comps["tokenizer_2"](caption).input_ids[0])
    g = torch.Generator().manual_seed(0)
    latents, noise, sigma = torch.randn(1, 16, 4, 4, generator=g), torch.randn(1, 16, 4, 4, generator=g), torch.tensor([0.5])
    out = {}
    for tokens, mask in ((16, True), (n, False), (16, False)):
        net = DitNetwork(fam, comps, SDTrainArgs(apply_t5_attn_mask=mask), "raw", tokens)
        with torch.no_grad():
            lat, cond = net.condition({"latents": latents, "captions": caption})
            out[(tokens, mask)] = net.predict(lat, cond, noise, sigma)[0]
    torch.testing.assert_close(out[(16, True)], out[(n, False)], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out[(16, False)], out[(n, False)], atol=1e-4)  # unmasked padding changes it


@pytest.mark.parametrize("drop_t5", [False, True])
def test_sd3_text_states_equal_the_pipelines(drop_t5):
    comps = components("sd3", drop_t5=drop_t5)
    p = pipe("sd3")
    if drop_t5:
        p.text_encoder_3 = p.tokenizer_3 = None
    captions = ["a red cat", "sks dog, photo"]
    with torch.no_grad():
        want, _, pooled, _ = p.encode_prompt(captions, None, None, do_classifier_free_guidance=False,
                                             max_sequence_length=10)
        cond = encode_prompts(DIT_FAMILIES["sd3"], comps, captions, t5_tokens=10, t5_mask=False, t5_width=32)
    from lorakit.tasks.diffusion.dit import sd3_context

    torch.testing.assert_close(sd3_context(cond), want)
    torch.testing.assert_close(cond["pooled"], pooled)
    assert want.shape[1] == 77 + 10 and bool((want[:, 77:] == 0).all()) == drop_t5


@pytest.mark.parametrize("family", ["flux1", "sd3"])
@pytest.mark.parametrize("unet_only", [False, True])
def test_only_adapters_train_in_every_part(family, unet_only):
    """``from_pretrained`` leaves every weight trainable: the VAE and each text encoder not trained must be
    frozen too, or their gradients pile up and count in the clipping norm (issue 19.1)."""
    comps, adapted = _network(family, train_unet_only=unet_only)
    assert isinstance(comps["vae"], torch.nn.Module)
    for name, part in comps.items():
        if not isinstance(part, torch.nn.Module):
            continue
        trainable = {n for n, p in part.named_parameters() if p.requires_grad}
        assert all(".adapters." in n for n in trainable), (name, sorted(trainable)[:5])
        assert bool(trainable) == (name in adapted), name
    assert unet_only == (set(adapted) == {"transformer"})
