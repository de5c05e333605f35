"""The memory calculator for diffusion runs (SD1/SD2/SDXL U-Nets, FLUX.1/SD3 transformers): the same
``Estimate`` and table as the text task's (:mod:`lorakit.train.estimate`), from the run's own models.

Every part the pipeline lists in ``model_index.json`` (U-Net or transformer, each text encoder, the VAE) is
built from its config inside ``FakeTensorMode`` (no weight is read or allocated), and the task's own
``build`` injects the network into them, so the parameter counts are the trainer's, for every module kind,
block selection and shared (fused q/k/v) factor. Bytes: the U-Net/transformer and the text encoders in
``model.dtype``, the VAE in float32 (the trainer always runs it there), a QLoRA transformer's Linear weights
4-bit packed (:func:`lorakit.quant.packed_bytes`), adapters fp32 with their fp32 gradients and the
optimizer's state.

Activations: the peak of live tensor bytes over one forward + backward of the run's step
(``SDNetwork``/``DitNetwork``) on a fake micro-batch of ``train.batch_size`` images at the largest bucket
(:func:`lorakit.train.trace.step_peak`): gradient checkpointing, the VAE encoding inside the step when
latents are not cached and the text encoders' forward when their outputs are not cached are all in it.

What every process holds whole (FSDP shards only the U-Net/transformer and the text encoders): the VAE and
the caches. The trainer keeps the VAE and the text encoders loaded after it fills the caches (the VAE
decodes samples and keys the cache; the text encoders encode sample prompts), so caching removes their
work from the step, not their weights: the table shows both.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from ...train.estimate import BYTES, Estimate, Part, _sizes, _units
from ...train.trace import cast_in_place, fake_mode, step_peak

PARTS = ("unet", "transformer", "vae", "text_encoder", "tokenizer")
CAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def model_dir(model_args) -> Path:
    """The diffusers directory whose configs describe the model (``model.config`` for a single file)."""
    path = Path(model_args.path)
    return Path(model_args.config) if path.is_file() and model_args.config else path


def _component(root: Path, name: str, spec: list) -> object:
    """Part ``name`` of the pipeline at ``root``: a model built from its config (inside the caller's fake mode)
    or a tokenizer loaded as it is (a few small files)."""
    import diffusers
    import transformers

    library, cls_name = spec
    if library == "diffusers":
        cls = getattr(diffusers, cls_name)
        return cls.from_config(cls.load_config(root / name))
    cls = getattr(transformers, cls_name)
    if "Tokenizer" in cls_name:
        return cls.from_pretrained(root / name, local_files_only=True)
    return cls._from_config(transformers.AutoConfig.from_pretrained(root / name, local_files_only=True))


def fake_components(cfg, root: Path) -> dict:
    """The pipeline's parts as ``load_components`` returns them, built from configs: fake weights."""
    from ...sd.pipeline import _family_of_dir
    from .task import DTYPES

    index = json.loads((root / "model_index.json").read_text())
    skip = {"text_encoder_3", "tokenizer_3"} if cfg.model.drop_t5 else set()
    comps = {name: _component(root, name, spec) for name, spec in index.items()
             if isinstance(spec, list) and spec[1] and name not in skip and name.startswith(PARTS)}
    for name, part in comps.items():
        if isinstance(part, torch.nn.Module):  # diffusers' own Module.to warns about casts: cast directly
            cast_in_place(part, dtype=torch.float32 if name == "vae" else DTYPES[cfg.model.dtype])
    scheduler = root / "scheduler" / "scheduler_config.json"
    comps.update(family=_family_of_dir(root), pipe=None,
                 scheduler_config=json.loads(scheduler.read_text()) if scheduler.is_file() else {})
    return comps


def _largest_bucket(cfg, data) -> tuple[int, int]:
    """(width, height) of the micro-batch with most pixels: the largest bucket the scan assigned, else the
    configured resolution."""
    buckets = [i.bucket for d in getattr(data, "datasets", []) for i in d.items if i.bucket != (0, 0)]
    if buckets:
        return max(buckets, key=lambda b: b[0] * b[1])
    res = cfg.data.resolution
    return tuple(res) if isinstance(res, (list, tuple)) else (res, res)


def _fake_batch(net, vae, cfg, size: tuple[int, int], text_cached: bool) -> dict:
    """A micro-batch as the dataset yields it: cached latents or pixels, cached text states or captions."""
    w, h = size
    b, down = cfg.train.batch_size, 2 ** (len(vae.config.block_out_channels) - 1)
    batch = {"loss_weight": torch.ones(b), "captions": ["a photo of sks dog"] * b,
             **{k: torch.full((b, 2), v, dtype=torch.long) for k, v in
                (("original_size", h), ("crop_top_left", 0), ("target_size", h))}}
    if cfg.data.cache_latents:
        batch["latents"] = torch.randn(b, vae.config.latent_channels, h // down, w // down)
    else:
        batch["pixels"] = torch.rand(b, 3, h, w) * 2 - 1
    if text_cached:
        with torch.no_grad():
            batch.update({f"te_{k}": v for k, v in net.encode_text(batch.pop("captions")).items()})
    return batch


def _text_entry_bytes(net) -> int:
    """Bytes one cached caption takes (every tensor ``encode_text`` returns for it)."""
    with torch.no_grad():
        return sum(v.nbytes for v in net.encode_text(["a photo of sks dog"]).values())


def _caches(cfg, data, vae, net, text_cached: bool) -> dict[str, int]:
    """Rows of the in-memory latent and text caches (every process holds all of them)."""
    items = [(i, d.spec) for d in getattr(data, "datasets", []) for i in d.items]
    out, down = {}, 2 ** (len(vae.config.block_out_channels) - 1)
    if cfg.data.cache_latents and items:
        per = [vae.config.latent_channels * (i.bucket[0] // down) * (i.bucket[1] // down) * 4
               * (2 if getattr(i.subset, "flip_aug", False) else 1) for i, _ in items]
        out[f"latent cache ({len(items)} images)"] = sum(per)
    if text_cached and items:
        captions = len({i.caption for i, _ in items})
        out[f"text cache ({captions} captions)"] = captions * _text_entry_bytes(net)
    return out


def diffusion_estimate(cfg, data=None) -> Estimate:
    """The diffusion run ``cfg`` (an ``SDRunConfig``) on the scanned dataset ``data`` (``build_dataset(...,
    scan_only=True)``; None: the configured resolution, no cache rows). Builds nothing real."""
    from ...config import LoraConfig
    from ...inject import quantize_targets
    from ...quant import packed_bytes  # noqa: F401  (its import computes tables: before the fake mode)
    from .task import TASK, is_dit

    m, t, n = cfg.model, cfg.train, cfg.network
    dit = is_dit(cfg)
    quant = n.quantize if dit else "none"
    targets = LoraConfig(quantize=quant)
    run = dataclasses.replace(cfg, network=dataclasses.replace(n, quantize="none", network_weights=None),
                              train=dataclasses.replace(t, blocks_to_swap=0) if dit else t)
    with fake_mode():
        comps = fake_components(run, model_dir(m))
        main = "transformer" if dit else "unet"
        quantized = {f"{main}.{q}" for q in quantize_targets(comps[main], targets)}
        parts = TASK.build(run, torch.device("cpu"), comps, check_save=False)
        net, vae = parts.model, comps["vae"]
        sizes = _sizes(net, m.dtype, quantized, (quant, True))
        frozen: dict[str, int] = {}
        for kind, size in sizes.values():
            if kind != "trainable":
                frozen[kind] = frozen.get(kind, 0) + size
        params = sum(p.numel() for p in net.parameters())
        trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
        est = Estimate(params, trainable, frozen, t.optimizer)
        est.parts = [_part(name, module, prefix, sizes) for name, module, prefix in
                     [(main, getattr(net, main), main + ".")]
                     + [(k, te, f"text_encoders.{k}.") for k, te in net.text_encoders.items()]]
        vae_sizes = _sizes(vae, "float32", set(), (quant, True))
        est.parts.append(_part("vae", vae, "", vae_sizes))
        est.blocks, est.block_bytes, est.root_bytes = _units(net, t.fsdp_wrap, sizes)
        text_cached = cfg.data.cache_text_encoder_outputs and all(
            lr == 0 for p, lr in parts.extra["lrs"].items() if p not in ("unet", "transformer"))
        est.held_bytes = {"vae (whole on every process)": sum(vae_sizes[k][1] for k in vae_sizes)}
        est.held_bytes |= _caches(cfg, data, vae, net, text_cached)
        size = _largest_bucket(cfg, data)
        batch = _fake_batch(net, vae, cfg, size, text_cached)
        net.train()
        est.activation_bytes = step_peak(lambda: net(batch), CAST.get(t.mixed_precision))
    if quantized:  # one 4-bit layer dequantised at a time, as in the text task's estimate
        compute = BYTES[m.dtype] if t.mixed_precision == "no" else 2
        layers = [comps[main].get_submodule(q.split(".", 1)[1]) for q in quantized]
        largest = max(getattr(layer, "base_layer", layer).weight.numel() for layer in layers)
        est.transient_bytes = 2 * largest * compute
    est.notes = _notes(cfg, size, text_cached)
    return est


def _part(name: str, module: torch.nn.Module, prefix: str, sizes: dict[str, tuple[str, int]]) -> Part:
    own = {k: v for k, v in sizes.items() if k.startswith(prefix)}
    frozen: dict[str, int] = {}
    for kind, size in own.values():
        if kind != "trainable":
            frozen[kind] = frozen.get(kind, 0) + size
    return Part(name, sum(p.numel() for p in module.parameters()),
                sum(p.numel() for p in module.parameters() if p.requires_grad), frozen)


def _notes(cfg, size: tuple[int, int], text_cached: bool) -> list[str]:
    d, t = cfg.data, cfg.train
    latents = "cached" if d.cache_latents else "encoded by the VAE in every step"
    notes = [f"step: batch {t.batch_size} at {size[0]}x{size[1]}, latents {latents}, text "
             + ("cached" if text_cached else "encoded in every step")
             + (", gradient checkpointing" if t.gradient_checkpointing else "")
             + "; the VAE and the text encoders stay loaded after caching (samples use them)."]
    if cfg.sample.prompts:
        notes.append("sampling (sample.prompts) runs the pipeline at the sample size between steps: not counted.")
    return notes
