"""The atomic writer gives outputs the permissions a plain ``open`` would (issue 19.13: it made every file 0600)."""

import os
import stat
from contextlib import contextmanager

import pytest
import torch

from lorakit.formats._io import atomic_dir, atomic_write, write_json, write_safetensors


@contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o027, 0o077])
def test_new_files_and_directories_follow_the_umask_like_open_and_mkdir(tmp_path, mask):
    with umask(mask):
        with open(tmp_path / "plain.txt", "w") as f:  # the reference: what the OS gives a plain write
            f.write("x")
        (tmp_path / "plain-dir").mkdir()
        write_json(tmp_path / "a.json", {"a": 1})
        write_safetensors(tmp_path / "w.safetensors", {"w": torch.ones(2)})
        atomic_write(tmp_path / "t.txt", lambda tmp: open(tmp, "w").write("y"))
        with atomic_dir(tmp_path / "out") as d:
            (d / "f.txt").write_text("z")
    want = mode(tmp_path / "plain.txt")
    assert want == 0o666 & ~mask
    for name in ("a.json", "w.safetensors", "t.txt", "out/f.txt"):
        assert mode(tmp_path / name) == want, name
    assert mode(tmp_path / "out") == mode(tmp_path / "plain-dir") == 0o777 & ~mask


def test_a_replaced_file_keeps_its_mode_as_writing_in_place_would(tmp_path):
    path = tmp_path / "a.json"
    with umask(0o022):
        write_json(path, {"a": 1})
        os.chmod(path, 0o640)
        write_json(path, {"a": 2})
        (tmp_path / "d").mkdir()
        os.chmod(tmp_path / "d", 0o750)
        with atomic_dir(tmp_path / "d") as d:
            (d / "f").write_text("new")
    assert mode(path) == 0o640 and path.read_text().strip().endswith("}")
    assert mode(tmp_path / "d") == 0o750 and (tmp_path / "d" / "f").read_text() == "new"


def test_a_failed_write_leaves_nothing(tmp_path):
    def boom(tmp):
        open(tmp, "w").write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "x.txt", boom)
    assert list(tmp_path.iterdir()) == []
