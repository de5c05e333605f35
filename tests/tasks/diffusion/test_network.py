"""The SD network's scales follow the tool whose module the saved file names (issue 19.29: ``conv_alpha``)."""

import copy

import pytest
import torch
from safetensors.torch import load_file
from sd_pipes import components
from torch import nn

from lorakit.tasks.diffusion.config import NetworkArgs
from lorakit.tasks.diffusion.export import training_metadata
from lorakit.tasks.diffusion.network import add_network, to_lorafile

LRS = {"unet": 1e-4, "text_encoder": 1e-4}


def _alphas(tmp_path, module: str, conv_dim: int = 2, **net) -> tuple[dict[str, float], dict[str, float]]:
    """(alpha of every 3x3-conv module, alpha of every other module) of lorakit's network on the tiny U-Net."""
    comps = components(tmp_path, False)
    base = copy.deepcopy(comps["unet"])
    add_network(comps, NetworkArgs(module=module, dim=4, alpha=2, conv_dim=conv_dim, **net), ("text_encoder",), LRS)
    conv, other = {}, {}
    for key, tensors in to_lorafile(comps, "sd1").modules.items():
        part, path = key.split(".", 1)
        layer = base.get_submodule(path) if part == "unet" else None
        big = isinstance(layer, nn.Conv2d) and layer.kernel_size != (1, 1)
        (conv if big else other)[path] = float(tensors["alpha"])
    assert conv and other
    return conv, other


def test_lora_conv_alpha_defaults_to_kohyas_one(tmp_path):
    # kohya networks/lora.py create_network: conv_dim given, conv_alpha not -> conv_alpha = 1.0
    conv, other = _alphas(tmp_path, "lora")
    assert set(conv.values()) == {1.0} and set(other.values()) == {2.0}
    conv, _ = _alphas(tmp_path, "lora", conv_alpha=0.5)
    assert set(conv.values()) == {0.5}


def test_saved_metadata_names_the_conv_alpha_trained_with(tmp_path):
    from lorakit.tasks.diffusion.config import from_dict

    cfg = from_dict({"task": "diffusion", "model": {"path": "x"}, "data": {"train_data_dir": "d"},
                     "network": {"conv_dim": 8}}, check_paths=False)
    family = type("F", (), {"base_version": "sd_v1", "name": "sd1"})
    args = training_metadata(cfg, family, "epsilon", {})["ss_network_args"]
    assert '"conv_alpha": "1"' in args and '"conv_dim": "8"' in args


def test_lycoris_modules_default_to_lycoris_create_network(tmp_path):
    lycoris_kohya = pytest.importorskip("lycoris.kohya")
    comps = components(tmp_path, False)
    preset = tmp_path / "preset.toml"
    preset.write_text('enable_conv = true\nunet_target_module = ["Transformer2DModel", "ResnetBlock2D", '
                      '"Downsample2D", "Upsample2D"]\nunet_target_name = []\n')
    torch.manual_seed(0)
    net = lycoris_kohya.create_network(1.0, 4, 2.0, None, comps["text_encoder"], comps["unet"], conv_dim=3,
                                       algo="loha", preset=str(preset))
    net.apply_to(comps["text_encoder"], comps["unet"], False, True)
    net.save_weights(str(tmp_path / "lyco.safetensors"), torch.float32, {})
    saved = load_file(tmp_path / "lyco.safetensors")
    want = {float(v) for k, v in saved.items() if k.endswith(".alpha") and "resnets" in k and "conv1" in k}
    conv, _ = _alphas(tmp_path, "loha", conv_dim=3)
    assert want and {a for p, a in conv.items() if "resnets" in p and p.endswith("conv1")} == want
