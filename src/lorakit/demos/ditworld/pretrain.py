"""A tiny FLUX.1-shaped base model of the sdworld world, pretrained by flow matching (CPU, minutes):

    python -m lorakit.demos.ditworld.pretrain --out assets/ditworld-flux      # or: make ditworld-assets

An ordinary ``FluxPipeline`` directory: sdworld's VAE (4 latent channels, so 2×2 packing gives 16),
its CLIP text encoder and tokenizer (CLIP-L's role: the pooled output), a tiny random T5 encoder
with a word-level tokenizer over the world's words (T5's role: the token states; frozen, as FLUX.1's
T5 is), and a FluxTransformer2DModel (2 double + 4 single blocks, width 64, distilled-guidance input
fed 1.0 throughout). The transformer learns the velocity ε − x0 on the base world's scenes (no rings:
the concept a LoRA learns later), σ uniform, 10% empty captions; EMA weights are saved in float16.
"""

from __future__ import annotations

import argparse
import random
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..sdworld.model import PUNCT, WORDS
from ..sdworld.pretrain import Ema, encode_latents, lr_at, pixels_by_size, scenes
from ..sdworld.world import held_out

SDWORLD = Path(__file__).resolve().parents[4] / "assets" / "sdworld-base"
T5_TOKENS = 16  # every world caption fits (8 words and the end token)
WIDTH, HEADS = 64, 4


def t5_tokenizer():
    """A T5TokenizerFast whose Unigram model has each world word as one piece (T5's own format, so
    ``from_pretrained`` reads it back); pad 0, end 1, unknown 2, single characters as a fallback."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    chars = sorted(set("".join(WORDS)) | set(PUNCT))
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("▁" + w, -1.0) for w in WORDS]
    pieces += [("▁", -5.0)] + [(c, -10.0) for c in chars]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                           extra_ids=0, model_max_length=T5_TOKENS)


def build(seed: int = 0) -> dict:
    """The pipeline's parts: sdworld's VAE and CLIP, a fresh T5 and transformer, the flow-match scheduler."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    vae = AutoencoderKL.from_pretrained(SDWORLD / "vae", dtype=torch.float32)
    vae.register_to_config(shift_factor=0.0)  # FluxPipeline decodes with latents/scale + shift
    tokenizer_2 = t5_tokenizer()
    t5 = T5EncoderModel(T5Config(vocab_size=len(tokenizer_2), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                 feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1,
                                 decoder_start_token_id=0))
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=4 * vae.config.latent_channels, num_layers=2,
                                         num_single_layers=4, attention_head_dim=WIDTH // HEADS,
                                         num_attention_heads=HEADS, joint_attention_dim=32, pooled_projection_dim=64,
                                         axes_dims_rope=[4, 6, 6], guidance_embeds=True)
    return {"vae": vae.eval(), "text_encoder": CLIPTextModel.from_pretrained(SDWORLD / "text_encoder").float().eval(),
            "tokenizer": CLIPTokenizer.from_pretrained(SDWORLD / "tokenizer"), "text_encoder_2": t5.eval(),
            "tokenizer_2": tokenizer_2, "transformer": transformer,
            "scheduler": FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)}


@torch.no_grad()
def text_states(parts: dict, captions: list[str]) -> dict[str, torch.Tensor]:
    """{caption: (T5 states, CLIP pooled)} as FluxPipeline computes them."""
    from diffusers import FluxPipeline

    pipe = FluxPipeline(**{k: parts[k] for k in ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")},
                        vae=None, transformer=None, scheduler=None)
    t5, pooled, _ = pipe.encode_prompt(captions, None, max_sequence_length=T5_TOKENS)
    return {c: (t5[i], pooled[i]) for i, c in enumerate(captions)}


def train(parts: dict, steps: int, seed: int, n_images: int, batch: int = 48, lr: float = 1e-3, drop: float = 0.1,
          log=print) -> None:
    """Flow matching on the base world's cached latents (the trainer's objective with σ ~ U(0, 1))."""
    from ...tasks.diffusion.flow import image_ids, pack_latents, unpack_latents

    groups = encode_latents(parts["vae"], pixels_by_size(scenes(n_images, seed, exclude=held_out())))
    scale = parts["vae"].config.scaling_factor
    texts = text_states(parts, sorted({s.caption() for _, items in groups.values() for s in items} | {""}))
    model = parts["transformer"].train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    ema = Ema([model], decay=0.995)
    rng, gen = random.Random(seed + 1), torch.Generator().manual_seed(seed + 2)
    t0 = time.time()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr)
        key = rng.choices(list(groups), weights=[len(v[1]) for v in groups.values()])[0]
        lat, items = groups[key]
        idx = [rng.randrange(len(items)) for _ in range(batch)]
        x0 = lat[idx] * scale
        captions = ["" if rng.random() < drop else items[i].caption() for i in idx]
        t5 = torch.stack([texts[c][0] for c in captions])
        pooled = torch.stack([texts[c][1] for c in captions])
        noise = torch.randn(x0.shape, generator=gen)
        sigma = torch.rand(x0.shape[0], generator=gen)
        xt = (1 - sigma.view(-1, 1, 1, 1)) * x0 + sigma.view(-1, 1, 1, 1) * noise
        h, w = x0.shape[-2:]
        pred = model(hidden_states=pack_latents(xt), timestep=sigma, guidance=torch.ones(x0.shape[0]),
                     pooled_projections=pooled, encoder_hidden_states=t5, img_ids=image_ids(h, w),
                     txt_ids=torch.zeros(T5_TOKENS, 3), return_dict=False)[0]
        loss = F.mse_loss(unpack_latents(pred, h, w), noise - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.update()
        if step % 200 == 0 or step == steps - 1:
            log(f"transformer step {step}/{steps} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
    ema.copy_to()
    model.eval()


def pretrain(out: Path, *, seed: int = 0, steps: int = 5000, n_images: int = 8000, log=print) -> dict:
    """Build, train and save the pipeline at ``out`` (replacing it); returns timings."""
    from diffusers import FluxPipeline

    t0 = time.time()
    parts = build(seed)
    train(parts, steps, seed, n_images, log=log)
    pipe = FluxPipeline(**parts)
    pipe.to(dtype=torch.float16)  # small files; loaders read them back in float32
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    pipe.save_pretrained(str(out), safe_serialization=True)
    return {"steps": steps, "images": n_images, "seconds": round(time.time() - t0, 1)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("assets/ditworld-flux"))
    for flag, default in (("--seed", 0), ("--steps", 5000), ("--images", 8000), ("--threads", 1)):
        ap.add_argument(flag, type=int, default=default)  # threads 1: 2 threads crawl on 2 shared cores
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(pretrain(args.out, seed=args.seed, steps=args.steps, n_images=args.images))


if __name__ == "__main__":
    main()
