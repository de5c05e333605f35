"""Fuzzing every LoRA file reader and tool: mutated kohya, LyCORIS (LoHa/LoKr) and PEFT files.

Mutations: truncation, byte flips, rewritten safetensors headers (dtypes, shapes, offsets, duplicate,
missing and renamed keys, non-string metadata), consistent files with inconsistent content (ranks,
missing factors, NaN, vector alpha) and rewritten ``adapter_config.json`` fields. The only acceptable
outcomes are success, with every tool then working on the file, or ``LoraFileError`` with a message
naming the file. ``make test`` runs a few dozen examples per format; ``make fuzz`` sets
LORAKIT_FUZZ_EXAMPLES (2,500 per test: 10,000 files in all).
"""

import json
import os
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save

from lorakit.formats import kohya
from lorakit.formats.errors import LoraFileError
from lorakit.formats.lorafile import LoraFile
from lorakit.formats.peft_sd import write_peft
from lorakit.formats.sd_io import read_lora, write_lora
from lorakit.tools import inspect_lora, merge_loras, resize_lora

sys.path.insert(0, str(Path(__file__).parents[1] / "tools"))
from lora_files import lora_file  # noqa: E402

EXAMPLES = int(os.environ.get("LORAKIT_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize="LORAKIT_FUZZ_EXAMPLES" not in os.environ,
                suppress_health_check=list(HealthCheck))
DTYPES = ["F32", "F16", "BF16", "F64", "I64", "I32", "U8", "BOOL", "F8_E4M3", "XX", 5, None, [], "f32"]
JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats() | st.text(max_size=8),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                    max_leaves=6)


def _lycoris() -> LoraFile:
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    mods = {"unet.mid_block.attentions.0.proj_in": {"hada_w1_a": r(12, 2), "hada_w1_b": r(2, 10), "hada_w2_a": r(12, 2),
                                                     "hada_w2_b": r(2, 10), "alpha": torch.tensor(1.0)},
            "unet.conv_in": {"lokr_w1": r(2, 2), "lokr_w2_a": r(3, 2), "lokr_w2_b": r(2, 2 * 9),
                             "alpha": torch.tensor(2.0)},
            "unet.down_blocks.0.resnets.0.conv1": {"hada_t1": r(2, 2, 3, 3), "hada_w1_a": r(2, 6), "hada_w1_b": r(2, 4),
                                                    "hada_t2": r(2, 2, 3, 3), "hada_w2_a": r(2, 6), "hada_w2_b": r(2, 4),
                                                    "alpha": torch.tensor(2.0)}}
    return LoraFile(mods, {"ss_base_model_version": "sd_v1"})


def _kohya_bytes(lf: LoraFile) -> bytes:
    return save(kohya.to_state_dict(lf), metadata=kohya.kohya_metadata(lf))


SEEDS = {"kohya": lambda: _kohya_bytes(lora_file(1)), "lycoris": lambda: _kohya_bytes(_lycoris())}


def _split(data: bytes) -> tuple[dict, bytes]:
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n]), data[8 + n:]


def _join(header_text: str, body: bytes) -> bytes:
    raw = header_text.encode()
    return len(raw).to_bytes(8, "little") + raw + body


