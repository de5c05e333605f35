"""Tiny FLUX.1 and SD3 models built from configs (nothing downloaded), their inputs, tiny pipelines with
tokenizers made here, and random LoRA files for them in either transformer layout.

The configs are the team reference's (dit-models.md §5). Outputs are finite by construction: every
model is a freshly initialised diffusers/transformers module in float32 whose inputs are bounded
(unit-normal latents and embeddings, σ in [0, 1]); the helpers assert finiteness where it matters.
"""

from __future__ import annotations

import functools

import torch

from lorakit.formats.dit_keys import PIPE_PARTS, TABLES, fused_name, split_entry, te_path
from lorakit.formats.lorafile import LoraFile, Naming

T5_DIM, CLIP_DIM = 32, 32


def flux_transformer(seed: int = 0, in_channels: int = 4, guidance: bool = True):
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    return FluxTransformer2DModel(patch_size=1, in_channels=in_channels, num_layers=1, num_single_layers=1,
                                  attention_head_dim=16, num_attention_heads=2, joint_attention_dim=T5_DIM,
                                  pooled_projection_dim=CLIP_DIM, axes_dims_rope=[4, 4, 8],
                                  guidance_embeds=guidance).eval()


def sd3_transformer(seed: int = 0, in_channels: int = 4, dual: bool = True, num_layers: int = 2, pooled: int = 64):
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    extra = {"dual_attention_layers": (0,), "qk_norm": "rms_norm"} if dual else {}
    return SD3Transformer2DModel(sample_size=32, patch_size=1, in_channels=in_channels, num_layers=num_layers,
                                 attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
                                 joint_attention_dim=T5_DIM, pooled_projection_dim=pooled, out_channels=in_channels,
                                 pos_embed_max_size=96, **extra).eval()


def flux_inputs(model, batch: int = 2, seed: int = 0, hw: int = 4, seq: int = 5) -> dict:
    g = torch.Generator().manual_seed(seed)
    c = model.config.in_channels
    img_ids = torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(float(hw)), torch.arange(float(hw)), indexing="ij"), -1)
    out = {"hidden_states": torch.randn(batch, hw * hw, c, generator=g),
           "encoder_hidden_states": torch.randn(batch, seq, T5_DIM, generator=g),
           "pooled_projections": torch.randn(batch, CLIP_DIM, generator=g),
           "timestep": torch.rand(batch, generator=g), "img_ids": img_ids.reshape(-1, 3).float(),
           "txt_ids": torch.zeros(seq, 3)}
    if model.config.guidance_embeds:
        out["guidance"] = torch.full((batch,), 3.5)
    return out


def sd3_inputs(model, batch: int = 2, seed: int = 0, hw: int = 4, seq: int = 5) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"hidden_states": torch.randn(batch, model.config.in_channels, hw, hw, generator=g),
            "encoder_hidden_states": torch.randn(batch, seq, T5_DIM, generator=g),
            "pooled_projections": torch.randn(batch, 64, generator=g),
            "timestep": torch.rand(batch, generator=g) * 1000}


@torch.no_grad()
def run(model, inputs: dict) -> torch.Tensor:
    out = model(**inputs, return_dict=False)[0]
    assert torch.isfinite(out).all()
    return out


def clip(hidden: int = CLIP_DIM, projection: bool = False, seed: int = 1, vocab: int | None = None):
    from sd_pipes import tiny_text_encoder, tiny_tokenizer

    return tiny_text_encoder(tiny_tokenizer(), projection=projection, seed=seed, hidden=hidden)


def t5(seed: int = 4, vocab: int = 64):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    return T5EncoderModel(T5Config(vocab_size=vocab, d_model=T5_DIM, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
                                   feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1,
                                   decoder_start_token_id=0)).eval()


