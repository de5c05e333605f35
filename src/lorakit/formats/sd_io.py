"""Read any image-model LoRA file and convert between formats: Stable Diffusion (kohya/LyCORIS, diffusers,
PEFT directory) and FLUX.1/SD3 (kohya, diffusers/PEFT, ComfyUI; :mod:`.dit_io`).

    lf = read_lora("flux_style.safetensors")          # lf.family() == "flux1"
    notes = write_lora(lf, "style_peft.safetensors", to="peft")
"""

from __future__ import annotations

from pathlib import Path

from . import dit_io, kohya, peft_sd
from ._io import read_safetensors
from .errors import LoraFileError
from .lorafile import LoraFile
from .sd_keys import SDXL, UnetLayout
from .validate import check_lora

TARGETS = ("kohya", "peft", "comfy")
DIT = ("flux1", "sd3")


def read_lora(path, layout: UnetLayout = SDXL, allow_pickle: bool = False) -> LoraFile:
    """Detect the format of ``path`` and read it. ``layout`` maps SAI block names (SDXL by default).

    A FLUX.1/SD3 file (transformer or T5 module names) gives a ``LoraFile`` with parts ``transformer``,
    ``te1``/``te2``/``te3`` and ``family()`` ``flux1``/``sd3`` (None when its names fit both).
    The result is validated completely (:func:`.validate.check_lora`); a bad file raises ``LoraFileError``."""
    path = Path(path)
    if path.is_dir():
        return check_lora(peft_sd.read_peft_dir(path, allow_pickle=allow_pickle), path, names=True)
    tensors, metadata = read_safetensors(path, allow_pickle=allow_pickle)
    if not tensors:
        raise LoraFileError(path, "holds no tensors; expected a LoRA file.")
    if dit_io.is_dit(tensors):
        return check_lora(dit_io.from_state_dict(tensors, metadata, str(path)), path, names=True)
    if kohya.is_kohya(tensors):
        return check_lora(kohya.from_state_dict(tensors, metadata, layout, str(path)), path, names=True)
    if peft_sd.is_diffusers(tensors):
        return check_lora(peft_sd.from_state_dict(tensors, metadata, source=str(path)), path, names=True)
    raise LoraFileError(path, f"unrecognised LoRA key style (first keys: {sorted(tensors)[:3]}). Expected kohya "
                        "(lora_unet_/lora_te_), diffusers (unet./transformer./text_encoder.), PEFT (base_model.model.) or "
                        "ComfyUI (diffusion_model.) keys.")


def write_lora(lf: LoraFile, path, to: str = "kohya", dtype=None, family: str | None = None) -> list[str]:
    """Write ``lf`` (atomically per file): SD files as a kohya ``.safetensors`` or a PEFT directory; FLUX.1/SD3
    files as one ``.safetensors`` in kohya, diffusers/PEFT or ComfyUI style. ``family`` names the family of a
    DiT file whose names fit both. Returns notes on modules whose rank rose when split parts were fused."""
    if to not in TARGETS:
        raise ValueError(f"to={to!r}: expected one of {TARGETS}.")
    if lf.naming.dit or family in DIT:
        return dit_io.write_dit(lf, path, to, dtype, family)
    if to == "kohya":
        kohya.write_kohya(lf, path, dtype=dtype)
    elif to == "peft":
        if dtype is not None:
            raise ValueError("dtype casting is only offered for kohya output; PEFT output keeps the input dtypes.")
        peft_sd.write_peft(lf, path)
    else:
        raise ValueError("to='comfy' is for FLUX.1/SD3 LoRAs; Stable Diffusion LoRAs convert to kohya (which "
                         "ComfyUI reads) or peft.")
    return []


def convert(src, dst, to: str, layout: UnetLayout = SDXL, dtype=None, family: str | None = None
            ) -> tuple[LoraFile, list[str]]:
    """Convert ``src`` to format ``to`` at ``dst``; the input is never modified (dst must differ).
    Returns the file read and the notes of :func:`write_lora`."""
    if Path(src).resolve() == Path(dst).resolve():
        raise ValueError(f"output {dst} is the input file; choose another output path (inputs are never overwritten).")
    lf = read_lora(src, layout)
    return lf, write_lora(lf, dst, to, dtype, family)
