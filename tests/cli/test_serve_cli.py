"""``lorakit serve``: registered on the CLI, every config problem reported at once before anything loads."""

from typer.testing import CliRunner

from lorakit.cli import (
    app,
    commands,  # noqa: F401  (registers the commands)
)

runner = CliRunner()


def test_serve_reports_all_config_errors(tmp_path):
    res = runner.invoke(app, ["serve", str(tmp_path / "missing"), "--adapters", str(tmp_path / "nope"),
                              "--max-batch", "0", "--batching", "fast"])
    assert res.exit_code == 1
    out = " ".join(res.output.split())
    for part in ("is not a directory; give a local Hugging Face model directory", "adapters=",
                 "max_batch=0: must be at least 1", "batching='fast': expected 'mixed' or 'single'"):
        assert part in out, out


def test_serve_help_lists_the_safety_options():
    res = runner.invoke(app, ["serve", "--help"])
    assert res.exit_code == 0
    for option in ("--adapters", "--api-key", "--max-loaded", "--pin", "--max-queue", "--host"):
        assert option in res.output