def t5_tokenizer():
    """A T5 tokenizer made here: a Unigram vocabulary (pad 0, eos 1, unk 2, then "▁word" pieces and single
    characters as the fallback), as T5's sentencepiece model is; it saves and reloads with the pipeline."""
    from transformers import T5TokenizerFast

    words = ("a photo of cat dog red blue green sks tree house girl boy ring star on the in with masterpiece "
             "best quality sun sky hill").split()
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("\u2581" + w, -1.0) for w in words]
    vocab += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789\u2581,.():[]"]
    return T5TokenizerFast(vocab=vocab, extra_ids=0)


def vae16(seed: int = 3):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(8, 8),
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         layers_per_block=1, norm_num_groups=4, sample_size=32, shift_factor=0.1,
                         scaling_factor=0.5).eval()


def flux_pipe():
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
    from sd_pipes import tiny_tokenizer

    return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae16(),
                        text_encoder=clip(), tokenizer=tiny_tokenizer(), text_encoder_2=t5(),
                        tokenizer_2=t5_tokenizer(), transformer=flux_transformer(in_channels=64))


def sd3_pipe():
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline
    from sd_pipes import tiny_tokenizer

    # the two CLIPs' projections (16 each) are the pooled vector; their hidden states (16 + 16) fit T5's width
    return StableDiffusion3Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae16(), text_encoder=clip(16, True, 1),
        tokenizer=tiny_tokenizer(), text_encoder_2=clip(16, True, 2), tokenizer_2=tiny_tokenizer(),
        text_encoder_3=t5(), tokenizer_3=t5_tokenizer(), transformer=sd3_transformer(in_channels=16, pooled=32))


def _factors(out: int, inn: int, rank: int, g: torch.Generator, algo: str) -> dict[str, torch.Tensor]:
    if algo == "loha":
        return {"hada_w1_a": torch.randn(out, rank, generator=g) * 0.3, "hada_w1_b": torch.randn(rank, inn, generator=g) * 0.3,
                "hada_w2_a": torch.randn(out, rank, generator=g) * 0.3, "hada_w2_b": torch.randn(rank, inn, generator=g) * 0.3,
                "alpha": torch.tensor(float(rank))}
    m = {"lora_down.weight": torch.randn(rank, inn, generator=g) / inn ** 0.5,
         "lora_up.weight": torch.randn(out, rank, generator=g) * 0.2, "alpha": torch.tensor(rank / 2)}
    if algo == "dora":
        m["dora_scale"] = 0.5 + torch.rand(out, 1, generator=g)
    return m


