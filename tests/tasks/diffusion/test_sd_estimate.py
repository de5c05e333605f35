"""The memory calculator for diffusion runs: parameter counts and bytes equal those of the models the trainer
builds (SD1 with LoCon, FLUX.1 with QLoRA NF4, bf16 bases), the fake-tensor activation peak is the live
peak of the real step (within 15 %), and ``lorakit validate`` prints the table for SD and FLUX.1 configs."""

import dit_models
import pytest
import sd_pipes
import torch
import yaml
from typer.testing import CliRunner

from lorakit.cli import app, commands  # noqa: F401  (commands registers the commands)
from lorakit.quant import Linear4bit, packed_bytes
from lorakit.tasks.diffusion.config import from_dict
from lorakit.tasks.diffusion.dataset import build_dataset
from lorakit.tasks.diffusion.estimate import _fake_batch, diffusion_estimate
from lorakit.tasks.diffusion.task import TASK
from lorakit.train.trace import step_peak

SIZE = {"float32": 4, "bfloat16": 2}


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory):
    return sd_pipes.saved(dit_models.flux_pipe(), tmp_path_factory.mktemp("flux") / "model")


def _config(tmp_path, base, images, sections):
    cfg = sd_pipes.sd_config(tmp_path, base, images)
    for name, extra in sections.items():
        cfg.setdefault(name, {}).update(extra)
    return from_dict(cfg), cfg


CASES = {"sd1-locon-bf16": ("sd1", {"network": {"conv_dim": 2}, "model": {"dtype": "bfloat16"}}),
         "sd1-lora-te": ("sd1", {}),
         "flux-qlora": ("flux", {"network": {"quantize": "nf4", "train_unet_only": True}}),
         "flux-lora-cached-text": ("flux", {"network": {"train_unet_only": True},
                                            "data": {"cache_text_encoder_outputs": True}})}


@pytest.mark.parametrize("case", list(CASES))
def test_counts_and_bytes_equal_the_built_models(tmp_path, sd1_dir, flux_dir, case):
    kind, sections = CASES[case]
    model = sd1_dir[0] if kind == "sd1" else flux_dir
    cfg, _ = _config(tmp_path, model, sd1_dir[1], sections)
    est = diffusion_estimate(cfg)
    real = TASK.build(cfg, torch.device("cpu"))
    comps, dtype = real.extra["components"], cfg.model.dtype
    main = "unet" if kind == "sd1" else "transformer"
    for part in est.parts:
        module = comps[part.name]
        packed = [m for m in module.modules() if isinstance(m, Linear4bit)]
        dense = [p for p in module.parameters() if not p.requires_grad]
        assert part.params == sum(p.numel() for p in module.parameters()) + \
            sum(m.in_features * m.out_features for m in packed), part.name
        assert part.trainable == sum(p.numel() for p in module.parameters() if p.requires_grad), part.name
        width = 4 if part.name == "vae" else SIZE[dtype]  # the VAE always runs in float32
        expected = {("float32" if part.name == "vae" else dtype): sum(p.numel() for p in dense) * width}
        if packed:
            expected["nf4"] = sum(m.storage_bytes() for m in packed)
            assert expected["nf4"] == sum(packed_bytes(m.in_features * m.out_features) for m in packed)
        assert part.frozen_bytes == expected, part.name
    assert est.trainable == sum(p.numel() for p in real.model.parameters() if p.requires_grad)
    assert est.parts[0].name == main and est.trainable == sum(p.trainable for p in est.parts)
    assert est.states_bytes == est.trainable * (4 + 4 + 8)  # fp32 adapter, fp32 gradient, AdamW's two moments


def test_activation_peak_equals_the_real_steps(tmp_path, sd1_dir):
    """The fake-tensor peak is close to the live peak of the same step on real tensors (gradient checkpointing
    on). On this tiny step the fake one is 0.17 MB (13 %) higher, a difference not traced down yet (a bare
    U-Net's forward and backward agree exactly); hence 15 %, not equality."""
    cfg, _ = _config(tmp_path, sd1_dir[0], sd1_dir[1], {"train": {"gradient_checkpointing": True}, "network": {"train_unet_only": True}})
    data = build_dataset(cfg.data, batch_size=cfg.train.batch_size, seed=0, scan_only=True)
    est = diffusion_estimate(cfg, data)
    parts = TASK.build(cfg, torch.device("cpu"))
    size = max((i.bucket for d in data.datasets for i in d.items), key=lambda b: b[0] * b[1])
    batch = _fake_batch(parts.model, parts.extra["components"]["vae"], cfg, size, False)
    parts.model.train()
    assert est.activation_bytes == pytest.approx(step_peak(lambda: parts.model(batch)), rel=0.15)
    vae = parts.extra["components"]["vae"].config
    side = 64 // 2 ** (len(vae.block_out_channels) - 1)  # 64-pixel images through the VAE's downsampling
    assert est.held_bytes["latent cache (4 images)"] == 4 * vae.latent_channels * side * side * 4  # fp32


@pytest.mark.parametrize("kind", ["sd1", "flux"])
def test_validate_prints_the_table(tmp_path, sd1_dir, flux_dir, kind):
    model = sd1_dir[0] if kind == "sd1" else flux_dir
    extra = {"network": {"quantize": "nf4", "train_unet_only": True}} if kind == "flux" else {}
    _, data = _config(tmp_path, model, sd1_dir[1], extra)
    path = tmp_path / "sd.yaml"
    path.write_text(yaml.safe_dump(data))
    one = CliRunner().invoke(app, ["validate", str(path)])
    assert one.exit_code == 0, one.output
    main = "unet" if kind == "sd1" else "transformer"
    for text in (f"\n{main} ", "\ntext_encoder ", "\nvae ", "base weights", "adapter + grads + optimizer",
                 "vae (whole on every process)", "latent cache (4 images)", "activations", "total (estimate)"):
        assert text in one.output, (text, one.output)
    assert ("nf4" in one.output) == (kind == "flux")
    two = CliRunner().invoke(app, ["validate", str(path), "--nproc-per-node", "2"])
    assert two.exit_code == 0 and "FSDP x2, each" in two.output, two.output
