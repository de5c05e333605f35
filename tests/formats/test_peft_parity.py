"""PEFT 0.21 as the oracle: adapters cross between lorakit and PEFT with identical outputs."""

import copy

import peft
import pytest
import torch
from contract import randomize
from models import build, example_input, run

import lorakit

CASES = {
    "mlp": ("mlp", dict(r=4, alpha=8, target_modules=["lin0", "lin1"], bias="lora_only", modules_to_save=["head"])),
    "mlp-rslora-biasall": ("mlp", dict(r=4, alpha=6, target_modules=["lin0", "lin1"], use_rslora=True, bias="all")),
    # PEFT drops dilation and padding_mode (peft#3697): its dilated conv crashes and its reflect-padded
    # conv computes a different function, so parity covers the layers PEFT gets right; the contract
    # matrix checks lorakit's dilated/reflect/grouped convs against their merged dense weights.
    "conv": ("conv", dict(r=4, target_modules=["conv1d", "conv", "pw"])),
    "conv-grouped": ("conv", dict(r=4, target_modules=["conv_grouped"])),
    "emb": ("emb", dict(r=4, target_modules=["emb", "lin"])),
    "llama": ("llama", dict(r=4, alpha=8, target_modules="all-linear", rank_pattern={"v_proj": 2},
                            alpha_pattern={"o_proj": 3.0})),
    "llama-layers": ("llama", dict(r=2, target_modules=["q_proj", "v_proj"], layers_to_transform=[1],
                                   layers_pattern="layers")),
    "gpt2": ("gpt2", dict(r=4, alpha=16, target_modules=["c_attn", "c_proj", "c_fc"])),
}
PEFT_NAMES = {"alpha": "lora_alpha", "dropout": "lora_dropout"}


def peft_config(cfg: dict) -> peft.LoraConfig:
    return peft.LoraConfig(**{PEFT_NAMES.get(k, k): v for k, v in cfg.items()})


@pytest.mark.parametrize("case", list(CASES))
def test_lorakit_to_peft(case, tmp_path):
    name, cfg = CASES[case]
    base = build(name)
    model = lorakit.inject(copy.deepcopy(base), lorakit.LoraConfig(**cfg))
    randomize(model, seed=3)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.requires_grad and ".adapters." not in pname:
                p.add_(0.1)
    x = example_input(name)
    expected = run(model, name, x)
    lorakit.save_adapter(model, tmp_path)
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path)
    torch.testing.assert_close(run(loaded, name, x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", [c for c in CASES if c != "conv-grouped"])
def test_peft_to_lorakit(case, tmp_path):
    name, cfg = CASES[case]
    base = build(name)
    pm = peft.get_peft_model(copy.deepcopy(base), peft_config(cfg))
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in pm.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.2)
    x = example_input(name)
    expected = run(pm, name, x)
    pm.save_pretrained(tmp_path)
    model = lorakit.load_adapter(copy.deepcopy(base), tmp_path)
    torch.testing.assert_close(run(model, name, x), expected, atol=1e-5, rtol=1e-5)
    # the same modules are adapted, with PEFT's ranks and scales
    peft_layers = {n.removeprefix("base_model.model."): m for n, m in pm.named_modules()
                   if isinstance(m, peft.tuners.lora.LoraLayer)}
    ours = dict(lorakit.lora_layers(model))
    assert set(ours) == set(peft_layers)
    for n, layer in ours.items():
        adapter = layer.adapters["default"]
        assert adapter.r == peft_layers[n].r["default"]
        assert adapter.scale == pytest.approx(peft_layers[n].scaling["default"])


@pytest.mark.parametrize("init", ["pissa", "olora", "gaussian"])
def test_init_matches_peft(init):
    """Same base weights -> same factors and residual as PEFT's initialisers."""
    base = build("mlp")
    ours = lorakit.inject(copy.deepcopy(base), lorakit.LoraConfig(r=4, alpha=8, target_modules=["lin1"], init=init))
    torch.manual_seed(0)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["lin1"],
                                                                      init_lora_weights=init))
    layer = dict(lorakit.lora_layers(ours))["lin1"]
    plin = theirs.base_model.model.lin1
    if init == "gaussian":  # random: compare statistics of the law, B exactly zero
        assert torch.count_nonzero(layer.adapters["default"].lora_B) == 0
        std = layer.adapters["default"].lora_A.std().item()
        assert 0.15 < std < 0.4  # N(0, 1/r) with r=4 -> std 0.25
        return
    torch.testing.assert_close(layer.adapters["default"].lora_A, plin.lora_A["default"].weight)
    torch.testing.assert_close(layer.adapters["default"].lora_B, plin.lora_B["default"].weight)
    torch.testing.assert_close(layer.base_layer.weight, plin.base_layer.weight)


def test_peft_config_keys_roundtrip(tmp_path):
    """adapter_config.json written by lorakit is read by PEFT into the same settings."""
    base = build("llama")
    cfg = lorakit.LoraConfig(r=4, alpha=8, target_modules="all-linear", use_rslora=True, dropout=0.1)
    lorakit.save_adapter(lorakit.inject(copy.deepcopy(base), cfg), tmp_path)
    pc = peft.PeftConfig.from_pretrained(tmp_path)
    assert (pc.r, pc.lora_alpha, pc.use_rslora, pc.lora_dropout) == (4, 8, True, 0.1)
    assert set(pc.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_peft_grouped_conv_is_refused_clearly(tmp_path):
    """PEFT's grouped-conv A mixes groups (unmergeable); lorakit says so instead of loading it wrongly."""
    base = build("conv")
    peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=4, target_modules=["conv_grouped"])).save_pretrained(
        tmp_path)
    model = copy.deepcopy(base)
    with pytest.raises(ValueError, match="mixes channel groups"):
        lorakit.load_adapter(model, tmp_path)
    assert not list(lorakit.lora_layers(model)), "a failed load leaves the model unchanged"


@pytest.mark.parametrize("case", ["llama", "gpt2", "mlp"])
def test_gradients_match_peft(case, tmp_path):
    """The fused backward gives PEFT's gradients for every adapter factor."""
    name, cfg = CASES[case]
    base = build(name)
    model = lorakit.inject(copy.deepcopy(base), lorakit.LoraConfig(**cfg))
    randomize(model, seed=4)
    lorakit.save_adapter(model, tmp_path)
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path, is_trainable=True)
    x = example_input(name)
    run(model, name, x).pow(2).mean().backward()
    run(theirs, name, x).pow(2).mean().backward()
    ours = {k: p.grad for k, p in lorakit.adapter_state_dict(model).items() if ".lora_" in k}
    ref = dict(theirs.named_parameters())
    assert ours
    for key, grad in ours.items():
        peft_name = key.replace(".lora_A.weight", ".lora_A.default.weight").replace(
            ".lora_B.weight", ".lora_B.default.weight")
        torch.testing.assert_close(grad, ref[peft_name].grad, atol=1e-6, rtol=1e-4)
