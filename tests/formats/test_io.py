"""File safety of the readers every format shares (``lorakit.formats._io``): a file that is not a LoRA
is reported without echoing its content, and refusals of pickles advise only safe actions."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import lorakit
from lorakit.cli import (
    app,
    commands,  # noqa: F401  (registers the commands)
)
from lorakit.formats._io import read_safetensors
from lorakit.sd.embeddings import load_embedding
from lorakit.sd.infotext import lora_hash

SECRET = b"API_KEY=sk-live-0123456789abcdef\nDB_PASSWORD=hunter2\n"
UNSAFE = re.compile(r"weights_only\s*=\s*False|allow_pickle|allow-pickle|if you trust", re.I)


def _leaks(message: str, data: bytes) -> list[str]:
    """Parts of ``data`` (as text or as the little-endian number of its first 8 bytes) found in ``message``."""
    found = [w for w in re.findall(r"[A-Za-z0-9_-]{4,}", data.decode("latin-1")) if w in message]
    number = int.from_bytes(data[:8], "little")
    return found + ([str(number)] if str(number) in message else [])


@pytest.mark.parametrize("data", [SECRET, b"API_KEY={\"x\": 1}", b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\"",
                                  b"PK\x03\x04" + b"\x00" * 60, b"short"])
def test_not_a_safetensors_file_is_named_without_its_content(tmp_path, data):
    path = tmp_path / "secret.safetensors"
    path.write_bytes(data)
    with pytest.raises(ValueError) as e:
        read_safetensors(path)
    msg = str(e.value)
    assert "not a safetensors file" in msg or "truncated or corrupt safetensors file" in msg, msg
    assert _leaks(msg.replace(str(path), ""), data) == [], msg
    for read in (lora_hash, load_embedding):  # the A1111 hash and the embedding reader read headers too
        with pytest.raises(ValueError) as e:
            read(path)
        assert _leaks(str(e.value).replace(str(path), ""), data) == []


def test_inspect_and_convert_of_a_text_file(tmp_path):
    runner = CliRunner()
    (tmp_path / "secret.txt").write_bytes(SECRET)
    for args in (["inspect", str(tmp_path / "secret.txt")],
                 ["convert", str(tmp_path / "secret.txt"), str(tmp_path / "out"), "--to", "peft"]):
        res = runner.invoke(app, args)
        assert res.exit_code == 1, res.output
        err = " ".join(res.stderr.split())
        assert "not a safetensors file" in err and _leaks(err.replace(str(tmp_path), ""), SECRET) == [], err
    assert not (tmp_path / "out").exists()


def test_pickle_refusals_advise_only_safe_actions(tmp_path):
    torch.save({"w": torch.zeros(2)}, tmp_path / "lora.ckpt")
    messages = []
    with pytest.raises(ValueError) as e:
        read_safetensors(tmp_path / "lora.ckpt")
    messages.append(str(e.value))
    assert "weights_only=True" in messages[-1] and "lora.safetensors" in messages[-1]

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"w": Evil()}, tmp_path / "evil.bin")
    with pytest.raises(ValueError) as e:  # even the opt-in weights-only path never relays torch's advice
        read_safetensors(tmp_path / "evil.bin", allow_pickle=True)
    messages.append(str(e.value))
    torch.save({"string_to_param": {"*": Evil()}}, tmp_path / "evil.pt")
    with pytest.raises(ValueError) as e:
        load_embedding(tmp_path / "evil.pt")
    messages.append(str(e.value))
    from lorakit.sd.pipeline import load_pipeline

    torch.save({"state_dict": {}}, tmp_path / "model.ckpt")
    with pytest.raises(ValueError) as e:
        load_pipeline(tmp_path / "model.ckpt")
    messages.append(str(e.value))
    for msg in messages:
        assert not UNSAFE.search(msg), msg


def test_no_message_in_the_source_advises_unsafe_loading():
    """grep every message: no string in lorakit tells a user to unpickle with code or to opt out of safety."""
    src = Path(lorakit.__file__).parent
    bad = [f"{p.relative_to(src)}:{i}" for p in src.rglob("*.py") for i, line in enumerate(p.read_text().splitlines(), 1)
           if re.search(r"weights_only\s*=\s*False|allow-pickle|pass allow_pickle|if you trust", line)]
    assert bad == []
