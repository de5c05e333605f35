"""One FLUX.1 / SD3 training step against diffusers' ``train_dreambooth_lora_flux.py`` /
``train_dreambooth_lora_sd3.py`` recipe reproduced line by line with PEFT on the same targets: the
same latents, captions, noise and σ (drawn by each of lorakit's samplers) give the same loss and the
same gradient for every LoRA factor, for each weighting and prediction type (in float64: in float32 the
rounding of two different op orders reaches ~1e-5 on these gradients). With the CLIP text encoders trained
(kohya's default without ``train_unet_only``: FLUX.1's CLIP-L, SD3's CLIP-L and CLIP-G), their LoRA gradients
equal PEFT's on the recipe's ``encode_prompt`` too."""

import copy

import pytest
import torch
from dit_tiny import components

from lorakit.model import lora_layers
from lorakit.tasks.diffusion.config import NetworkArgs, SDTrainArgs
from lorakit.tasks.diffusion.dit import DIT_FAMILIES
from lorakit.tasks.diffusion.dit_network import add_dit_network, fused_groups
from lorakit.tasks.diffusion.dit_step import DitNetwork

CAPTIONS = ["sks dog, photo", "a red cat on a mat"]
T5_TOKENS = 12


def reference_text(family, comps, grad: bool = False):
    """The prompt encoding of diffusers' pipeline (what the recipe's ``encode_prompt`` computes; with ``grad``
    as its ``--train_text_encoder`` runs it, through the encoders' LoRA)."""
    from diffusers import FluxPipeline, StableDiffusion3Pipeline

    with torch.set_grad_enabled(grad):
        if family == "flux1":
            pipe = FluxPipeline(scheduler=None, vae=None, transformer=None, **{k: comps[k] for k in (
                "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")})
            embeds, pooled, text_ids = pipe.encode_prompt(CAPTIONS, None, max_sequence_length=T5_TOKENS)
            return embeds, pooled, text_ids
        pipe = StableDiffusion3Pipeline(scheduler=None, vae=None, transformer=None, **{k: comps[k] for k in (
            "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "text_encoder_3", "tokenizer_3")})
        embeds, _, pooled, _ = pipe.encode_prompt(CAPTIONS, None, None, do_classifier_free_guidance=False,
                                                  max_sequence_length=T5_TOKENS)
        return embeds, pooled, None


def reference_loss(family, text, transformer, latents, noise, sigma, weighting, precondition, guidance):
    """diffusers' recipe: flow-matching input, packing, the transformer call, preconditioning and the loss."""
    from diffusers import FluxPipeline
    from diffusers.training_utils import compute_loss_weighting_for_sd3

    embeds, pooled, text_ids = text
    b, c, h, w = latents.shape
    sigmas = sigma.view(-1, 1, 1, 1)
    timesteps = sigma * 1000  # what noise_scheduler_copy.timesteps[indices] holds
    noisy = (1.0 - sigmas) * latents + sigmas * noise
    if family == "flux1":
        ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, latents.device, latents.dtype)
        packed = FluxPipeline._pack_latents(noisy, b, c, h, w)
        g = torch.tensor([guidance]).expand(b) if transformer.config.guidance_embeds else None
        pred = transformer(hidden_states=packed, timestep=timesteps / 1000, guidance=g, pooled_projections=pooled,
                           encoder_hidden_states=embeds, txt_ids=text_ids, img_ids=ids, return_dict=False)[0]
        pred = FluxPipeline._unpack_latents(pred, height=h * 8, width=w * 8, vae_scale_factor=8)  # 8: packs h/2
    else:
        pred = transformer(hidden_states=noisy, timestep=timesteps, encoder_hidden_states=embeds,
                           pooled_projections=pooled, return_dict=False)[0]
    if precondition:
        pred = pred * (-sigmas) + noisy
    weights = compute_loss_weighting_for_sd3(weighting_scheme=weighting, sigmas=sigmas)
    if weighting == "sigma_sqrt":  # the same weights without the function's cast to float32 (this reference is fp64)
        torch.testing.assert_close(sigmas ** -2.0, weights.double(), rtol=1e-6, atol=0)
        weights = sigmas ** -2.0
    target = latents if precondition else noise - latents
    dt = latents.dtype  # the recipe's .float(); float64 here, where float32 rounding would exceed the tolerance
    loss = torch.mean((weights.to(dt) * (pred.to(dt) - target.to(dt)) ** 2).reshape(b, -1), 1)
    return loss.mean()


def same_factors(model, ref, g):
    """Random non-zero B (so that A's gradients are non-zero too) in lorakit's adapters, copied to PEFT's."""
    for path, layer in lora_layers(model):
        ad, peft = layer.adapters["default"], ref.get_submodule(path)
        with torch.no_grad():
            ad.lora_B.copy_(torch.randn(ad.lora_B.shape, generator=g) * 0.1)
            peft.lora_A["default"].weight.copy_(ad.lora_A)
            peft.lora_B["default"].weight.copy_(ad.lora_B)


def assert_same_grads(model, ref, groups=None):
    """Every LoRA factor's gradient equals PEFT's (a shared down's: the sum of its parts' downs)."""
    for path, layer in lora_layers(model):
        ad, peft = layer.adapters["default"], ref.get_submodule(path)
        grad_a = sum(ref.get_submodule(p).lora_A["default"].weight.grad for p in (groups or {}).get(path, [path]))
        torch.testing.assert_close(ad.lora_A.grad, grad_a, atol=1e-10, rtol=1e-7, msg=lambda m, p=path: f"{p}: {m}")
        torch.testing.assert_close(ad.lora_B.grad, peft.lora_B["default"].weight.grad, atol=1e-10, rtol=1e-7,
                                   msg=lambda m, p=path: f"{p}: {m}")


def network_and_sigmas(fam, comps, case, latents):
    """The step module for ``case`` (sampler, weighting, prediction) and its σ draw (seed 3)."""
    sampler, weighting, prediction = case
    args = SDTrainArgs(timestep_sampling=sampler, weighting_scheme=weighting, discrete_flow_shift=2.0,
                       t5xxl_max_token_length=T5_TOKENS, guidance_scale=2.5)
    net = DitNetwork(fam, comps, args, prediction, T5_TOKENS)
    torch.manual_seed(3)
    return net, net.draw_sigmas(latents).double()


CASES = [  # every sampler once per family, the three weightings and both prediction types across them
    ("sigma", "none", "raw"), ("uniform", "sigma_sqrt", "raw"), ("sigmoid", "cosmap", "sigma_scaled"),
    ("shift", "none", "sigma_scaled"), ("flux_shift", "cosmap", "raw"), ("logit_normal", "none", "raw"),
    ("mode", "sigma_sqrt", "sigma_scaled")]


@pytest.mark.parametrize("family", ["flux1", "sd3"])
@pytest.mark.parametrize("split", [False, True], ids=["fused-qkv", "split-qkv"])
def test_step_loss_and_grads_equal_the_diffusers_peft_recipe(tmp_path, family, split):
    """kohya's fused q/k/v LoRA (shared down) against PEFT's separate ones with equal downs: the shared
    down's gradient is the sum of theirs; with ``split_qkv`` every factor matches one to one."""
    from peft import LoraConfig as PeftLoraConfig

    comps = {k: v.double() if isinstance(v, torch.nn.Module) else v for k, v in components(family).items()}
    fam = DIT_FAMILIES[family]
    ref = copy.deepcopy(comps["transformer"])
    lrs = {"transformer": 1e-4, **{p: 0.0 for p in fam.text_parts(False)}}
    adapted = add_dit_network(comps, fam, NetworkArgs(dim=4, alpha=2, split_qkv=split), lrs)["transformer"]
    ref.add_adapter(PeftLoraConfig(r=4, lora_alpha=2, target_modules=adapted))
    ref.double()
    g = torch.Generator().manual_seed(0)
    model = comps["transformer"]
    same_factors(model, ref, g)
    groups = {} if split else {n: grp for grp in fused_groups(adapted) for n in grp}
    shared = {id(layer.adapters["default"].lora_A) for _, layer in lora_layers(model)}
    assert (len(shared) == len(adapted)) == split and len(adapted) > 10
    # SD3's last block drops the text stream: its text query gets no gradient (kohya's fused qkv row slice too)
    unused = {f"transformer_blocks.{len(model.transformer_blocks) - 1}.attn.add_q_proj"} if family == "sd3" else set()
    latents, noise = (torch.randn(2, 16, 8, 12, generator=g, dtype=torch.float64) for _ in range(2))
    text = reference_text(family, comps)
    cond = None
    for sampler, weighting, prediction in CASES:
        model.zero_grad(set_to_none=True)
        ref.zero_grad(set_to_none=True)
        net, sigma = network_and_sigmas(fam, comps, (sampler, weighting, prediction), latents)
        assert sigma.shape == (2,) and bool(((sigma > 0) & (sigma <= 1)).all())
        if cond is None:  # the text states do not depend on σ: encode once
            lat, cond = net.condition({"latents": latents, "captions": CAPTIONS})
        loss = net.weigh(*net.predict(lat, cond, noise, sigma), sigma, None).mean()
        loss.backward()
        want = reference_loss(family, text, ref, latents, noise, sigma, weighting, prediction == "sigma_scaled", 2.5)
        want.backward()
        assert loss.dtype == torch.float64
        torch.testing.assert_close(loss, want, atol=1e-9, rtol=1e-9, msg=lambda m, s=sampler: f"{s}: {m}")
        assert_same_grads(model, ref, groups)
        zero = {p for p, layer in lora_layers(model) if float(layer.adapters["default"].lora_A.grad.abs().max()) == 0}
        assert zero == (unused if split else set()), (sampler, zero)


@pytest.mark.parametrize("family", ["flux1", "sd3"])
def test_text_encoder_lora_grads_equal_the_diffusers_peft_recipe(family):
    """The CLIP LoRA that kohya trains unless ``train_unet_only`` (lr > 0): the text states come from the
    encoders on the captions at every step, and each CLIP LoRA factor's gradient equals PEFT's through the
    recipe's ``encode_prompt`` (FLUX.1: CLIP-L's pooled output; SD3: CLIP-L's and CLIP-G's penultimate states
    and projections); T5 stays frozen (no ``train_t5xxl``)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import inject_adapter_in_model

    comps = {k: v.double() if isinstance(v, torch.nn.Module) else v for k, v in components(family).items()}
    fam = DIT_FAMILIES[family]
    refs = {k: copy.deepcopy(v) if isinstance(v, torch.nn.Module) else v for k, v in comps.items()}
    lrs = {"transformer": 1e-4, **{p: 1e-5 for p in fam.text_parts(False)}}
    adapted = add_dit_network(comps, fam, NetworkArgs(dim=4, alpha=2, split_qkv=True), lrs)
    assert set(adapted) == {"transformer", *fam.clip_parts}
    g = torch.Generator().manual_seed(0)
    for part, names in adapted.items():
        config = PeftLoraConfig(r=4, lora_alpha=2, target_modules=names)
        if part == "transformer":
            refs[part].add_adapter(config)
        else:
            inject_adapter_in_model(config, refs[part])
        refs[part].double()
        same_factors(comps[part], refs[part], g)
        assert len(list(lora_layers(comps[part]))) == len(names) > 10
    latents, noise = (torch.randn(2, 16, 8, 12, generator=g, dtype=torch.float64) for _ in range(2))
    for sampler, weighting, prediction in CASES[2:4]:  # both prediction types
        for module in (*comps.values(), *refs.values()):
            if isinstance(module, torch.nn.Module):
                module.zero_grad(set_to_none=True)
        net, sigma = network_and_sigmas(fam, comps, (sampler, weighting, prediction), latents)
        lat, cond = net.condition({"latents": latents, "captions": CAPTIONS})  # the encoders run: no cached te_*
        loss = net.weigh(*net.predict(lat, cond, noise, sigma), sigma, None).mean()
        loss.backward()
        text = reference_text(family, refs, grad=True)
        want = reference_loss(family, text, refs["transformer"], latents, noise, sigma, weighting,
                              prediction == "sigma_scaled", 2.5)
        want.backward()
        torch.testing.assert_close(loss, want, atol=1e-9, rtol=1e-9)
        for part in adapted:
            assert_same_grads(comps[part], refs[part])
        for part in fam.clip_parts:
            grads = [layer.adapters["default"].lora_A.grad for _, layer in lora_layers(comps[part])]
            assert all(float(gr.abs().max()) > 0 for gr in grads), part  # every CLIP layer is reached
        t5 = comps[fam.t5_part]
        assert not list(lora_layers(t5)) and not any(p.requires_grad for p in t5.parameters())
