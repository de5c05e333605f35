"""Invariants every adapter variant x layer type must satisfy (the contract matrix's test bodies).

Each function takes a model name from ``models.BUILDERS`` and ``LoraConfig`` keyword arguments.
"""

from __future__ import annotations

import copy

import torch
from models import build, example_input, run

import lorakit
from lorakit.quant import quantize_model

ATOL = 1e-5


def make(model_name: str, cfg: dict, seed: int = 0):
    base = build(model_name, seed)
    if cfg.get("quantize", "none") != "none":  # QLoRA: "the base" is the 4-bit model the adapter sits on
        skip = {n for n, _ in base.named_modules() if n.split(".")[-1] in (cfg.get("modules_to_save") or [])}
        skip |= {n for n, m in base.named_modules() if m is getattr(base, "get_output_embeddings", lambda: None)()}
        quantize_model(base, cfg["quantize"], cfg.get("double_quant", True), skip=skip)
    model = lorakit.inject(copy.deepcopy(base), lorakit.LoraConfig(**cfg))
    return base, model


@torch.no_grad()
def randomize(model, seed: int = 0, scale: float = 0.3) -> None:
    """Give every adapter parameter a non-trivial value so the adapter changes the output."""
    g = torch.Generator().manual_seed(seed)
    for _, layer in lorakit.lora_layers(model):
        for adapter in layer.adapters.values():
            for p in adapter.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * scale + (1.0 if p.ndim == 1 else 0.0))


@torch.no_grad()
def randomize_trainable(model, seed: int = 0, scale: float = 0.3) -> None:
    """Overwrite every trainable parameter with N(0, scale²) values (a trained-looking adapter)."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        if p.requires_grad:
            p.copy_(torch.randn(p.shape, generator=g) * scale)


def assert_close(a, b, atol=ATOL, rtol=1e-4, msg=""):
    assert a.shape == b.shape, f"{msg}: shapes {a.shape} vs {b.shape}"
    diff = (a - b).abs().max().item()
    assert torch.allclose(a, b, atol=atol, rtol=rtol), f"{msg}: max abs diff {diff}"


def check_fresh_is_base(name, cfg):
    base, model = make(name, cfg)
    x = example_input(name)
    assert_close(run(model, name, x), run(base, name, x), atol=1e-4, msg="fresh adapter")


def check_disabled_is_base(name, cfg):
    base, model = make(name, cfg)
    randomize(model)
    x = example_input(name)
    assert not torch.allclose(run(model, name, x), run(base, name, x), atol=1e-3), "adapter has no effect"
    expected = run(base, name, x) if cfg.get("init") not in ("pissa", "olora") else None
    with lorakit.disable_adapters(model):
        out = run(model, name, x)
    if expected is not None:
        assert torch.equal(out, expected), "disabled output must equal the base output exactly"
    lorakit.merge(model)
    with lorakit.disable_adapters(model):
        out_merged = run(model, name, x)
    assert_close(out_merged, out, atol=1e-4, msg="disabled while merged")
    assert all(layer.merged for _, layer in lorakit.lora_layers(model)), "merge state restored on exit"


def check_merge(name, cfg):
    base, model = make(name, cfg)
    randomize(model)
    x = example_input(name)
    before = {n: layer.weight.detach().clone() for n, layer in lorakit.lora_layers(model)}
    unmerged = run(model, name, x)
    lorakit.merge(model)
    merged_once = {n: layer.weight.detach().clone() for n, layer in lorakit.lora_layers(model)}
    assert_close(run(model, name, x), unmerged, atol=1e-4, msg="merged vs unmerged")
    lorakit.merge(model)
    for n, layer in lorakit.lora_layers(model):
        assert torch.equal(layer.weight, merged_once[n]), f"merging twice changed {n}"
    lorakit.unmerge(model)
    lorakit.unmerge(model)
    for n, layer in lorakit.lora_layers(model):
        assert_close(layer.weight, before[n], atol=1e-5, msg=f"unmerge restores {n}")
    assert_close(run(model, name, x), unmerged, atol=1e-5, msg="after unmerge")
    lorakit.merge(model)
    plain = lorakit.merge_and_unload(model)
    assert not list(lorakit.lora_layers(plain)), "no wrapper left after merge_and_unload"
    assert not any(isinstance(m, lorakit.SavedModule) for m in plain.modules())
    assert_close(run(plain, name, x), unmerged, atol=1e-4, msg="merge_and_unload")


def check_save_load(name, cfg, tmp_path):
    base, model = make(name, cfg)
    randomize(model)
    x = example_input(name)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.requires_grad and "adapters" not in pname:  # biases and saved copies get values too
                p.add_(0.05)
    expected = run(model, name, x)
    lorakit.save_adapter(model, tmp_path)
    fresh = copy.deepcopy(base)
    if cfg.get("init") in ("pissa", "olora"):  # the residual base travels separately
        fresh = _residual_base(model)
    lorakit.load_adapter(fresh, tmp_path)
    assert torch.equal(run(fresh, name, x), expected), "save -> load changed the output"


def _residual_base(model):
    clone = copy.deepcopy(model)
    return lorakit.unload(clone)


def check_training(name, cfg):
    base, model = make(name, cfg)
    randomize(model)
    model.train()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert trainable, "nothing is trainable"
    assert all(".adapters." in n or n.endswith("bias") or ".modules_to_save." in n for n in trainable), \
        f"unexpected trainable params: {[n for n in trainable if '.adapters.' not in n]}"
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    out = run(model, name, example_input(name))
    out.float().pow(2).mean().backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, f"gradient presence wrong for {n}"
    opt.step()
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), f"frozen parameter {n} changed"
    changed = [n for n, p in model.named_parameters() if n in trainable and not torch.equal(p, trainable[n])]
    assert changed, "no trainable parameter changed"
