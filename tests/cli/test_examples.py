"""Every shipped example config validates on a fresh clone, or its header says what to create first."""

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lorakit.cli import (
    app,
    commands,  # noqa: F401  (registers the commands)
)

ROOT = Path(__file__).parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_validates_or_its_header_names_what_to_create(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # paths in the examples are relative to the repository root
    res = CliRunner().invoke(app, ["validate", str(path.relative_to(ROOT))])
    if res.exit_code == 0:
        return
    header = "\n".join(line for line in path.read_text().splitlines() if line.startswith("#"))
    missing = re.findall(r"(?:model\.path|data\.\w+)='([^']+)'", res.stderr)
    problems = re.findall(r"^\s+- (.*)$", res.stderr, flags=re.M)
    assert missing and len(missing) == len(problems), f"{path.name} fails for more than missing files:\n{res.stderr}"
    assert "Create first" in header, header
    for item in missing:
        assert item in header or Path(item).name.split("-")[0] in header, f"{item} is not explained in the header"
