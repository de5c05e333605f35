"""Every path a client names stays inside the workspace."""

import os

import pytest

from lorakit.ui.workspace import PathError, Workspace, check_name


def test_resolve_confines_paths(tmp_path):
    ws = Workspace(tmp_path / "ws")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("secret")
    os.symlink(tmp_path / "outside", ws.root / "datasets" / "link")
    assert ws.resolve("datasets") == ws.root / "datasets"
    for bad, why in (("../outside/secret.txt", "'..' is not allowed"), ("/etc/passwd", "not an absolute one"),
                     ("datasets/../../outside", "'..' is not allowed"), ("datasets/link/secret.txt", "outside the workspace"),
                     ("a\x00b", "NUL"), ("C:/x", "absolute"), ("datasets\\..\\x", "backslashes")):
        with pytest.raises(PathError, match=why):
            ws.resolve(bad)
    with pytest.raises(FileNotFoundError, match="not found in the workspace"):
        ws.resolve("configs/none.yaml", must_exist=True)


def test_inside_takes_plain_names_only(tmp_path):
    ws = Workspace(tmp_path / "ws")
    folder = ws.root / "datasets"
    assert ws.inside(folder, "a.png") == folder / "a.png"
    for bad in ("../a.png", "x/a.png", "..", ".", "", "a\\b.png"):
        with pytest.raises(PathError):
            ws.inside(folder, bad)


def test_names(tmp_path):
    assert check_name("my-set (v2)", "dataset") == "my-set (v2)"
    for bad in (".hidden", "a/b", "..x", " lead", "x" * 101, "", "a..b"):
        with pytest.raises(PathError, match="dataset name"):
            check_name(bad, "dataset")


def test_workspace_refuses_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        Workspace(tmp_path / "f")


def test_cwd_is_restored(tmp_path):
    ws = Workspace(tmp_path / "ws")
    before = os.getcwd()
    with ws.cwd() as root:
        assert os.getcwd() == str(root)
    assert os.getcwd() == before
