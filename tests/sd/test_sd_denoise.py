"""The sampling loop: diffusers' latents bit for bit on a plain prompt, A1111's composable guidance
uncond + Σ w_i·cfg·(cond_i − uncond) on AND prompts, the conditioning each step reads under prompt editing and
alternation, and NaN/Inf reported with step, seed and prompt instead of a black image."""

import numpy as np
import pytest
import torch

from lorakit.sd.denoise import NonFiniteError
from lorakit.sd.encode import encode_prompt
from lorakit.sd.generate import generate_images, set_sampler
from lorakit.sd.samplers import make_scheduler

KW = {"width": 32, "height": 32, "cfg_scale": 6.0, "seed": 5}


def _reference(pipe, prompt, negative, *, steps, sampler):
    set_sampler(pipe, sampler, None)
    c, u = encode_prompt(pipe, prompt), encode_prompt(pipe, negative)
    kw = {"prompt_embeds": c.embeds, "negative_prompt_embeds": u.embeds}
    if c.pooled is not None:
        kw.update(pooled_prompt_embeds=c.pooled, negative_pooled_prompt_embeds=u.pooled)
    return pipe(**kw, width=32, height=32, num_inference_steps=steps, guidance_scale=KW["cfg_scale"],
                generator=torch.Generator().manual_seed(KW["seed"]), output_type="latent").images


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M", "Heun"])
@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_plain_prompt_gives_diffusers_latents(request, family, sampler):
    pipe = request.getfixturevalue(f"{family}_pipe")
    ours = generate_images(pipe, "a red cat", "dog", steps=3, sampler=sampler, output_type="latent", **KW)[0]
    assert torch.equal(ours, _reference(pipe, "a red cat", "dog", steps=3, sampler=sampler))


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_and_guides_with_the_composable_formula(request, family):
    """Independent loop: one U-Net pass per conditioning (no batching), A1111's formula, the same scheduler."""
    pipe = request.getfixturevalue(family + "_pipe")
    prompt, steps = "a red cat AND blue dog:0.5 AND (sky:1.2) :-0.3", 3
    got = generate_images(pipe, prompt, "grass", steps=steps, sampler="Euler", output_type="latent", **KW)[0]

    sched = make_scheduler(pipe._lorakit_base_scheduler, "Euler")
    sched.set_timesteps(steps)
    gen = torch.Generator().manual_seed(KW["seed"])
    x = pipe.prepare_latents(1, 4, 32, 32, torch.float32, "cpu", gen)
    conds = [(encode_prompt(pipe, t), w) for t, w in (("a red cat", 1.0), (" blue dog", 0.5), (" (sky:1.2)", -0.3))]
    uncond = encode_prompt(pipe, "grass")

    def eps(cond, t):
        kw = {}
        if cond.pooled is not None:
            kw["added_cond_kwargs"] = {"text_embeds": cond.pooled,
                                       "time_ids": torch.tensor([[32.0, 32, 0, 0, 32, 32]])}
        return pipe.unet(sched.scale_model_input(x, t), t, cond.embeds, **kw).sample

    with torch.no_grad():
        for t in sched.timesteps:
            e_u = eps(uncond, t)
            guided = e_u + sum(w * KW["cfg_scale"] * (eps(c, t) - e_u) for c, w in conds)
            x = sched.step(guided, t, x).prev_sample
    torch.testing.assert_close(got, x, atol=1e-4, rtol=1e-4)
    single = generate_images(pipe, "a red cat", "grass", steps=steps, sampler="Euler", output_type="latent", **KW)[0]
    assert (single - got).abs().max() > 1e-2  # the other sub-prompts do change the result


def test_and_with_prompts_of_different_lengths(sd1_pipe):
    """Sub-prompts of 1 and 2 chunks repeat their last token vector (A1111's stack_conds); a 3-chunk negative
    pads them with the empty prompt's chunks."""
    long = ", ".join(["w1 w2"] * 20)  # two chunks
    seen, hook = _record_conditioning(sd1_pipe)
    try:
        generate_images(sd1_pipe, f"a cat AND {long}:0.5", "x BREAK y BREAK z", steps=1, **KW)
    finally:
        hook.remove()
    batch = seen[0]
    cat, two, empty = (encode_prompt(sd1_pipe, t).embeds[0] for t in ("a cat", " " + long, ""))
    assert batch.shape[:2] == (3, 231)
    assert torch.equal(batch[1, :77], cat) and (batch[1, 77:154] == cat[-1]).all()
    assert torch.equal(batch[2, :154], two) and torch.equal(batch[1, 154:], empty) and torch.equal(batch[2, 154:], empty)


def _record_conditioning(pipe):
    """Per U-Net call: the batch of text conditionings it got (uncond first)."""
    seen = []
    hook = pipe.unet.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs["encoder_hidden_states"].clone()), with_kwargs=True)
    return seen, hook


