"""Read any Stable Diffusion LoRA file (kohya/LyCORIS, diffusers, PEFT directory) and convert between them."""

from __future__ import annotations

from pathlib import Path

from . import kohya, peft_sd
from ._io import read_safetensors
from .errors import LoraFileError
from .lorafile import LoraFile
from .sd_keys import SDXL, UnetLayout
from .validate import check_lora

TARGETS = ("kohya", "peft")


def read_lora(path, layout: UnetLayout = SDXL, allow_pickle: bool = False) -> LoraFile:
    """Detect the format of ``path`` and read it. ``layout`` maps SAI block names (SDXL by default).

    The result is validated completely (:func:`.validate.check_lora`); a bad file raises ``LoraFileError``."""
    path = Path(path)
    if path.is_dir():
        return check_lora(peft_sd.read_peft_dir(path, allow_pickle=allow_pickle), path, names=True)
    tensors, metadata = read_safetensors(path, allow_pickle=allow_pickle)
    if not tensors:
        raise LoraFileError(path, "holds no tensors; expected a LoRA file.")
    if kohya.is_kohya(tensors):
        return check_lora(kohya.from_state_dict(tensors, metadata, layout, str(path)), path, names=True)
    if peft_sd.is_diffusers(tensors):
        return check_lora(peft_sd.from_state_dict(tensors, metadata, source=str(path)), path, names=True)
    raise LoraFileError(path, f"unrecognised LoRA key style (first keys: {sorted(tensors)[:3]}). Expected kohya "
                        "(lora_unet_/lora_te_), diffusers (unet./text_encoder.) or PEFT (base_model.model.) keys.")


def write_lora(lf: LoraFile, path, to: str = "kohya", dtype=None) -> Path:
    """Write ``lf`` as a kohya ``.safetensors`` file or a PEFT directory (atomically per file)."""
    if to == "kohya":
        kohya.write_kohya(lf, path, dtype=dtype)
    elif to == "peft":
        if dtype is not None:
            raise ValueError("dtype casting is only offered for kohya output; PEFT output keeps the input dtypes.")
        peft_sd.write_peft(lf, path)
    else:
        raise ValueError(f"to={to!r}: expected one of {TARGETS}.")
    return Path(path)


def convert(src, dst, to: str, layout: UnetLayout = SDXL, dtype=None) -> LoraFile:
    """Convert ``src`` to format ``to`` at ``dst``; the input is never modified (dst must differ)."""
    if Path(src).resolve() == Path(dst).resolve():
        raise ValueError(f"output {dst} is the input file; choose another output path (inputs are never overwritten).")
    lf = read_lora(src, layout)
    write_lora(lf, dst, to, dtype)
    return lf
