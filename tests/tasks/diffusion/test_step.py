"""One SD training step against diffusers' ``train_text_to_image_lora(_sdxl).py`` recipe: a PEFT-injected
U-Net with the same LoRA weights, the same batch, noise and timesteps gives the same loss and the same
LoRA gradients (epsilon and v-prediction, with and without min-SNR-γ, SD1 and SDXL)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from sd_pipes import components, tiny_tokenizer

from lorakit.model import lora_layers
from lorakit.tasks.diffusion.config import NetworkArgs, SDTrainArgs
from lorakit.tasks.diffusion.family import FAMILIES, chunk_ids, encode_prompts
from lorakit.tasks.diffusion.network import add_network
from lorakit.tasks.diffusion.step import SDNetwork

CAPTIONS = ["sks dog, photo", "a red cat on a mat"]


def reference_loss(comps, unet, tes, batch, noise, timesteps, prediction, snr_gamma):
    """diffusers' recipe, line for line (examples/text_to_image/train_text_to_image_lora*.py)."""
    from diffusers import DDPMScheduler
    from diffusers.training_utils import compute_snr

    sched = DDPMScheduler.from_config(comps["scheduler_config"])
    latents = batch["latents"]
    noisy = sched.add_noise(latents, noise, timesteps)
    kwargs = {}
    if len(tes) == 1:
        ids = comps["tokenizer"](CAPTIONS, padding="max_length", max_length=77, truncation=True,
                                 return_tensors="pt").input_ids
        hidden = tes[0](ids, return_dict=False)[0]
    else:
        states = []
        for te, tok in zip(tes, (comps["tokenizer"], comps["tokenizer_2"]), strict=True):
            ids = tok(CAPTIONS, padding="max_length", max_length=77, truncation=True,
                                     return_tensors="pt").input_ids
            out = te(ids, output_hidden_states=True)
            pooled = out[0]
            states.append(out.hidden_states[-2])
        hidden = torch.cat(states, -1)
        time_ids = torch.cat([batch["original_size"], batch["crop_top_left"], batch["target_size"]], 1).float()
        kwargs["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": time_ids}
    target = noise if prediction == "epsilon" else sched.get_velocity(latents, noise, timesteps)
    pred = unet(noisy, timesteps, hidden, **kwargs, return_dict=False)[0]
    if snr_gamma is None:
        return F.mse_loss(pred.float(), target.float(), reduction="mean")
    snr = compute_snr(sched, timesteps)
    weights = torch.stack([snr, snr_gamma * torch.ones_like(timesteps)], dim=1).min(dim=1)[0]
    weights = weights / snr if prediction == "epsilon" else weights / (snr + 1)
    loss = F.mse_loss(pred.float(), target.float(), reduction="none")
    return (loss.mean(dim=list(range(1, len(loss.shape)))) * weights).mean()


@pytest.mark.parametrize(("sdxl", "prediction", "snr_gamma"), [  # each family, prediction and weighting twice
    (False, "epsilon", None), (False, "v_prediction", 5.0), (True, "epsilon", 5.0), (True, "v_prediction", None)],
    ids=["sd1-eps", "sd1-v-minsnr", "sdxl-eps-minsnr", "sdxl-v"])
