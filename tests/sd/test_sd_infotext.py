"""A1111 infotext: written as create_infotext does, read back by parse_generation_parameters' rules, PNG chunk,
and the hashes Civitai matches (computed independently here)."""

import hashlib
import json
import struct

import pytest
from PIL import Image

from lorakit.sd.infotext import (
    create_infotext,
    lora_hash,
    model_hash,
    next_free_name,
    parse_hash_list,
    parse_infotext,
    save_png,
)

PARAMS = {"Steps": 30, "Sampler": "DPM++ 2M", "Schedule type": "Karras", "CFG scale": 7, "Seed": 1234,
          "Size": "512x768", "Model hash": "6ce0161689", "Model": "v1-5-pruned-emaonly", "Clip skip": 2,
          "Lora hashes": "catEars: a1b2c3d4e5f6, idol: 0123456789ab", "TI hashes": "EasyNegative: 0123456789ab",
          "Version": "lorakit 0.1.0"}


def test_text_matches_a1111_layout():
    text = create_infotext("(masterpiece:1.3), 1girl <lora:catEars:0.8>", "EasyNegative", PARAMS)
    assert text == ("(masterpiece:1.3), 1girl <lora:catEars:0.8>\nNegative prompt: EasyNegative\n"
                    "Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234, Size: 512x768, "
                    "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Clip skip: 2, "
                    'Lora hashes: "catEars: a1b2c3d4e5f6, idol: 0123456789ab", '
                    'TI hashes: "EasyNegative: 0123456789ab", Version: lorakit 0.1.0')
    assert "Negative prompt" not in create_infotext("a", "", {"Steps": 1, "Seed": 2, "Sampler": "DDIM"})


def test_round_trip_with_multiline_prompts(tmp_path):
    prompt, negative = "line one,\n(line: two)", "bad,\nworse"
    text = create_infotext(prompt, negative, {**PARAMS, "Model": 'odd "name", v2'})
    got = parse_infotext(text)
    assert got["Prompt"] == prompt and got["Negative prompt"] == negative
    assert got["Size-1"] == "512" and got["Size-2"] == "768" and got["Model"] == 'odd "name", v2'
    assert parse_hash_list(got["Lora hashes"]) == {"catEars": "a1b2c3d4e5f6", "idol": "0123456789ab"}
    im = Image.new("RGB", (8, 8))
    path = save_png(im, tmp_path / "a.png", infotext=text)
    assert parse_infotext(Image.open(path).info["parameters"]) == got
    with pytest.raises(FileExistsError, match="--overwrite"):
        save_png(im, path, infotext=text)
    save_png(im, path, infotext="x", overwrite=True)
    assert Image.open(path).info["parameters"] == "x"


def test_last_line_needs_three_params():
    got = parse_infotext("a cat\nSteps: 3, Seed: 4")
    assert got["Prompt"] == "a cat\nSteps: 3, Seed: 4" and "Steps" not in got


def test_hashes_as_civitai_computes_them(tmp_path):
    header = json.dumps({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    data = struct.pack("<2f", 1.0, 2.0)
    f = tmp_path / "x.safetensors"
    f.write_bytes(struct.pack("<Q", len(header)) + header + data)
    assert lora_hash(f) == hashlib.sha256(data).hexdigest()[:12]
    assert model_hash(f) == hashlib.sha256(f.read_bytes()).hexdigest()[:10]
    assert model_hash(tmp_path) is None


def test_next_free_name_never_reuses(tmp_path):
    a = next_free_name(tmp_path, "1")
    a.write_bytes(b"")
    assert next_free_name(tmp_path, "1").name == "00001-1.png"