@functools.cache
def _shapes(family: str) -> dict[str, tuple[int, int]]:
    model = flux_transformer() if family == "flux1" else sd3_transformer()
    return {n: tuple(m.weight.shape[:2]) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def random_dit_lora(family: str, fused: bool, rank: int = 4, seed: int = 0, algo: str = "lora",
                    te: dict | None = None, keep=None, model=None) -> LoraFile:
    """A random LoRA on every Linear of the tiny ``family`` transformer (or ``model``; ``keep(path)``: those it
    accepts), in the fused or split layout; ``te`` = {part: text-encoder model} adds some of their modules too."""
    g = torch.Generator().manual_seed(seed)
    modules = {}
    shapes = _shapes(family) if model is None else {n: tuple(m.weight.shape[:2]) for n, m in model.named_modules()
                                                    if isinstance(m, torch.nn.Linear)}
    split = {n: s for n, s in shapes.items() if keep is None or keep(n)}
    if fused:
        groups: dict[tuple, list] = {}
        for name in split:
            entry, index, k, _ = split_entry(family, name)
            groups.setdefault((entry, index), []).append(split[name])
        for (entry, index), shapes in groups.items():
            modules[f"transformer.{fused_name(entry, index)}"] = _factors(sum(o for o, _ in shapes), shapes[0][1],
                                                                         rank, g, algo)
    else:
        for name, (out, inn) in split.items():
            modules[f"transformer.{name}"] = _factors(out, inn, rank, g, algo)
    for part, model in (te or {}).items():
        assert part in PIPE_PARTS[family]
        for name, m in model.named_modules():
            if isinstance(m, torch.nn.Linear) and any(w in name for w in ("q_proj", "v_proj", "fc1", ".q", ".wo")):
                modules[f"{part}.{te_path(name)}"] = _factors(*m.weight.shape, rank, g, "lora")
    return LoraFile(modules, {}, Naming(dit=family, fused=fused), source="test")


def all_linear_in_tables(family: str) -> bool:
    """Every Linear of the tiny transformer has a row in the family's table (the tables cover the model)."""
    names = [e for e in TABLES[family]]
    return bool(names) and all(split_entry(family, n) for n in _shapes(family))


def delta_2d(m: dict) -> torch.Tensor:
    """ΔW as (out, in) from a file module (s·up·down, LoHa, LoKr); a DoRA magnitude rides along as one more
    column, so that row selections are checked for it too."""
    from lorakit.formats.lycoris import file_delta

    lora = {s: t for s, t in m.items() if s != "dora_scale"}
    delta = file_delta(lora).reshape(file_delta(lora).shape[0], -1)
    return torch.cat([delta, m["dora_scale"].reshape(-1, 1)], 1) if "dora_scale" in m else delta


def split_deltas(lf: LoraFile, family: str) -> dict[str, torch.Tensor]:
    """{diffusers transformer path: ΔW (+ magnitude column)} of a fused file, by the tables' row rule written
    out here: (shift, scale) halves swapped where the entry says so, rows cut in the entry's ratios."""
    from lorakit.formats.dit_keys import fused_entry

    out = {}
    for key, m in lf.modules.items():
        part, path = key.split(".", 1)
        if part != "transformer":
            continue
        entry, index, _ = fused_entry(family, path)
        delta = delta_2d(m)
        inputs = delta.shape[1] - ("dora_scale" in m)
        if entry.swap == "always" or (entry.swap == "pre_only" and delta.shape[0] == 2 * inputs):
            delta = torch.cat(delta.chunk(2)[::-1])
        unit, start = delta.shape[0] // sum(entry.ratios), 0
        for k, r in enumerate(entry.ratios):
            out[entry.split[k].replace("{i}", index or "")] = delta[start:start + unit * r]
            start += unit * r
    return out


def _get(model, path: str):
    try:
        return model.get_submodule(path)
    except AttributeError:  # transformers 5's CLIPTextModel has no text_model level
        return model.get_submodule(path.removeprefix("text_model."))


@torch.no_grad()
def reference(models: dict, lf: LoraFile, family: str, strengths: dict | None = None) -> dict:
    """Deep copies of ``models`` ({pipeline attribute: module}) with the file merged in by the formulas:
    W += σ·ΔW (LoRA), W = W + σ·(m·(W+ΔW)/‖W+ΔW‖_row − W) (DoRA, per output row)."""
    import copy

    out = {a: copy.deepcopy(m) for a, m in models.items()}
    strengths = strengths or {}
    deltas = dict(split_deltas(lf, family)) if lf.naming.fused else {}
    for key, m in lf.modules.items():
        part, path = key.split(".", 1)
        if part == "transformer" and not lf.naming.fused:
            deltas[path] = delta_2d(m)
        elif part != "transformer" and PIPE_PARTS[family][part] in out:
            attr = PIPE_PARTS[family][part]
            _merge(_get(out[attr], path), delta_2d(m), "dora_scale" in m, strengths.get(attr, 1.0))
    for path, delta in deltas.items():
        dora = delta.shape[1] != _get(out["transformer"], path).weight.shape[1]
        _merge(_get(out["transformer"], path), delta, dora, strengths.get("transformer", 1.0))
    return out


def _merge(module, delta: torch.Tensor, dora: bool, strength: float) -> None:
    w = module.weight
    if dora:
        delta, mag = delta[:, :-1], delta[:, -1:]
        merged = w + delta.reshape(w.shape)
        target = mag * merged / merged.norm(dim=1, keepdim=True)
        w.copy_(w + strength * (target - w))
    else:
        w.copy_(w + strength * delta.reshape(w.shape))
