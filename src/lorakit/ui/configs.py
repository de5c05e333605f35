"""Training configs in ``configs/``: presets, the form's and the YAML editor's saves (with a version check so
two tabs never silently overwrite each other), ``lorakit validate``'s checks, and launching a run.

A launch writes ``runs/<run>/launch.yaml``: the config with ``train.output_dir`` set to that run folder
(kept byte for byte when it already names it) — the file the job trains from, kept with the run.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import yaml

from ..demos.sdworld.demo import ROOT
from ..train.config import read_yaml, validate_data
from . import schema
from .workspace import PathError, Workspace, check_name

PRESETS = Path(__file__).with_name("presets")
SDWORLD_BASE = ROOT / "assets" / "sdworld-base"  # shipped in the source checkout, referenced, never copied
EXAMPLE = "sdworld-rings"


def text_version(text: str | None) -> str:
    return "" if text is None else hashlib.sha1(text.encode()).hexdigest()[:16]


def parse(text: str) -> dict:
    """A config's mapping; a clear error for YAML that is not a mapping of sections."""
    try:
        data = read_yaml(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"not valid YAML: {str(exc).replace('<unicode string>', 'the config')}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"expected a YAML mapping of sections (model, data, network, train, sample), got "
                         f"{type(data).__name__}.")
    return data


class Configs:
    def __init__(self, ws: Workspace):
        self.ws = ws

    def path(self, name: str) -> Path:
        check_name(name, "config")
        return self.ws.resolve(f"configs/{name}.yaml")

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.ws.configs.glob("*.yaml") if not p.name.startswith("."))

    def read(self, name: str) -> str:
        path = self.path(name)
        if not path.is_file():
            raise FileNotFoundError(f"config {name!r}: not found in configs/.")
        return path.read_text(encoding="utf-8")

    def presets(self) -> dict[str, str]:
        return presets()

    def create(self, name: str, preset: str, form: dict | None = None) -> Path:
        path = self.path(name)
        if path.exists():
            raise FileExistsError(f"config {name!r} already exists; open it, or choose another name.")
        presets = self.presets()
        if preset not in presets:
            raise ValueError(f"preset {preset!r}: expected one of {', '.join(presets)}.")
        text = presets[preset]
        if form:
            data, errors = schema.apply_form(parse(text), form)
            if errors:
                raise ValueError("; ".join(errors))
            text = schema.dump(data) if data != parse(text) else text
        self.ws.write_text(path, text)
        return path

    def save_text(self, name: str, text: str, base: str | None) -> str:
        """Write the YAML editor's text (it must parse as a mapping); refuses when the file changed since
        the editor loaded it (``base``), so the other change is not lost."""
        parse(text)
        path = self.path(name)
        now = path.read_text(encoding="utf-8") if path.is_file() else None
        if base is not None and base != text_version(now):
            raise FileExistsError(f"config {name!r} was changed elsewhere since this page loaded it; reload the page "
                                  "(your text is still in the editor: copy it first).")
        self.ws.write_text(path, text)
        return text_version(text)

    def save_form(self, name: str, form: dict, base: str | None) -> str:
        text = self.read(name)
        data = parse(text)
        new, errors = schema.apply_form(data, form)
        if errors:
            raise ValueError("; ".join(errors))
        return self.save_text(name, schema.dump(new) if new != data else text, base)

    def prompts_path(self, name: str) -> Path | None:
        """The config's ``sample.prompts`` file when it is a ``.txt`` inside the workspace (editable here)."""
        path = (parse(self.read(name)).get("sample") or {}).get("prompts")
        if not isinstance(path, str) or not path.endswith(".txt") or Path(path).is_absolute():
            return None
        return self.ws.resolve(path)

    def save_prompts(self, name: str, text: str) -> Path:
        """Write the config's sample-prompt file after checking every line as the trainer reads it."""
        from ..sd.sample_prompts import parse_line

        path = self.prompts_path(name)
        if path is None:
            raise ValueError(f"config {name!r}: set sample.prompts to a .txt path in the workspace first "
                             "(e.g. configs/prompts.txt), then write its prompts here.")
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip() and not line.startswith("#"):
                parse_line(line, f"line {n}")
        self.ws.write_text(path, text if text.endswith("\n") or not text else text + "\n")
        return path

    def validate(self, data: dict) -> dict:
        """``lorakit validate``'s result for a config mapping, its problems also keyed by field."""
        with self.ws.cwd():
            task, problems, report = validate_data(data)
        return {"task": task, "problems": problems, "fields": schema.problem_fields(problems), "report": report}

    def models(self) -> dict[str, Path]:
        """The base models the UI knows, label -> folder: ``models/*`` of the workspace and every config's
        ``model.path`` (written by the user, so it may lie outside the workspace)."""
        out = {self.ws.rel(p): p for p in sorted(self.ws.models.glob("*")) if (p / "model_index.json").is_file()}
        for name in self.names():
            try:
                path = (parse(self.read(name)).get("model") or {}).get("path")
            except (ValueError, OSError):
                continue
            if isinstance(path, str) and path:
                full = Path(path) if Path(path).is_absolute() else self.ws.root / path
                if full.is_dir():
                    out.setdefault(path, full)
        return out

    def model_path(self, label: str) -> Path:
        models = self.models()
        if label not in models:
            raise ValueError(f"model {label!r}: not a model the workspace knows; expected one of "
                             f"{', '.join(models) or 'none (put a diffusers model folder in models/)'}.")
        return models[label]

    # -- launching -----------------------------------------------------------------------------------
    def launch_text(self, name: str, run: str) -> tuple[str, Path]:
        """(the launched YAML, its run folder) for config ``name`` as run ``run``; the folder must be new."""
        check_name(run, "run")
        run_dir = self.ws.resolve(f"runs/{run}")
        if run_dir.exists() and any(run_dir.iterdir()):
            raise FileExistsError(f"runs/{run} already holds a run; choose another run name (or resume that run "
                                  "from its job page).")
        text = self.read(name)
        data = parse(text)
        train = data.get("train") if isinstance(data.get("train"), dict) else {}
        if train.get("output_dir") != f"runs/{run}":
            data["train"] = {**train, "output_dir": f"runs/{run}"}
            text = schema.dump(data)
        return text, run_dir

    def free_run_name(self, name: str) -> str:
        """``name``, or ``name-2``, ``name-3``... the first run folder not used yet."""
        base, n = name, 1
        while (self.ws.runs / name).exists():
            n += 1
            name = f"{base}-{n}"
        return name


