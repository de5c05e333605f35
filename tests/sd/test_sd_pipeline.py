"""load_pipeline / detect_family: a saved diffusers directory round trip, families from configs, clear refusals."""

import json

import pytest

from lorakit.sd.pipeline import detect_family, load_pipeline


@pytest.mark.parametrize(("unet", "sched", "family"), [
    ({"cross_attention_dim": 768}, {}, "sd1"),
    ({"cross_attention_dim": 1024}, {"prediction_type": "epsilon"}, "sd2"),
    ({"cross_attention_dim": 1024}, {"prediction_type": "v_prediction"}, "sd2-v"),
    ({"cross_attention_dim": 2048, "addition_embed_type": "text_time"}, {}, "sdxl"),
])
def test_detect_family_from_configs(unet, sched, family):
    assert detect_family(unet_config=unet, scheduler_config=sched) == family


def test_saved_directory_round_trip(sdxl_pipe, tmp_path):
    from sd_pipes import saved, tiny_sd1

    pipe, family = load_pipeline(saved(tiny_sd1(), tmp_path / "sd1"))  # a fresh one: the shared one has adapters
    assert family == "sd1" and type(pipe).__name__ == "StableDiffusionPipeline" and pipe.safety_checker is None
    assert detect_family(sdxl_pipe) == "sdxl"
    with pytest.raises(ValueError, match="is a sd1 model but family='sdxl'"):
        load_pipeline(tmp_path / "sd1", family="sdxl")


def test_refusals(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pipeline(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="without model_index.json"):
        load_pipeline(tmp_path / "empty")
    (tmp_path / "m.ckpt").write_bytes(b"")
    with pytest.raises(ValueError, match="only .safetensors checkpoints"):
        load_pipeline(tmp_path / "m.ckpt")
    (tmp_path / "m.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="pass config="):
        load_pipeline(tmp_path / "m.safetensors")
    cfg = tmp_path / "cfg"
    (cfg / "unet").mkdir(parents=True)
    (cfg / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    (cfg / "unet" / "config.json").write_text(json.dumps({"cross_attention_dim": 1024}))
    with pytest.raises(ValueError, match="is a sd2 model but family='sd1'"):
        load_pipeline(tmp_path / "m.safetensors", config=cfg, family="sd1")
