"""The training form is the config's schema, and it round-trips the YAML ``lorakit train`` reads exactly."""

from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from lorakit.tasks.diffusion.config import SECTIONS
from lorakit.tasks.diffusion.config import parse as parse_sd
from lorakit.train.config import read_yaml
from lorakit.ui import schema
from lorakit.ui.configs import Configs, parse, presets
from lorakit.ui.workspace import Workspace

ROOT = Path(__file__).resolve().parents[2]


class FormFields(HTMLParser):
    """What a browser posts for the config page's form: every input, select and checkbox by name."""

    def __init__(self):
        super().__init__()
        self.values, self.select = {}, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "input" and a.get("name", "").count(".") == 1:
            self.values[a["name"]] = ("true" if "checked" in a else "false") if a.get("type") == "checkbox" else a.get("value", "")
        elif tag == "select" and a.get("name", "").count(".") == 1:
            self.select = a["name"]
        elif tag == "option" and self.select and "selected" in a:
            self.values[self.select] = a.get("value", "")

    def handle_endtag(self, tag):
        if tag == "select":
            self.select = None


def test_every_field_once_with_help():
    for section in SECTIONS:
        names = [f.name for _, fields in schema.groups(section) for f in fields]
        assert sorted(names) == sorted(f.name for f in schema.fields(section)) and len(names) == len(set(names))
        listed = {k for _, keys in schema.GROUPS[section] for k in keys}
        assert listed <= set(names), f"GROUPS[{section!r}] names keys the config no longer has: {listed - set(names)}"
    docs = {f.key: f.help for s in SECTIONS for f in schema.fields(s)}
    assert docs["network.dim"].startswith("Rank of every Linear") and docs["train.output_dir"].startswith("Run directory")
    assert docs["data.keep_tokens"].startswith("The first N tags")  # docstrings of base classes too


@pytest.mark.parametrize("name", ["sdworld", "sd15-character", "sdxl-style"])
def test_presets_round_trip_exactly_through_the_form(name, tmp_path):
    text = presets()[name]
    data = parse(text)
    form = {f.key: schema.show(schema.current(data, f)[0]) for s in SECTIONS for f in schema.fields(s)}
    assert schema.apply_form(data, form) == (data, [])
    ws = Workspace(tmp_path / "ws")
    ws.write_text(ws.configs / "p.yaml", text)
    Configs(ws).save_form("p", form, None)
    assert (ws.configs / "p.yaml").read_text() == text  # byte for byte
    _, problems = parse_sd(data, check_paths=False)
    assert problems == []


def test_rendered_form_posted_back_changes_nothing(client, ws_root):
    for name, text in presets().items():
        (ws_root / "configs" / f"{name}.yaml").write_text(text)
        page = client.get(f"/configs/{name}")
        fields = FormFields()
        fields.feed(page.text)
        assert len(fields.values) == sum(len(schema.fields(s)) for s in SECTIONS), name
        r = client.put(f"/api/configs/{name}", json={"form": fields.values})
        assert r.status_code == 200, r.text
        assert (ws_root / "configs" / f"{name}.yaml").read_text() == text, name


def test_an_edit_writes_that_key_only_and_parses_as_train_reads_it(tmp_path):
    text = presets()["sd15-character"]
    data = parse(text)
    new, errors = schema.apply_form(data, {"train.lr": "3e-4", "network.dim": "8", "data.flip_aug": "true",
                                           "train.mixed_precision": "no", "train.max_token_length": "150",
                                           "train.output_name": "1e5", "data.resolution": "768,512",
                                           "network.conv_dim": "", "train.optimizer_args": "{amsgrad: true}"})
    assert errors == []
    changed = {(s, k) for s in new for k in (new[s] if isinstance(new[s], dict) else {})
               if not isinstance(data.get(s), dict) or data[s].get(k, object()) != new[s][k]}
    assert changed == {("train", "lr"), ("network", "dim"), ("data", "flip_aug"), ("train", "max_token_length"),
                       ("train", "output_name"), ("data", "resolution"), ("train", "optimizer_args")}
    assert new["train"]["lr"] == 3e-4 and new["train"]["output_name"] == "1e5" and new["data"]["resolution"] == "768,512"
    assert "mixed_precision" not in new["train"] and "conv_dim" not in new["network"]  # shown as their defaults
    dumped = schema.dump(new)
    assert read_yaml(dumped) == new  # '1e5' stays a string for lorakit train's reader
    assert "'1e5'" in dumped
    _, problems = parse_sd(new, check_paths=False)
    assert problems == []
    _, errors = schema.apply_form(data, {"train.scheduler": "sometimes", "train.betas": "[0.9,"})
    assert len(errors) == 2 and any("train.scheduler: 'sometimes' is not one of constant" in e for e in errors)
    assert any(e.startswith("train.betas: '[0.9,' is not a valid value") for e in errors)


def test_problems_go_next_to_their_fields():
    by = schema.problem_fields(["train.lr=-1.0: expected a positive learning rate such as 2e-4.",
                                "data.train_data_dir: missing; set it ...", "/x/y.png: unreadable or corrupt image",
                                "model.path='x': not found"])
    assert set(by) == {"train.lr", "data.train_data_dir", "", "model.path"}


def test_text_configs_round_trip_in_the_yaml_editor(client, ws_root):
    for example in sorted((ROOT / "examples").glob("*.yaml")):
        text = example.read_text()
        (ws_root / "configs" / example.name).write_text(text)
        got = client.get(f"/api/configs/{example.stem}").json()
        assert got["text"] == text and got["kind"] == ("form" if got["data"].get("task") == "diffusion" else "yaml")
        r = client.put(f"/api/configs/{example.stem}", json={"text": got["text"], "base": got["version"]})
        assert r.status_code == 200 and (ws_root / "configs" / example.name).read_text() == text
        assert yaml.safe_load(text) is not None
        checked = client.post(f"/api/configs/{example.stem}/validate", json={}).json()
        assert checked["task"] in ("text", "?") and isinstance(checked["problems"], list)
