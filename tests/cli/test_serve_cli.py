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
    for option in ("--adapters", "--api-key", "--max-loaded", "--pin", "--max-queue", "--host", "--allowed-host",
                   "--allow-origin", "--allow-runtime-loading", "--max-body-bytes"):
        assert option in res.output


def _capture(monkeypatch) -> list:
    """Replace the blocking ``lorakit.serve.run`` by a recorder of the config it would serve."""
    import lorakit.serve

    seen = []
    monkeypatch.setattr(lorakit.serve, "run", lambda config: seen.append(config))
    return seen


def test_serve_safety_options_reach_the_config(tmp_path, monkeypatch):
    seen = _capture(monkeypatch)
    (tmp_path / "base").mkdir()
    res = runner.invoke(app, ["serve", str(tmp_path / "base"), "--allow-runtime-loading", "--allowed-host", "box.lan",
                              "--allowed-host", "proxy.lan", "--allow-origin", "http://localhost:3000",
                              "--max-body-bytes", "4096"])
    assert res.exit_code == 0, res.output
    c = seen[0]
    assert (c.allow_runtime_loading, c.allowed_hosts, c.allowed_origins, c.max_body_bytes) == (
        True, ["box.lan", "proxy.lan"], ["http://localhost:3000"], 4096)
    assert runner.invoke(app, ["serve", str(tmp_path / "base")]).exit_code == 0
    assert seen[1].allow_runtime_loading is False and seen[1].allowed_origins == []


def test_serve_says_why_no_adapter_was_found(tmp_path, monkeypatch):
    seen = _capture(monkeypatch)
    (tmp_path / "base").mkdir()
    runs = tmp_path / "runs"
    (runs / "heart" / "checkpoint-000010").mkdir(parents=True)  # a run that never finished: no adapter/ yet
    (runs / "notes.txt").write_text("x")
    res = runner.invoke(app, ["serve", str(tmp_path / "base"), "--adapters", str(runs)])
    assert res.exit_code == 0 and seen
    out = " ".join(res.output.split())
    assert "no adapter found in" in out and "heart: no adapter_config.json (nor adapter/adapter_config.json)" in out
    assert "notes.txt: not a directory" in out and "lorakit train runs" in out


def test_serve_refuses_pins_that_fill_every_slot(tmp_path, monkeypatch):
    seen = _capture(monkeypatch)
    (tmp_path / "base").mkdir()
    (tmp_path / "adapters").mkdir()
    res = runner.invoke(app, ["serve", str(tmp_path / "base"), "--adapters", str(tmp_path / "adapters"),
                              "--max-loaded", "1", "--pin", "alpha"])
    assert res.exit_code == 1 and not seen
    assert "raise max_loaded to at least 2" in " ".join(res.output.split())


def test_serve_takes_pip_model_paths(tmp_path, monkeypatch):
    seen = _capture(monkeypatch)
    (tmp_path / "site" / "some_pkg" / "model").mkdir(parents=True)
    (tmp_path / "site" / "some_pkg" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    res = runner.invoke(app, ["serve", "pip:some_pkg/model"])
    assert res.exit_code == 0, res.output
    assert seen[0].base == "pip:some_pkg/model"
    res = runner.invoke(app, ["serve", "pip:no_such_pkg_xyz/model"])
    assert res.exit_code == 1 and "no_such_pkg_xyz" in res.output and "not installed" in res.output
