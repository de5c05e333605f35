"""kohya files: exact round trips (kohya and PEFT), metadata and hashes, PEFT as a peer, and clean errors."""

import copy
import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from sd_models import random_lora, unet_out

from lorakit import sd
from lorakit.formats import kohya
from lorakit.formats.sd_io import convert, read_lora


def _raw(path):
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def _assert_identical(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_kohya_round_trip_is_bitwise(sd1, tmp_path, dtype):
    lf = random_lora(sd1, conv=True)
    lf.metadata = {"ss_output_name": "mine", "ss_tag_frequency": json.dumps({"a": {"b": 1}})}
    first, second = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    kohya.write_kohya(lf, first, dtype=dtype)
    kohya.write_kohya(read_lora(first), second)
    (t1, m1), (t2, m2) = _raw(first), _raw(second)
    _assert_identical(t1, t2)
    assert m1 == m2 and m1["ss_output_name"] == "mine"
    assert all(t.dtype == kohya.DTYPES[dtype] for t in t1.values())
    assert t1["lora_unet_down_blocks_0_attentions_0_proj_in.alpha"].dim() == 0


def test_sdxl_file_uses_sai_names_and_a1111_metadata(sdxl, tmp_path):
    path = tmp_path / "xl.safetensors"
    kohya.write_kohya(random_lora(sdxl), path, family="sdxl")
    tensors, meta = _raw(path)
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight" in tensors
    assert any(k.startswith("lora_te2_text_model_encoder_layers_") for k in tensors)
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0" and meta["ss_network_dim"] == "4"
    assert meta["ss_network_alpha"] == "2" and meta["modelspec.architecture"].startswith("stable-diffusion-xl")


def test_sshs_hashes_match_an_independent_computation(sd1, tmp_path):
    path = tmp_path / "h.safetensors"
    kohya.write_kohya(random_lora(sd1), path, family="sd1")
    tensors, meta = _raw(path)
    ref = tmp_path / "ref.safetensors"  # kohya hashes a file holding only the ss_* metadata
    save_file(tensors, ref, metadata={k: v for k, v in meta.items() if k.startswith("ss_")})
    data = ref.read_bytes()
    n = int.from_bytes(data[:8], "little")
    assert meta["sshs_model_hash"] == hashlib.sha256(data[8 + n:]).hexdigest()
    assert meta["sshs_legacy_hash"] == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_kohya_peft_kohya_is_lossless(family, sd1, sdxl, tmp_path):
    parts = sd1 if family == "sd1" else sdxl
    lf = random_lora(parts, conv=True, dtype=torch.float16)
    no_alpha = sorted(lf.modules)[:3]
    for key in no_alpha:  # a file may lack some alphas: they must stay absent
        del lf.modules[key]["alpha"]
    lf.modules[sorted(lf.modules)[5]]["alpha"] = torch.tensor(0.5, dtype=torch.float16)
    src = tmp_path / "in.safetensors"
    kohya.write_kohya(lf, src)
    convert(src, tmp_path / "peft", "peft")
    convert(tmp_path / "peft", tmp_path / "back.safetensors", "kohya")
    (t1, m1), (t2, m2) = _raw(src), _raw(tmp_path / "back.safetensors")
    _assert_identical(t1, t2)
    assert m1 == m2


def test_peft_directory_loads_in_peft_with_the_same_outputs(sd1, tmp_path):
    """Peer check: PEFT itself loading our converted directory gives lorakit's output for the kohya file."""
    peft = pytest.importorskip("peft")
    src = tmp_path / "in.safetensors"
    lf = random_lora(sd1, conv=True)
    lf.modules[sorted(lf.modules)[0]]["alpha"] = torch.tensor(8.0)  # exercise alpha_pattern
    kohya.write_kohya(lf, src)
    convert(src, tmp_path / "peft", "peft")
    ours = copy.deepcopy(sd1["unet"])
    sd.load_lora({"unet": ours}, src, te_strength=0)
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(sd1["unet"]), tmp_path / "peft" / "unet")
    torch.testing.assert_close(unet_out(theirs.base_model.model), unet_out(ours), rtol=1e-5, atol=1e-5)