@st.composite
def mutated(draw, data: bytes) -> bytes:
    """One mutation of a safetensors file, from raw bytes to header JSON to consistent-but-wrong content."""
    kind = draw(st.sampled_from(["truncate", "flip", "header", "duplicate", "content", "metadata"]))
    if kind == "truncate":
        return data[:draw(st.integers(0, len(data) - 1))]
    if kind == "flip":
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, min(len(out) - 1, draw(st.sampled_from([64, 512, len(out) - 1])))))
            out[i] = draw(st.integers(0, 255))
        return bytes(out)
    header, body = _split(data)
    keys = sorted(k for k in header if k != "__metadata__")
    key = draw(st.sampled_from(keys))
    if kind == "header":
        what = draw(st.sampled_from(["dtype", "shape", "offsets", "delete", "rename", "entry"]))
        if what == "dtype":
            header[key]["dtype"] = draw(st.sampled_from(DTYPES))
        elif what == "shape":
            header[key]["shape"] = draw(st.lists(st.integers(-2, 2**33), max_size=5) | JSON)
        elif what == "offsets":
            header[key]["data_offsets"] = draw(st.lists(st.integers(-1, len(body) + 9), max_size=3) | JSON)
        elif what == "delete":
            del header[key]
        elif what == "rename":
            header[draw(st.sampled_from(keys + ["lora_unet_x.lora_up.weight", "a.b", ""]))
                   + draw(st.sampled_from(["", "x", ".alpha"]))] = header.pop(key)
        else:
            header[key] = draw(JSON)
        return _join(json.dumps(header), body)
    if kind == "duplicate":  # the same key twice in the header text
        text = json.dumps(header)
        other = draw(st.sampled_from(keys))
        dup = json.dumps({key: header[other]})[1:-1]
        return _join("{" + dup + ", " + text[1:], body)
    if kind == "metadata":
        meta = header.setdefault("__metadata__", {})
        name = draw(st.sampled_from(["lorakit.naming", "lorakit.no_alpha", "lorakit.alpha_dtype",
                                     "lora_adapter_metadata", "ss_base_model_version", "modelspec.architecture", "x"]))
        meta[name] = draw(JSON | JSON.map(json.dumps))
        if draw(st.booleans()):
            header["__metadata__"] = draw(JSON)
        return _join(json.dumps(header), body)
    # content: a well-formed file whose tensors no longer fit together
    from safetensors.torch import load

    tensors = load(data)
    t = tensors[key]
    change = draw(st.sampled_from(["drop", "rank", "nan", "alpha", "empty", "int"]))
    if change == "drop":
        del tensors[key]
    elif change == "rank" and t.dim() >= 1:
        tensors[key] = torch.cat([t, t[:1]]) if draw(st.booleans()) else t[: max(1, t.shape[0] - 1)]
    elif change == "nan" and t.numel():
        t = t.clone().flatten()
        t[draw(st.integers(0, t.numel() - 1))] = draw(st.sampled_from([float("nan"), float("inf"), -float("inf")]))
        tensors[key] = t.reshape(tensors[key].shape)
    elif change == "alpha":
        tensors[key.rsplit(".", 2)[0].rsplit(".", 1)[0] + ".alpha"] = torch.ones(draw(st.integers(0, 3)))
    elif change == "empty":
        tensors[key] = torch.zeros(0, *t.shape[1:])
    else:
        tensors[key] = t.to(torch.int32)
    return save(tensors, metadata=header.get("__metadata__"))


def _every_tool(path: Path, out: Path) -> None:
    """Read, inspect, resize, merge and convert; a consistent file must pass them all."""
    try:
        lf = read_lora(path)
    except LoraFileError as exc:
        assert str(path) in str(exc) and str(exc).strip()
        return
    inspect_lora(lf)
    finite = all(torch.isfinite(t).all() for m in lf.modules.values() for t in m.values())
    for tool in (lambda: resize_lora(lf, rank=1), lambda: merge_loras([lf, lf], method="svd", rank=2)):
        try:
            tool()
        except LoraFileError as exc:
            assert not finite and "NaN/Inf" in str(exc)
    plain = all(set(m) <= {"lora_up.weight", "lora_down.weight", "alpha"} for m in lf.modules.values())
    if plain:
        merge_loras([lf, lf], method="cat")
        write_lora(lf, out / "peft", "peft")
        write_lora(read_lora(out / "peft"), out / "back.safetensors", "kohya")


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_fuzzed_kohya_and_lycoris_files(name):
    data = SEEDS[name]()

    @FUZZ
    @given(st.data())
    def check(d):
        blob = d.draw(mutated(data))
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "in.safetensors"
            path.write_bytes(blob)
            _every_tool(path, Path(tmp))

    check()


def test_the_unmutated_seeds_pass_every_tool(tmp_path):
    for name, make in SEEDS.items():
        (tmp_path / f"{name}.safetensors").write_bytes(make())
        read_lora(tmp_path / f"{name}.safetensors")
        _every_tool(tmp_path / f"{name}.safetensors", tmp_path)


@FUZZ
@given(st.data())
def test_fuzzed_peft_directories(d):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "adapter"
        write_peft(lora_file(2), root)
        part = root / d.draw(st.sampled_from(["unet", "text_encoder"]))
        target = d.draw(st.sampled_from(["config", "weights"]))
        if target == "weights":
            f = part / "adapter_model.safetensors"
            f.write_bytes(d.draw(mutated(f.read_bytes())))
        else:
            f = part / "adapter_config.json"
            config = json.loads(f.read_text())
            how = d.draw(st.sampled_from(["field", "drop", "text", "whole"]))
            if how == "field":
                config[d.draw(st.sampled_from(sorted(config) + ["lora_alpha", "alpha_pattern", "rank_pattern"]))] = \
                    d.draw(JSON)
            elif how == "drop":
                config.pop(d.draw(st.sampled_from(sorted(config))))
            text = json.dumps(config)
            if how == "text":
                text = text[:d.draw(st.integers(0, len(text)))] + d.draw(st.text(max_size=4))
            elif how == "whole":
                text = json.dumps(d.draw(JSON))
            f.write_bytes(text.encode("utf-8", "surrogatepass") if d.draw(st.booleans()) else b"\xff" + text.encode(
                "utf-8", "surrogatepass"))
        _every_tool(root, Path(tmp))
