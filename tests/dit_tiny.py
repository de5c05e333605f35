"""The tiny FLUX.1 / SD3 pipelines of ``dit_models`` as the diffusion task's components, and saved as
local pipeline directories for the trainer's end-to-end tests."""

from __future__ import annotations

from pathlib import Path

import dit_models

PARTS = ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "text_encoder_3",
         "tokenizer_3")


def pipe(family: str, guidance: bool = True):
    """The tiny pipeline (FLUX.1 dev-like with ``guidance``, schnell-like without)."""
    p = dit_models.flux_pipe() if family == "flux1" else dit_models.sd3_pipe()
    if family == "flux1" and not guidance:
        p.transformer = dit_models.flux_transformer(in_channels=64, guidance=False)
    t5 = "text_encoder_2" if family == "flux1" else "text_encoder_3"
    tok = getattr(p, "tokenizer_2" if family == "flux1" else "tokenizer_3")
    if getattr(p, t5).config.vocab_size < len(tok):  # every id the tokenizer gives (characters too) needs a row
        setattr(p, t5, dit_models.t5(vocab=len(tok)))
    return p


def components(family: str, guidance: bool = True, drop_t5: bool = False) -> dict:
    """The parts the diffusion task loads, built in memory."""
    p = pipe(family, guidance)
    comps = {k: getattr(p, k) for k in PARTS if getattr(p, k, None) is not None}
    if drop_t5:
        comps.pop("text_encoder_3"), comps.pop("tokenizer_3")
    comps.update(scheduler_config=dict(p.scheduler.config), family=family)
    return comps


def save_pipeline(root: Path, family: str, guidance: bool = True) -> Path:
    """The tiny pipeline saved as a local diffusers directory at ``root``."""
    pipe(family, guidance).save_pretrained(str(root))
    return Path(root)
