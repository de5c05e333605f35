"""Fuzzing run configs: random types and values in every field (and whole sections).

``validate`` (``load_config``) must either accept the config or raise ``ConfigError``; a config it
accepts must then train one step on a tiny model without failing for a config reason. The only
failures allowed in that step are about the data file's content, which ``validate`` does not read
(too few samples for the batch size, a missing label field): they name the data and the fix.
"""

import copy
import os
import tempfile
from dataclasses import fields
from pathlib import Path

import pytest
import tiny_hf as tiny
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lorakit.config import ConfigError, LoraConfig
from lorakit.tasks.text.config import SECTIONS
from lorakit.train import run
from lorakit.train.config import load_config

EXAMPLES = int(os.environ.get("LORAKIT_FUZZ_EXAMPLES", "60"))
TRAINS = max(4, EXAMPLES // 50)
FUZZ = dict(deadline=None, suppress_health_check=list(HealthCheck),
            derandomize="LORAKIT_FUZZ_EXAMPLES" not in os.environ)
WORDS = ["no", "yes", "off", "on", "gpu", "cuda", "cuda:0", "cpu", "auto", "mps", "lora", "full", "head", "dora",
         "loha", "lokr", "adalora", "nf4", "bf16", "fp16", "cosine", "linear", "{prompt}", "{x} {prompt}", "{",
         "classification", "causal_lm", "all-linear", "[", "q_proj", ".*", "", "float16", "bfloat16"]
SCALARS = (st.none() | st.booleans() | st.integers(-3, 100) | st.sampled_from([0, 1, 2, 10**12, -10**20, 2**64])
           | st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(WORDS) | st.text(max_size=6))
VALUES = st.recursive(SCALARS, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.sampled_from(WORDS), c, max_size=2),
                      max_leaves=4)
FIELDS = [(name, f.name) for name, cls in SECTIONS.items() for f in fields(cls)]
FIELDS += [("lora", f.name) for f in fields(LoraConfig)] + [("train", "nope"), ("lora", "rr")]


def base_config(root: Path, llama_path) -> dict:
    (root / "train.txt").write_text("\n\n".join(tiny.CORPUS))
    return {"model": {"path": str(llama_path), "device": "cpu"},
            "data": {"train": str(root / "train.txt"), "max_length": 16},
            "lora": {"r": 4, "alpha": 8, "target_modules": "all-linear"},
            "train": {"output_dir": str(root / "run"), "max_steps": 1, "batch_size": 2, "progress": False,
                      "plot": False, "log_every": 1}}


@st.composite
def mutations(draw) -> list:
    out = []
    for _ in range(draw(st.integers(1, 3))):
        if draw(st.integers(0, 9)) == 0:
            out.append((draw(st.sampled_from([*SECTIONS, "lora", "quickstart", "extra"])), None, draw(VALUES)))
        else:
            section, key = draw(st.sampled_from(FIELDS))
            out.append((section, key, draw(VALUES)))
    return out


def _apply(cfg: dict, muts) -> dict:
    cfg = copy.deepcopy(cfg)
    for section, key, value in muts:
        if key is None:
            cfg[section] = value
        elif isinstance(cfg.get(section), dict) or cfg.get(section) is None:
            cfg[section] = cfg.get(section) or {}
            cfg[section][key] = value
    return cfg


def _validate(root: Path, data: dict):
    path = root / "c.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    try:
        return load_config(path)
    except ConfigError as exc:
        assert str(exc).startswith("invalid"), exc
        return None


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzzcfg")


DATA_REASONS = ("fewer than one optimizer step needs", "no 'label' field", "no 'text' field", "needs at least data.")


def test_validate_never_crashes_and_accepted_configs_train_one_step(root, llama_path):
    base = base_config(root, llama_path)
    accepted = []

    @settings(max_examples=EXAMPLES * 2, **FUZZ)
    @given(mutations())
    def check(muts):
        cfg = _validate(root, _apply(base, muts))
        if cfg is not None and len(accepted) < TRAINS:
            accepted.append(muts)

    check()
    assert accepted, "no mutated config was accepted; the fuzzer explores nothing trainable"
    for muts in accepted:
        cfg = _validate(root, _apply(base, muts))
        cfg.train.max_steps, cfg.train.save_every, cfg.train.eval_every = 1, 0, 0
        cfg.train.output_dir = tempfile.mkdtemp(dir=root)
        try:
            run(cfg, quiet=True)
        except ValueError as exc:
            assert any(r in str(exc) for r in DATA_REASONS), (muts, exc)
