"""Third-party warnings that say nothing about the user's job, kept out of the CLI's output (a terminal, or the
``train.log`` of a training launched by the web UI, whose log panel shows it).

Each filter drops one message of one logger, nothing else:

- diffusers' quantizers import bitsandbytes, whose CPU backend then tries to fetch an optional kernel from the Hub
  and warns twice when it cannot (offline, untrusted); lorakit's NF4 (``lorakit.quant``) never uses that kernel.
- transformers warns that an image processor falls back to PIL without torchvision; lorakit's training and
  generation do not use a pipeline's image processor.
"""

from __future__ import annotations

import logging

DROPPED = {
    "bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward from kernels-community",
    "kernels._internals.hf_hub": "Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes'",
    "transformers.utils.import_utils": "requires torchvision (not installed); falling back to",
}


class _Drop(logging.Filter):
    def __init__(self, needle: str):
        super().__init__()
        self.needle = needle

    def filter(self, record: logging.LogRecord) -> bool:
        return self.needle not in record.getMessage()


def quiet_third_party() -> None:
    """Install the filters (idempotent). A logger filter sees only its own logger's records, so each goes on the
    logger that emits the message; the loggers need not exist yet (the libraries fetch the same objects)."""
    for name, needle in DROPPED.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Drop) for f in logger.filters):
            logger.addFilter(_Drop(needle))
