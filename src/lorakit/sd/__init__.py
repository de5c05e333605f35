"""Stable Diffusion, FLUX.1 and SD3: LoRA files on diffusers models, and image generation with A1111 prompt semantics.

- :mod:`lorakit.sd.lora` — apply kohya/LyCORIS/DoRA files as live adapters or merged weights.
- :mod:`lorakit.sd.dit_lora` — FLUX.1/SD3 files on diffusers pipelines; live adapters -> ``LoraFile``.
- :mod:`lorakit.sd.pipeline` — load a local diffusers dir or single-file checkpoint; detect the family.
- :mod:`lorakit.sd.prompt` — A1111 emphasis, BREAK, 75-token chunks, per-token weights (and ComfyUI's).
- :mod:`lorakit.sd.schedule` — A1111 prompt editing ``[a:b:when]``, alternation ``[a|b]`` and ``AND``.
- :mod:`lorakit.sd.generate` — ``generate_images``: prompt text + ``<lora:...>`` tags -> PIL images,
  sampled by :mod:`lorakit.sd.denoise` (composable guidance, NaN/Inf checks).
- :mod:`lorakit.sd.samplers`, :mod:`~lorakit.sd.infotext`, :mod:`~lorakit.sd.grid`,
  :mod:`~lorakit.sd.sample_prompts`, :mod:`~lorakit.sd.embeddings`.

The submodules that need diffusers/PIL import them lazily, so ``from lorakit.sd import load_lora``
stays as light as before.
"""

from .dit_lora import lora_file_from_model
from .lora import MODES, PARTS, check_family, file_parts, load_lora, model_parts, unload_lora

__all__ = ["MODES", "PARTS", "check_family", "file_parts", "load_lora", "lora_file_from_model", "model_parts",
           "unload_lora"]