def test_diffusers_style_keys_and_missing_alpha(sd1, tmp_path):
    lf = random_lora(sd1, alpha=None)
    tensors = {}
    for key, m in lf.modules.items():
        tensors[f"{key}.lora_A.weight"] = m["lora_down.weight"]
        tensors[f"{key}.lora_B.weight"] = m["lora_up.weight"]
    old = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight"
    tensors[old] = tensors.pop("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight")
    save_file(tensors, tmp_path / "d.safetensors")
    back = read_lora(tmp_path / "d.safetensors")
    assert back.source == "diffusers" and back.modules.keys() == lf.modules.keys()
    k = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    assert torch.equal(back.modules[k]["lora_down.weight"], lf.modules[k]["lora_down.weight"])
    assert "alpha" not in back.modules[k]  # alpha = rank: scale 1, as kohya/ComfyUI read it


def test_unknown_keys_are_reported_by_name(tmp_path):
    t = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(2, 4),
         "lora_unet_down_blocks_0_attentions_0_proj_in.oft_blocks": torch.zeros(2),
         "lora_vae_decoder_conv.lora_up.weight": torch.zeros(4, 2)}
    save_file(t, tmp_path / "u.safetensors")
    with pytest.raises(KeyError) as err:
        read_lora(tmp_path / "u.safetensors")
    assert "2 key(s) could not be mapped" in str(err.value)
    assert "oft_blocks" in str(err.value) and "lora_vae_decoder_conv" in str(err.value)


def test_bad_files_get_clean_errors(tmp_path):
    good = tmp_path / "good.safetensors"
    save_file({"lora_unet_x_proj_in.lora_down.weight": torch.zeros(64, 64)}, good)
    data = good.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[:8 + 20])
    with pytest.raises(ValueError, match="truncated or corrupt safetensors file: its header runs past the end"):
        read_lora(tmp_path / "trunc.safetensors")
    (tmp_path / "data.safetensors").write_bytes(data[:-100])
    with pytest.raises(ValueError, match="could not be read as safetensors"):
        read_lora(tmp_path / "data.safetensors")
    (tmp_path / "huge.safetensors").write_bytes((2**40).to_bytes(8, "little") + b"{}")
    with pytest.raises(ValueError, match="larger than the .*-byte limit"):
        read_lora(tmp_path / "huge.safetensors")
    save_file({"lora_unet_x_proj_in.lora_down.weight": torch.zeros(2, 2, dtype=torch.int64)},
              tmp_path / "int.safetensors")
    with pytest.raises(KeyError, match="dtype torch.int64 is not a float type"):
        read_lora(tmp_path / "int.safetensors")
    torch.save({"a": torch.zeros(1)}, tmp_path / "model.ckpt")
    with pytest.raises(ValueError, match=r"pickle file \(\.ckpt\).*arbitrary code.*torch\.load\('model\.ckpt'.*weights_only=True.*save_file"):
        read_lora(tmp_path / "model.ckpt")


def test_write_never_touches_the_input(sd1, tmp_path):
    src = tmp_path / "in.safetensors"
    kohya.write_kohya(random_lora(sd1), src)
    before = src.read_bytes()
    with pytest.raises(ValueError, match="is the input file"):
        convert(src, src, "kohya")
    assert src.read_bytes() == before and load_file(src)


def test_two_text_encoders_are_always_te1_te2():
    from lorakit.formats.lorafile import LoraFile

    m = {"lora_down.weight": torch.zeros(1, 2), "lora_up.weight": torch.zeros(2, 1)}
    lf = LoraFile({"text_encoder.text_model.encoder.layers.0.mlp.fc1": dict(m),
                   "text_encoder_2.text_model.encoder.layers.0.mlp.fc1": dict(m)}, source="diffusers")
    keys = {k.split(".")[0] for k in kohya.to_state_dict(lf)}
    assert keys == {"lora_te1_text_model_encoder_layers_0_mlp_fc1", "lora_te2_text_model_encoder_layers_0_mlp_fc1"}
