"""Auto-captioning with a local ``transformers`` image-to-text model: BLIP, GIT, Florence-2, or a
vision-language model with a chat template — whatever ``AutoProcessor`` and ``AutoModelForImageTextToText``
(or ``AutoModelForCausalLM``, for GIT) load from the directory, offline (``local_files_only``).

    captioner = TransformersCaptioner("models/blip-large", prompt="a photo of")
    caption_folder(Path("datasets/x"), captioner, prefix="sks", overwrite=False)

``lorakit caption DIR --model M`` runs it; ``lorakit ui`` runs that command as a job and reads its
progress file. Inside a workspace every replaced caption stays undoable (one batch).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Protocol

from ..formats._io import write_json
from ..tasks.diffusion.dataset.scan import IMAGE_EXTENSIONS, read_image
from . import captions


class Captioner(Protocol):
    """Anything that turns images into caption texts."""

    def caption(self, images: list) -> list[str]: ...


class TransformersCaptioner:
    """A local transformers model (see the module docstring). ``prompt``: the text the caption continues
    (BLIP, GIT), a task token (Florence-2's ``<MORE_DETAILED_CAPTION>``) or, for a chat model, the request."""

    def __init__(self, model_dir: str | Path, prompt: str = "", max_new_tokens: int = 40, device: str = "cpu"):
        import torch
        from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor

        path = Path(model_dir)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"captioning model {model_dir}: no config.json; expected a local transformers "
                                    "model directory (save_pretrained of BLIP, GIT, Florence-2 or a VLM).")
        self.processor = AutoProcessor.from_pretrained(str(path), local_files_only=True)
        errors = []
        for auto in (AutoModelForImageTextToText, AutoModelForCausalLM):
            try:
                self.model = auto.from_pretrained(str(path), local_files_only=True, dtype=torch.float32)
                break
            except (ValueError, KeyError, OSError) as exc:
                errors.append(f"{auto.__name__}: {str(exc).splitlines()[0][:200]}")
        else:
            raise ValueError(f"captioning model {model_dir}: transformers cannot load it as an image-to-text model "
                             f"({'; '.join(errors)}).")
        self.model.to(device).eval()
        self.prompt, self.max_new_tokens, self.device = prompt, max_new_tokens, device
        template = getattr(self.processor, "chat_template", None)
        self.chat = bool(template) and bool(prompt)

    def _inputs(self, images: list):
        if self.chat:
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.prompt}]}]
            text = self.processor.apply_chat_template(messages, add_generation_prompt=True)
            return self.processor(images=images, text=[text] * len(images), return_tensors="pt", padding=True)
        if self.prompt:
            return self.processor(images=images, text=[self.prompt] * len(images), return_tensors="pt", padding=True)
        return self.processor(images=images, return_tensors="pt")

    def caption(self, images: list) -> list[str]:
        import torch

        inputs = self._inputs(images).to(self.device)
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        ids = inputs.get("input_ids")
        if ids is not None and out.shape[1] > ids.shape[1] and torch.equal(out[:, :ids.shape[1]], ids):
            out = out[:, ids.shape[1]:]  # decoder-only models repeat the prompt: keep what they added
        texts = self.processor.batch_decode(out, skip_special_tokens=True)
        return [" ".join(t.split()) for t in texts]


def images_of(root: Path) -> list[Path]:
    """Images of a dataset folder and its subfolders (hidden folders and files skipped)."""
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def caption_folder(root: Path, captioner: Captioner, *, prefix: str = "", suffix: str = "", overwrite: bool = False,
                   progress: Path | None = None, store: captions.Captions | None = None, batch_size: int = 4) -> dict:
    """Caption every image under ``root``: ``prefix caption suffix``; existing captions are skipped unless
    ``overwrite``. ``store`` (a workspace's captions) keeps every replaced text undoable as one batch."""
    todo = [p for p in images_of(root) if overwrite or captions.read(p) is None]
    counts = {"total": len(todo), "done": 0, "written": 0, "skipped": len(images_of(root)) - len(todo),
              "state": "running", "started": time.time()}
    batch = f"{time.time_ns()}"

    def report(state: str | None = None, current: str | None = None) -> None:
        if state:
            counts["state"] = state
        if progress is not None:
            write_json(progress, {**counts, "current": current, "updated": time.time()})

    report()
    try:
        for i in range(0, len(todo), batch_size):
            chunk = todo[i:i + batch_size]
            texts = captioner.caption([read_image(p) for p in chunk])
            for image, text in zip(chunk, texts, strict=True):
                full = " ".join(x for x in (prefix.strip(), text.strip(), suffix.strip()) if x)
                if store is not None:
                    counts["written"] += store.replace(image, full or None, batch)
                else:
                    captions.Captions.write_plain(image, full or None)
                    counts["written"] += 1
                counts["done"] += 1
            report(current=str(chunk[-1].relative_to(root)))
    except BaseException:
        report("failed")
        raise
    finally:
        if store is not None:
            store.record(batch, f"{root.name}: auto-caption", todo[:counts["done"]])
    report("done")
    return counts


def caption_argv(dataset: str, model: str, *, prefix: str, suffix: str, overwrite: bool, prompt: str,
                 max_new_tokens: int, progress: str) -> list[str]:
    """The ``lorakit caption`` command of a UI captioning job (paths relative to the workspace)."""
    from .runner import lorakit_argv

    argv = lorakit_argv("caption", dataset, "--model", model, "--prefix", prefix, "--suffix", suffix,
                        "--prompt", prompt, "--max-new-tokens", str(int(max_new_tokens)), "--progress", progress,
                        "--workspace", ".")
    return argv + (["--overwrite"] if overwrite else [])