def test_prompt_editing_switches_the_conditioning_at_a1111s_step(sd1_pipe):
    seen, hook = _record_conditioning(sd1_pipe)
    try:
        generate_images(sd1_pipe, "a [red:blue:0.5] cat", "[dog|grass]", steps=20, sampler="Euler", **KW)
    finally:
        hook.remove()
    red, blue = (encode_prompt(sd1_pipe, t).embeds[0] for t in ("a red cat", "a blue cat"))
    dog, grass = (encode_prompt(sd1_pipe, t).embeds[0] for t in ("dog", "grass"))
    assert len(seen) == 20
    for i, batch in enumerate(seen):  # step i reads the first entry ending at or after i
        assert torch.equal(batch[1], red if i <= 10 else blue), i  # [(10, red), (20, blue)]
        assert torch.equal(batch[0], dog if i == 0 or i % 2 == 1 else grass), i  # [(1, dog), (2, grass), ...]


def test_lora_tags_emphasis_break_and_long_prompts_work_inside_edits(sd1_pipe, tmp_path):
    """Tags come out before scheduling (A1111 order); emphasis, BREAK and 75-token chunks apply per text."""
    from sd_models import random_lora
    from sd_pipes import clean_parts

    from lorakit.formats.sd_io import write_lora

    write_lora(random_lora(clean_parts("sd1"), seed=9), tmp_path / "style.safetensors")
    long = ", ".join(["w1 w2"] * 20)  # over 75 tokens: two chunks
    prompt = f"[(red:1.3) cat <lora:style:0.5> BREAK x:{long}:0.5]"
    seen, hook = _record_conditioning(sd1_pipe)
    try:
        generate_images(sd1_pipe, prompt, "", steps=4, sampler="Euler", lora_dir=tmp_path, **KW)
        first = encode_prompt(sd1_pipe, "(red:1.3) cat  BREAK x").embeds[0]
        second = encode_prompt(sd1_pipe, long).embeds[0]
    finally:
        hook.remove()
    assert first.shape[0] == 154 and second.shape[0] == 154  # BREAK: 2 chunks; the long text: 2 chunks
    assert torch.equal(seen[0][1], first) and torch.equal(seen[3][1], second)


def _nan_after(module, calls: int):
    count = [0]

    def hook(m, args, out):
        count[0] += 1
        if count[0] >= calls:
            return out.__class__(out[0] * float("nan"), *out[1:]) if isinstance(out, tuple) else out * float("nan")
        return out

    return module.register_forward_hook(hook)


def test_nan_latents_raise_naming_step_seed_and_prompt(sd1_pipe):
    """Before: a NaN in the U-Net became an all-black PNG without a word."""
    hook = _nan_after(sd1_pipe.unet.conv_out, 2)
    try:
        with pytest.raises(NonFiniteError, match=r"sampling step 2/3 produced NaN/Inf latents \(seed 5, prompt "
                                                 r"'a red cat'\).*float32"):
            generate_images(sd1_pipe, "a red cat", steps=3, sampler="Euler", **KW)
    finally:
        hook.remove()


def test_nan_from_the_vae_or_the_text_encoder_is_reported(sd1_pipe):
    hook = _nan_after(sd1_pipe.vae.decoder.conv_out, 1)
    try:
        with pytest.raises(NonFiniteError, match=r"the VAE decoded NaN/Inf from finite latents \(seed 5"):
            generate_images(sd1_pipe, "a red cat", steps=1, **KW)
    finally:
        hook.remove()
    hook = sd1_pipe.text_encoder.register_forward_hook(
        lambda m, args, out: out.__class__(last_hidden_state=out.last_hidden_state * float("inf"),
                                           hidden_states=out.hidden_states))
    try:
        with pytest.raises(NonFiniteError, match="text encoder's output for 'a red cat' has NaN/Inf"):
            generate_images(sd1_pipe, "a red cat", steps=1, **KW)
    finally:
        hook.remove()


def test_a_half_precision_vae_that_overflows_is_decoded_again_in_float32(sd1_pipe):
    """A1111's automatic VAE upcast: the retry in float32 gives the float32 image (up to the weights' float16
    rounding); the VAE stays float16."""
    want = generate_images(sd1_pipe, "a red cat", steps=1, **KW)[0]
    hook = sd1_pipe.vae.decoder.conv_out.register_forward_hook(
        lambda m, args, out: out * float("inf") if out.dtype == torch.float16 else out)
    sd1_pipe.vae.to(torch.float16)
    try:
        with pytest.warns(UserWarning, match=r"the VAE overflowed in float16 \(seed 5, .*decoded again in float32"):
            got = generate_images(sd1_pipe, "a red cat", steps=1, **KW)[0]
        assert sd1_pipe.vae.dtype == torch.float16
    finally:
        hook.remove()
        sd1_pipe.vae.to(torch.float32)
    assert np.abs(np.asarray(got).astype(int) - np.asarray(want)).max() <= 2
