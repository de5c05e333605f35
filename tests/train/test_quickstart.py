"""The quickstart's data split and the example configs (parsing only; no training here)."""

import copy
import json
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from lorakit.config import LoraConfig
from lorakit.tasks.text.quickstart import DEFAULT_CONFIG, prepare
from lorakit.train.config import from_dict

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


def test_results_table_fits_80_columns_and_plot_shows_both_splits(tmp_path):
    from rich.console import Console

    from lorakit.tasks.text.quickstart import plot_comparison, results_table

    rows = [{"method": m, "val_accuracy": v, "test_accuracy": t, "trainable_params": n, "trainable_percent": pct,
             "saved_bytes": size, "train_seconds": 4.2, "samples_per_s": 250.0}
            for m, v, t, n, pct, size in (("head", 0.66, 0.65, 8855, 0.039, 36_000),
                                           ("lora", 0.953, None, 82583, 0.3634, 335_000),
                                           ("full", 0.953, 0.8815, 22722071, 100.0, 91_600_000))]
    console = Console(width=80, record=True)
    console.print(results_table(rows))
    lines = console.export_text().splitlines()
    assert max(len(line) for line in lines) <= 80
    text = "\n".join(lines)
    assert "…" not in text  # nothing truncated
    for cell in ("95.30%", "88.15%", "22.7M (100%)", "82.6k (0.363%)", "8.9k (0.039%)", "91.6 MB"):
        assert cell in text, cell
    assert text.count(" - ") == 1  # the missing test accuracy
    for m in ("head", "lora", "full"):
        (tmp_path / m).mkdir()
        (tmp_path / m / "metrics.jsonl").write_text('{"step": 1, "loss": 3.0}\n{"step": 5, "loss": 1.0}\n')
    png = plot_comparison(rows, tmp_path)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