def presets() -> dict[str, str]:
    """Preset name -> YAML text (the sdworld example first when the shipped base model is here)."""
    out = {"sdworld": sdworld_text()} if SDWORLD_BASE.is_dir() else {}
    out.update({p.stem: p.read_text(encoding="utf-8") for p in sorted(PRESETS.glob("*.yaml"))})
    return out


def sdworld_text() -> str:
    """The sdworld demo's recipe (``lorakit.demos.sdworld.demo``) on the example dataset, fewer epochs so the
    first run ends in minutes on a CPU."""
    from ..demos.sdworld.demo import NAME, config

    data = config(Path("datasets") / EXAMPLE, SDWORLD_BASE, epochs=8)
    data["data"]["train_data_dir"] = f"datasets/{EXAMPLE}/img"
    data["data"]["reg_data_dir"] = f"datasets/{EXAMPLE}/reg"
    data["train"].update(output_dir=f"runs/{NAME}", save_every_n_epochs=2)
    data["sample"].update(prompts=f"configs/{EXAMPLE}-prompts.txt", every_n_epochs=2)
    head = ("# The sdworld demo (make demo-sd) on the example dataset: a LoRA teaches the tiny shipped base model\n"
            "# a new shape, the ring, with the trigger word 'sks'. Raise train.epochs to 20 for the demo's result.\n")
    return head + schema.dump(data)


def seed_example(ws: Workspace) -> list[str]:
    """The example: ``datasets/sdworld-rings`` (16 ring images + 32 regularisation images, written by the
    sdworld world code), its sample prompts and ``configs/sdworld.yaml``; what exists is left alone."""
    from ..demos.sdworld.concept import write_concept, write_regularization
    from ..demos.sdworld.demo import PROMPTS
    from ..demos.sdworld.evaluate import CFG

    if not SDWORLD_BASE.is_dir():
        raise FileNotFoundError(f"the sdworld base model is not at {SDWORLD_BASE} (it ships in the source "
                                "checkout's assets/); run lorakit ui from a checkout, or without --example.")
    made = []
    root = ws.datasets / EXAMPLE
    if not root.exists():
        write_concept(root / "img")
        write_regularization(root / "reg")
        made.append(f"datasets/{EXAMPLE}")
    prompts = ws.configs / f"{EXAMPLE}-prompts.txt"
    if not prompts.exists():
        ws.write_text(prompts, "# kohya sample prompts: --w/--h size, --d seed, --s steps, --l CFG\n"
                      + "".join(f"{p} --s 20 --l {CFG:g}\n" for p in PROMPTS))
        made.append(ws.rel(prompts))
    config = ws.configs / "sdworld.yaml"
    if not config.exists():
        ws.write_text(config, sdworld_text())
        made.append(ws.rel(config))
    return made


__all__ = ["Configs", "PathError", "parse", "seed_example", "text_version"]
