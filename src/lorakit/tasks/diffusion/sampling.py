"""Sample images during training with lorakit's one generation function (``lorakit.sd.generate``).

Every ``sample.every_n_epochs`` epochs / ``every_n_steps`` steps (and before training if asked), each
prompt of the kohya prompt file is drawn with a fixed seed (its ``--d``, else ``train.seed + index``)
so epochs compare; images go to ``sample/<name>_e000003_00_<seed>.png`` (kohya's naming) with A1111's
``parameters`` infotext, written by ``lorakit.sd.infotext.save_png`` exactly as ``sd generate`` writes
it, and one contact sheet per sampling, ``sample/<name>_sheet_<label>.png``, shows prompts × samplings
so far. The training RNG is saved and restored around sampling, so a run with samples trains exactly
as one without; the adapters' train/eval modes are restored too.

Sampling never costs the training: when a checkpoint is due at the same step, the checkpoint and
the LoRA file are written first (sampling waits for ``on_save``); a prompt that fails is reported on
stderr, listed in ``summary.json`` (``sample_errors``) and skipped, and training goes on. A run killed
while sampling resumes from that checkpoint and draws the interrupted sampling again.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from ...sd.generate import generate_images
from ...sd.grid import contact_sheet
from ...sd.infotext import save_png
from ...sd.sample_prompts import read_prompt_file
from ...train.callbacks import Callback, TrainState
from ...train.hooks import Checkpointer


class SampleImages(Callback):
    def __init__(self, cfg, parts, device: torch.device):
        self.cfg, self.parts, self.device = cfg, parts, device
        self.prompts = read_prompt_file(cfg.sample.prompts)  # the parser `lorakit validate` checks with
        self.dir = Path(cfg.train.output_dir) / "sample"
        self.columns: list[tuple[str, list[str]]] = []  # (label, image paths per prompt), in sampling order
        self.pending: int | None = None
        """A step whose sampling waits for its checkpoint (saved in that checkpoint: a resume draws it)."""
        self.errors: list[str] = []
        self.saved = -1  # the step of the last checkpoint (whatever the order of the callbacks)

    def _due(self, state: TrainState) -> bool:
        s, spe = self.cfg.sample, max(state.steps_per_epoch, 1)
        by_steps = s.every_n_steps and state.step % s.every_n_steps == 0
        by_epochs = s.every_n_epochs and state.step % (s.every_n_epochs * spe) == 0
        return bool(by_steps or by_epochs)

    def on_train_begin(self, state: TrainState) -> None:
        if self.pending is not None and self.pending == state.step:  # killed while sampling: draw it again
            self.sample(state)
        elif self.cfg.sample.before_training and state.step == 0:
            self.sample(state)
        self.pending = None

    def on_step_end(self, state: TrainState) -> None:
        if not self._due(state):
            return
        saving = any(isinstance(cb, Checkpointer) and cb.due(state) for cb in state.callbacks)
        if saving and self.saved != state.step:
            self.pending = state.step  # the checkpoint (and its LoRA file) first: see on_save
        else:
            self.sample(state)

    def on_save(self, state: TrainState, directory) -> None:
        self.saved = state.step
        if self.pending == state.step:
            self.sample(state)
            self.pending = None

    def on_train_end(self, state: TrainState) -> None:
        if self.errors and state.is_main_process:
            print(f"warning: {len(self.errors)} sample image(s) failed during training (listed above and in "
                  "summary.json as sample_errors); the training itself was not affected.", file=sys.stderr)

    def on_control(self, state: TrainState, command: str) -> bool:
        if command != "sample":
            return False
        self.sample(state)
        return True

    def sample(self, state: TrainState) -> list[Path]:
        """Draw every prompt now; returns the image paths (rank 0 only draws). A prompt that fails is
        reported and skipped (its cell of the contact sheet stays grey)."""
        if not state.is_main_process:
            return []
        spe = max(state.steps_per_epoch, 1)
        label = f"e{state.step // spe:06d}" if state.step % spe == 0 else f"{state.step:06d}"
        name, t = self.cfg.train.output_name, self.cfg.train
        self.dir.mkdir(parents=True, exist_ok=True)
        modes = [(m, m.training) for m in state.model.modules()]
        rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        paths: list[str] = []
        try:
            state.model.eval()
            with torch.no_grad():
                for i, p in enumerate(self.prompts):
                    seed = p.seed if p.seed is not None and p.seed >= 0 else t.seed + i
                    path = self.dir / f"{name}_{label}_{i:02d}_{seed}.png"
                    try:
                        image = generate_images(self.parts.extra["components"]["pipe"], p.prompt, p.negative,
                                                width=p.width, height=p.height, steps=p.steps, seed=seed,
                                                sampler=p.sampler or self.cfg.sample.sampler,
                                                **self._family_options(p))[0]
                        save_png(image, path, overwrite=True)
                        paths.append(str(path))
                    except Exception as exc:  # noqa: BLE001  (a sample must never end the training)
                        self._report(p, state.step, exc)
                        paths.append("")
        finally:
            for m, mode in modes:
                m.training = mode
            torch.set_rng_state(rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state_all(cuda_rng)
        self.columns.append((label, paths))
        self._sheet(label)
        return [Path(p) for p in paths if p]

    def _family_options(self, p) -> dict:
        """kohya's per-family defaults: SD CFG 7.5 with clip_skip; FLUX.1 CFG 1 (off) and distilled guidance
        ``--g`` (3.5); SD3 the generator's CFG. None lets ``generate_images`` fill the family's default."""
        if not self.parts.extra.get("dit"):
            return {"cfg_scale": 7.5 if p.cfg is None else p.cfg, "clip_skip": self.cfg.train.clip_skip}
        return {"cfg_scale": p.cfg, "guidance": p.guidance}

    def _report(self, prompt, step: int, exc: Exception) -> None:
        text = (str(exc).splitlines() or [""])[0][:300]
        message = f"{prompt.where or 'sample prompt'} at step {step}: {type(exc).__name__}: {text}"
        self.errors.append(message)
        print(f"warning: sample image failed, training goes on: {message}", file=sys.stderr, flush=True)

    def _sheet(self, label: str) -> Path | None:
        """Prompts (rows) × samplings so far (columns), each image at its own size (letterboxed), grey at
        the first image's size where a sample failed."""
        from PIL import Image

        cols = [(lab, ps) for lab, ps in self.columns
                if len(ps) == len(self.prompts) and all(not p or Path(p).is_file() for p in ps)]
        first = next((p for _, ps in cols for p in ps if p), None)
        if first is None:
            return None
        size = Image.open(first).size
        rows = [[Image.open(ps[i]).convert("RGB") if ps[i] else Image.new("RGB", size, (128, 128, 128))
                 for _, ps in cols] for i in range(len(self.prompts))]
        sheet = contact_sheet(rows, [p.prompt for p in self.prompts], [lab for lab, _ in cols])
        out = self.dir / f"{self.cfg.train.output_name}_sheet_{label}.png"
        sheet.save(out)
        return out

    def state_dict(self) -> dict:
        return {"columns": [[lab, ps] for lab, ps in self.columns], "pending": self.pending, "errors": self.errors}

    def load_state_dict(self, state: dict) -> None:
        self.columns = [(lab, list(ps)) for lab, ps in state.get("columns", [])]
        self.pending, self.errors = state.get("pending"), list(state.get("errors", []))
