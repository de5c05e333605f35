"""FLUX.1 / SD3 config keys: every problem at once with a one-line reason (SD-only keys on a flow model,
flow keys on a U-Net model, kohya spellings that mean something else here), and ``lorakit validate``
on a tiny FLUX.1 directory (its family, the transformer's bucket step, the bucket table)."""

import pytest
import sd_pipes
import yaml
from dit_tiny import save_pipeline
from typer.testing import CliRunner

from lorakit.cli import app, commands  # noqa: F401  (commands registers the commands)
from lorakit.config import ConfigError
from lorakit.tasks.diffusion.config import from_dict, parse
from lorakit.tasks.diffusion.dit_config import family_problems, parse_blocks


def _cfg(family="flux1", **sections):
    data = {"task": "diffusion", "model": {"path": "m", "family": family}, "data": {"train_data_dir": "d"}}
    for name, extra in sections.items():
        data.setdefault(name, {}).update(extra)
    return data


def test_sd_only_keys_are_refused_for_flow_models_with_the_reason():
    _, errors = parse(_cfg("flux1", train={"min_snr_gamma": 5, "clip_skip": 2, "weighting_scheme": "logit_normal"},
                           network={"conv_dim": 4, "train_block_indices": "0"}, model={"prediction_type": "epsilon"}),
                      check_paths=False)
    text = "\n".join(errors)
    for part in ("train.min_snr_gamma does not apply to flux1 (flow matching): min-SNR and debiased weights are for DDPM",
                 "train.clip_skip does not apply", "network.conv_dim does not apply",
                 "model.prediction_type does not apply", "network.train_block_indices is an SD3 key",
                 "weighting_scheme='logit_normal' is a σ density in kohya; in lorakit set train.timestep_sampling"):
        assert part in text, (part, text)
    assert all("\n" not in e for e in errors)  # one line each


def test_flow_keys_are_refused_for_unet_models_and_sd3_keys_for_flux():
    cfg, _ = parse(_cfg("sd1", train={"timestep_sampling": "shift", "guidance_scale": 3.5},
                        network={"train_blocks": "single"}), check_paths=False)
    text = "\n".join(family_problems(cfg, "sd1"))
    assert "train.timestep_sampling applies to flux1/sd3" in text and "train.guidance_scale applies" in text
    assert "network.train_blocks applies to flux1/sd3 transformers; sd1 has a U-Net" in text
    cfg, _ = parse(_cfg("sd3", network={"train_blocks": "single"}, train={"guidance_scale": 3.5}), check_paths=False)
    text = "\n".join(family_problems(cfg, "sd3"))
    assert "network.train_blocks is a FLUX.1 key; this is a sd3 model" in text
    assert "SD3 has no distilled-guidance input" in text
    cfg, _ = parse(_cfg("flux1", model={"drop_t5": True}), check_paths=False)
    assert "model.drop_t5 is an SD3 key" in "\n".join(family_problems(cfg, "flux1"))


def test_value_problems_are_collected():
    with pytest.raises(ConfigError) as exc:
        from_dict(_cfg("flux1", train={"discrete_flow_shift": 0, "timestep_sampling": "lognorm", "guidance_scale": -1,
                                       "model_prediction_type": "additive", "blocks_to_swap": -2,
                                       "weighting_scheme": "uniform"}), check_paths=False)
    text = str(exc.value)
    for part in ("train.discrete_flow_shift=0", "train.timestep_sampling='lognorm'", "train.guidance_scale=-1",
                 "train.model_prediction_type='additive'", "train.blocks_to_swap=-2",
                 "'uniform' is kohya's name for no weight; write 'none'"):
        assert part in text, part


def test_block_selection_syntax():
    errors = []
    assert parse_blocks("0-2,5", 19, "k", errors) == {0, 1, 2, 5} and parse_blocks("all", 19, "k", errors) is None
    assert parse_blocks("none", 19, "k", errors) == set() and parse_blocks([3, 4], 19, "k", errors) == {3, 4}
    assert not errors
    parse_blocks("0-25", 19, "train_double_block_indices", errors)
    parse_blocks("x", 19, "train_double_block_indices", errors)
    assert "indices [19, 20, 21, 22, 23, 24, 25] are outside this model's 0-18" in errors[0]
    assert "expected indices and ranges such as '0-3,10'" in errors[1]


def test_validate_knows_a_flux_directory(tmp_path):
    model = save_pipeline(tmp_path / "flux", "flux1")
    data = sd_pipes.save_dataset(tmp_path / "img", n=3, size=(32, 32))
    cfg = sd_pipes.sd_config(tmp_path, model, data, data={"resolution": 32, "min_bucket_reso": 16, "max_bucket_reso": 64,
                                                         "bucket_reso_steps": 4, "enable_bucket": True})
    (tmp_path / "ok.yaml").write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(app, ["validate", str(tmp_path / "ok.yaml")])
    assert result.exit_code == 0, result.output
    assert "(flux1, bucket step 4)" in result.output and "32x32" in result.output
    cfg["train"].update(min_snr_gamma=5, blocks_to_swap=2)
    cfg["data"]["bucket_reso_steps"] = 6
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(app, ["validate", str(tmp_path / "bad.yaml")])
    out = " ".join(result.output.split())
    assert result.exit_code == 1
    for part in ("train.min_snr_gamma does not apply to flux1", "train.blocks_to_swap=2: block swap moves blocks",
                 "bucket_reso_steps=6 is not a multiple of 4"):
        assert part in out, (part, out)
