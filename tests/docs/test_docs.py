"""The documentation: the site builds with --strict, every relative link and anchor resolves, the config
reference is generated from the current code, blocks are labelled honestly, and the README keeps its front page."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from doc_blocks import (
    COMMAND_START,
    NOT_RUN_NOTE,
    ROOT,
    RUN_LANGS,
    all_blocks,
    anchors,
    blocks,
    commands,
    doc_files,
    slug,
)

sys.path.insert(0, str(ROOT / "docs"))
import gen_config  # noqa: E402

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def test_site_builds_offline_with_strict_links(tmp_path):
    """MkDocs fails on a link to a missing page or anchor, and on a page left out of the nav."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    res = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (tmp_path / "site" / "index.html").is_file() and (tmp_path / "site" / "config.html").is_file()
    page = (tmp_path / "site" / "sdworld.html").read_text()
    assert 'src="sdworld/grid.png"' in page and (tmp_path / "site" / "sdworld" / "grid.png").is_file()


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_anchors_resolve(path):
    """The README is outside the site, so MkDocs does not check it: this does, for every page."""
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # links inside code are not links
    bad = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            bad.append(f"{target}: {dest} does not exist")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{target}: no heading with anchor #{anchor} in {dest.name}")
    assert not bad, bad


def test_slug_matches_mkdocs_for_code_headings():
    assert slug("`lorakit serve` reference") == "lorakit-serve-reference"
    assert slug("Text task (`task: text`)") == "text-task-task-text"


def test_config_reference_is_generated_from_the_current_code():
    assert (ROOT / "docs" / "config.md").read_text() == gen_config.render(), \
        "docs/config.md is stale: run python docs/gen_config.py"


def test_every_config_key_has_a_docstring():
    assert gen_config.undocumented() == [], "document these fields where they are declared"


def test_config_reference_lists_every_key_with_its_default():
    from lorakit.config import LoraConfig
    from lorakit.tasks.diffusion.config import SDTrainArgs

    text = (ROOT / "docs" / "config.md").read_text()
    assert "| `r` | an integer | `8` | Rank of the update" in text
    assert "| `min_snr_gamma` | a number or null | `null` |" in text
    section = text.split("### `train` (SDTrainArgs)")[1].split("###")[0]
    assert {f for f in re.findall(r"^\| `(\w+)` \|", section, flags=re.M)} == set(SDTrainArgs.__dataclass_fields__)
    assert LoraConfig.__dataclass_fields__.keys() <= set(re.findall(r"^\| `(\w+)` \|", text, flags=re.M))


def test_blocks_are_labelled():
    """Shell commands sit in bash blocks (run by the tests) or console blocks (not run, and the docs say so);
    an unlabelled or yaml/text block holding a command would escape the check of test_doc_commands.py."""
    problems = []
    for b in all_blocks():
        if b.lang in RUN_LANGS:
            continue
        if b.lang == "console":
            page = b.path.read_text().splitlines()
            intro = "\n".join(page[:next((i for i, line in enumerate(page) if line.startswith("## ")), len(page))])
            near = "\n".join(page[max(0, b.line - 7):b.line - 1])
            if NOT_RUN_NOTE not in (near + intro).lower():
                problems.append(f"{b.where}: a console block without '{NOT_RUN_NOTE}' next to it or in the intro")
            continue
        hidden = [line for line in b.lines if COMMAND_START.match(line)]
        if hidden and b.lang != "python":
            problems.append(f"{b.where}: ```{b.lang} block holds shell commands {hidden}; use ```bash or ```console")
    assert not problems, "\n".join(problems)


def test_benchmark_commands_name_existing_scripts_and_options():
    """Benchmarks are console blocks (minutes each); their scripts, options and BENCH_HEAP values must exist."""
    common = (ROOT / "benchmarks" / "_common.py").read_text()
    seen = 0
    for b in all_blocks():
        if b.lang != "console":
            continue
        for cmd in commands(b):
            words = cmd.split()
            script = next((w for w in words if w.endswith(".py")), None)
            if script is None:
                continue
            path = ROOT / "benchmarks" / Path(script).name
            assert path.is_file(), f"{b.where}: {script} does not exist"
            source = path.read_text() + common
            for word in words:
                flag = word.split("=")[0]
                if flag.startswith("--"):
                    assert f'"{flag}"' in source, f"{b.where}: {path.name} has no option {flag}"
                if flag == "BENCH_HEAP":
                    assert f'"{word.split("=")[1]}"' in common, f"{b.where}: unknown {word}"
            seen += 1
    assert seen >= 10


def test_readme_is_a_front_page():
    text = (ROOT / "README.md").read_text()
    runs = [c for b in blocks(ROOT / "README.md") if b.lang in RUN_LANGS for c in commands(b)]
    assert runs[:2] == ["make demo", "make test"], "the README starts with the two commands"
    assert len(text.splitlines()) <= 300, "the README is the front page: move reference material to docs/"
    assert "make test" in (ROOT / ".ci" / "run").read_text()