def test_step_loss_and_grads_equal_the_diffusers_peft_recipe(sdxl, prediction, snr_gamma):
    from peft import LoraConfig as PeftLoraConfig

    comps = components(sdxl, prediction)
    ref_unet = copy.deepcopy(comps["unet"])
    family = FAMILIES["sdxl" if sdxl else "sd1"]
    lrs = {"unet": 1e-4, **{p: 0.0 for p in family.text_parts}}
    adapted = add_network(comps, NetworkArgs(dim=4, alpha=2), family.text_parts, lrs)
    ref_unet.add_adapter(PeftLoraConfig(r=4, lora_alpha=2, target_modules=adapted["unet"]))
    g = torch.Generator().manual_seed(0)
    for path, layer in lora_layers(comps["unet"]):  # non-zero B so that A's gradients are non-zero too
        ad, peft = layer.adapters["default"], ref_unet.get_submodule(path)
        with torch.no_grad():
            ad.lora_B.copy_(torch.randn(ad.lora_B.shape, generator=g) * 0.1)
            peft.lora_A["default"].weight.copy_(ad.lora_A)
            peft.lora_B["default"].weight.copy_(ad.lora_B)
    net = SDNetwork(family, comps, SDTrainArgs(min_snr_gamma=snr_gamma), prediction)
    latents = torch.randn(2, 4, 8, 8, generator=g)
    batch = {"latents": latents, "captions": CAPTIONS, "original_size": torch.tensor([[64, 48], [40, 64]]),
             "crop_top_left": torch.tensor([[0, 8], [4, 0]]), "target_size": torch.tensor([[64, 64], [64, 64]])}
    noise, timesteps = torch.randn(latents.shape, generator=g), torch.tensor([37, 811])

    lat, cond = net.condition(batch)
    pred, target = net.predict(lat, cond, batch, noise, timesteps)
    loss = net.weigh(pred, target, timesteps, None).mean()
    loss.backward()
    tes = [copy.deepcopy(comps[p]) for p in family.text_parts]
    ref = reference_loss(comps, ref_unet, tes, batch, noise, timesteps, prediction, snr_gamma)
    ref.backward()

    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-5)
    checked = 0
    for path, layer in lora_layers(comps["unet"]):
        ad, peft = layer.adapters["default"], ref_unet.get_submodule(path)
        torch.testing.assert_close(ad.lora_A.grad, peft.lora_A["default"].weight.grad, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(ad.lora_B.grad, peft.lora_B["default"].weight.grad, atol=1e-5, rtol=1e-4)
        checked += 1
    assert checked == len(adapted["unet"]) > 0
    assert any(float(ad.grad.abs().max()) > 0 for _, lay in lora_layers(comps["unet"])
               for ad in (lay.adapters["default"].lora_A,))


def test_clip_skip_uses_the_normed_earlier_layer():
    comps = components(sdxl=False)
    te, tok = comps["text_encoder"], comps["tokenizer"]
    ids = tok(CAPTIONS, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        got = encode_prompts(FAMILIES["sd1"], comps, CAPTIONS, clip_skip=2, max_token_length=None)["hidden"]
        out = te(ids, output_hidden_states=True)
        want = te.final_layer_norm(out.hidden_states[-2])
        plain = encode_prompts(FAMILIES["sd1"], comps, CAPTIONS, clip_skip=None, max_token_length=None)["hidden"]
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(plain, out.last_hidden_state)


def test_long_prompts_are_encoded_in_bos_eos_wrapped_chunks():
    comps = components(sdxl=False)
    te, tok = comps["text_encoder"], comps["tokenizer"]
    long = ["abcdefghij" * 12, "short"]  # 120 tokens: two chunks
    ids = chunk_ids(tok, long, 150)
    assert ids.shape == (2, 2, 77)
    assert (ids[:, :, 0] == tok.bos_token_id).all() and (ids[:, :, -1] == tok.eos_token_id).all()
    flat = tok(long[0], truncation=False).input_ids[1:-1]
    assert ids[0, 0, 1:76].tolist() == flat[:75] and ids[0, 1, 1:46].tolist() == flat[75:]
    with torch.no_grad():
        got = encode_prompts(FAMILIES["sd1"], comps, long, None, 150)["hidden"]
        chunk0 = te(ids[:, 0]).last_hidden_state
        chunk1 = te(ids[:, 1]).last_hidden_state
    assert got.shape == (2, 152, 16)
    torch.testing.assert_close(got[:, :76], chunk0[:, :76])  # BOS + first 75 states of chunk 0
    torch.testing.assert_close(got[:, 76:151], chunk1[:, 1:76])  # chunk 1 without its BOS
    torch.testing.assert_close(got[:, 151], chunk1[:, 76])  # the last EOS


def test_sd2_chunks_end_cut_chunks_with_eos_and_keep_the_padding():
    tok = tiny_tokenizer(pad_is_eos=False)
    ids = chunk_ids(tok, ["abcd" * 25, ""], 225)  # 100 tokens: a full chunk, a partial one, an empty one
    pad, eos, bos = tok.pad_token_id, tok.eos_token_id, tok.bos_token_id
    assert pad != eos and (ids[:, :, 0] == bos).all()
    assert ids[0, 0, -1] == eos  # cut in the middle of the prompt: ends with EOS (kohya)
    assert ids[0, 1, 26] == eos and (ids[0, 1, 27:] == pad).all()  # the prompt's own EOS, then "!" padding
    assert ids[0, 2, 1] == eos and ids[1, 1, 1] == eos  # an empty chunk starts BOS, EOS as kohya marks it


def test_text_encoder_lora_grads_equal_peft():
    """Text-encoder LoRA (kohya's CLIP attention + MLP targets) against PEFT on the same modules."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import inject_adapter_in_model

    comps = components(sdxl=False)
    ref_unet, ref_te = copy.deepcopy(comps["unet"]), copy.deepcopy(comps["text_encoder"])
    adapted = add_network(comps, NetworkArgs(dim=4, alpha=2), ("text_encoder",), {"unet": 0.0, "text_encoder": 1e-4})
    assert "unet" not in adapted and any(n.endswith("mlp.fc2") for n in adapted["text_encoder"])
    ref_te = inject_adapter_in_model(PeftLoraConfig(r=4, lora_alpha=2, target_modules=adapted["text_encoder"]), ref_te)
    g = torch.Generator().manual_seed(2)
    for path, layer in lora_layers(comps["text_encoder"]):
        ad, peft = layer.adapters["default"], ref_te.get_submodule(path)
        with torch.no_grad():
            ad.lora_B.copy_(torch.randn(ad.lora_B.shape, generator=g) * 0.1)
            peft.lora_A["default"].weight.copy_(ad.lora_A)
            peft.lora_B["default"].weight.copy_(ad.lora_B)
    net = SDNetwork(FAMILIES["sd1"], comps, SDTrainArgs(), "epsilon")
    batch = {"latents": torch.randn(2, 4, 8, 8, generator=g), "captions": CAPTIONS}
    noise, timesteps = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([5, 600])
    lat, cond = net.condition(batch)
    loss = net.weigh(*net.predict(lat, cond, batch, noise, timesteps), timesteps, None).mean()
    loss.backward()
    ref = reference_loss(comps, ref_unet, [ref_te], batch, noise, timesteps, "epsilon", None)
    ref.backward()
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-5)
    for path, layer in lora_layers(comps["text_encoder"]):
        ad, peft = layer.adapters["default"], ref_te.get_submodule(path)
        torch.testing.assert_close(ad.lora_A.grad, peft.lora_A["default"].weight.grad, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(ad.lora_B.grad, peft.lora_B["default"].weight.grad, atol=1e-5, rtol=1e-4)
