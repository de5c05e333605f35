"""Sample images during training with lorakit's one generation function (``lorakit.sd.generate``).

Every ``sample.every_n_epochs`` epochs / ``every_n_steps`` steps (and before training if asked), each
prompt of the kohya prompt file is drawn with a fixed seed (its ``--d``, else ``train.seed + index``)
so epochs compare; images go to ``sample/<name>_e000003_00_<seed>.png`` (kohya's naming) and one
contact sheet per sampling, ``sample/<name>_sheet_<label>.png``, shows prompts × samplings so far.
The training RNG is saved and restored around sampling, so a run with samples trains exactly as one
without; the adapters' train/eval modes are restored too.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ...sd.generate import generate_images
from ...sd.grid import contact_sheet
from ...sd.sample_prompts import read_prompt_file
from ...train.callbacks import Callback, TrainState


class SampleImages(Callback):
    def __init__(self, cfg, parts, device: torch.device):
        self.cfg, self.parts, self.device = cfg, parts, device
        self.prompts = read_prompt_file(cfg.sample.prompts)
        self.dir = Path(cfg.train.output_dir) / "sample"
        self.columns: list[tuple[str, list[str]]] = []  # (label, image paths per prompt), in sampling order

    def _due(self, state: TrainState) -> bool:
        s, spe = self.cfg.sample, max(state.steps_per_epoch, 1)
        by_steps = s.every_n_steps and state.step % s.every_n_steps == 0
        by_epochs = s.every_n_epochs and state.step % (s.every_n_epochs * spe) == 0
        return bool(by_steps or by_epochs)

    def on_train_begin(self, state: TrainState) -> None:
        if self.cfg.sample.before_training and state.step == 0:
            self.sample(state)

    def on_step_end(self, state: TrainState) -> None:
        if self._due(state):
            self.sample(state)

    def sample(self, state: TrainState) -> list[Path]:
        """Draw every prompt now; returns the image paths (rank 0 only draws)."""
        if not state.is_main_process:
            return []
        spe = max(state.steps_per_epoch, 1)
        at_epoch = state.step % spe == 0
        label = f"e{state.step // spe:06d}" if at_epoch else f"{state.step:06d}"
        name, t = self.cfg.train.output_name, self.cfg.train
        self.dir.mkdir(parents=True, exist_ok=True)
        modes = [(m, m.training) for m in state.model.modules()]
        rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        paths = []
        try:
            state.model.eval()
            with torch.no_grad():
                for i, p in enumerate(self.prompts):
                    seed = p.seed if p.seed is not None and p.seed >= 0 else t.seed + i
                    image = generate_images(self.parts.extra["components"]["pipe"], p.prompt, p.negative,
                                            width=p.width, height=p.height, steps=p.steps, seed=seed,
                                            sampler=p.sampler or self.cfg.sample.sampler, **self._family_options(p))[0]
                    path = self.dir / f"{name}_{label}_{i:02d}_{seed}.png"
                    image.save(path)
                    paths.append(path)
        finally:
            for m, mode in modes:
                m.training = mode
            torch.set_rng_state(rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state_all(cuda_rng)
        self.columns.append((label, [str(p) for p in paths]))
        self._sheet(label)
        return paths

    def _family_options(self, p) -> dict:
        """kohya's per-family defaults: SD CFG 7.5 with clip_skip; FLUX.1 CFG 1 (off) and distilled guidance
        ``--g`` (3.5); SD3 the generator's CFG. None lets ``generate_images`` fill the family's default."""
        if not self.parts.extra.get("dit"):
            return {"cfg_scale": 7.5 if p.cfg is None else p.cfg, "clip_skip": self.cfg.train.clip_skip}
        return {"cfg_scale": p.cfg, "guidance": p.guidance}

    def _sheet(self, label: str) -> Path:
        """Prompts (rows) × samplings so far (columns), each cell at the first prompt's size."""
        from PIL import Image

        cols = [(lab, [Path(p) for p in ps]) for lab, ps in self.columns if all(Path(p).is_file() for p in ps)]
        images = [[Image.open(ps[i]).convert("RGB") for _, ps in cols] for i in range(len(self.prompts))]
        size = images[0][0].size
        rows = [[im if im.size == size else im.resize(size) for im in row] for row in images]
        sheet = contact_sheet(rows, [p.prompt for p in self.prompts], [lab for lab, _ in cols])
        out = self.dir / f"{self.cfg.train.output_name}_sheet_{label}.png"
        sheet.save(out)
        return out

    def state_dict(self) -> dict:
        return {"columns": [[lab, ps] for lab, ps in self.columns]}

    def load_state_dict(self, state: dict) -> None:
        self.columns = [(lab, list(ps)) for lab, ps in state.get("columns", [])]
