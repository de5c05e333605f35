"""The quickstart's data split and the example configs (parsing only; no training here)."""

import copy
import json
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from lorakit.config import LoraConfig
from lorakit.train.config import from_dict
from lorakit.train.quickstart import DEFAULT_CONFIG, prepare

EXAMPLES = Path(__file__).parents[2] / "examples"


def test_packaged_quickstart_config_is_the_example():
    assert DEFAULT_CONFIG.read_text() == (EXAMPLES / "quickstart.yaml").read_text()


@pytest.mark.parametrize("name", ["quickstart.yaml", "llama-instruct.yaml", "llama-qlora.yaml", "classify.yaml"])
def test_example_configs_parse(name):
    data = yaml.safe_load((EXAMPLES / name).read_text())
    if "quantize" in data.get("lora", {}) and "quantize" not in {f.name for f in fields(LoraConfig)}:
        pytest.skip("this build has no QLoRA fields in LoraConfig")
    for method_over in (data.pop("quickstart", {}) or {}).get("methods", {}).values() or [{}]:
        merged = copy.deepcopy(data)
        merged["train"].update(method_over.get("train", {}))
        merged["data"].setdefault("train", "generated.jsonl")  # the quickstart writes its data itself
        if merged["train"].get("method") in ("head", "full"):
            merged.pop("lora")
        from_dict(merged, check_paths=False)


def test_quickstart_split_is_by_template(tmp_path):
    configs, info, out = prepare(overrides=["quickstart.max_intents=6"], output_dir=tmp_path)
    assert set(configs) == {"head", "lora", "full"} and len(info["intents"]) == 6
    names = ("train", "val", "test")
    rows = {s: [json.loads(r) for r in (tmp_path / "data" / f"{s}.jsonl").read_text().splitlines()] for s in names}
    templates = {s: {r["template"] for r in rows[s]} for s in names}
    texts = {s: {r["text"] for r in rows[s]} for s in names}
    for i, a in enumerate(names):  # three disjoint sets of templates and of sentences
        assert templates[a] and len(rows[a]) == info[a] and len(templates[a]) == info[f"{a}_templates"]
        for b in names[i + 1:]:
            assert not templates[a] & templates[b] and not texts[a] & texts[b], (a, b)
    assert {r["label"] for r in rows["test"]} | {r["label"] for r in rows["val"]} <= {r["label"] for r in rows["train"]}
    data = configs["lora"]["data"]  # validation drives evaluation during training; the test is only reported
    assert (data["eval"], data["test"]) == (str(tmp_path / "data" / "val.jsonl"), str(tmp_path / "data" / "test.jsonl"))
    assert configs["lora"]["train"]["output_dir"] == str(tmp_path / "lora") and "lora" not in configs["full"]
    again, _, _ = prepare(overrides=["quickstart.max_intents=6"], output_dir=tmp_path / "again")
    assert (tmp_path / "again" / "data" / "train.jsonl").read_text() == (tmp_path / "data" / "train.jsonl").read_text()


def test_too_few_templates_per_intent_is_refused(tmp_path):
    with pytest.raises(ValueError, match="min_templates=2: each intent needs at least 3 templates"):
        prepare(overrides=["quickstart.min_templates=2"], output_dir=tmp_path)
