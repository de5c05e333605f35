"""PeriodicLoRA: unloading preserves the function, resets factors and optimizer state, keeps an fp32 master,
and the accumulated update reloads onto the original base."""

import copy

import pytest
import torch
from _loop import batches, lm_loss, train
from models import build, example_input, run

import lorakit
from lorakit.train import Callback
from lorakit.train.periodic import PeriodicLoRA, to_lora

TARGETS = ["q_proj", "v_proj", "down_proj"]
X = example_input("llama")


class Probe(Callback):
    """Records the model output at on_step_end, before the callbacks listed after it run."""

    def __init__(self):
        self.outputs = []

    def on_step_end(self, state):
        with torch.no_grad():
            self.outputs.append(run(state.model, "llama", X))


def _model(r=2, dtype=torch.float32):
    base = build("llama").to(dtype)
    return base, lorakit.inject(copy.deepcopy(base), lorakit.LoraConfig(r=r, alpha=4, target_modules=TARGETS))


def _adam(model, lr=1e-2):
    return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)


def test_unloading_preserves_function_and_resets_state():
    base, model = _model()
    probe, after = Probe(), []
    cb = PeriodicLoRA(period=3)
    opt = _adam(model)

    def observe(state):
        with torch.no_grad():
            after.append(run(model, "llama", X))
        if state.step == 3:
            adapters = [ly.adapters["default"] for _, ly in lorakit.lora_layers(model)]
            assert all(torch.equal(a.lora_B, torch.zeros_like(a.lora_B)) for a in adapters)
            assert all(a.lora_A.abs().sum() > 0 for a in adapters)
            assert not any(p in opt.state for a in adapters for p in a.parameters()), "Adam state not dropped"
            for path, ly in lorakit.lora_layers(model):
                w0 = base.get_submodule(path).weight
                assert torch.allclose(ly.weight, w0 + cb.delta[path], atol=1e-6)
                assert cb.delta[path].abs().sum() > 0

    train(model, [probe, cb], batches(5), lm_loss, opt, after_step=observe)
    for t, (before_cb, after_cb) in enumerate(zip(probe.outputs, after, strict=True), start=1):
        assert torch.allclose(before_cb, after_cb, atol=1e-5), f"unloading changed the output at step {t}"
    assert cb.stages == 1
    assert all(len(opt.state[p]) for _, ly in lorakit.lora_layers(model) for p in ly.adapters["default"].parameters())


def test_momentum_unloading_preserves_function():
    _, model = _model()
    probe, after = Probe(), []
    cb = PeriodicLoRA(period=100, momentum=0.2)

    def observe(state):
        with torch.no_grad():
            after.append(run(model, "llama", X))

    train(model, [probe, cb], batches(4), lm_loss, _adam(model), after_step=observe)
    for a, b in zip(probe.outputs, after, strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    assert cb.stages == 0 and all(d.abs().sum() > 0 for d in cb.delta.values())


def test_low_precision_base_keeps_fp32_master():
    _, model = _model(dtype=torch.bfloat16)
    path, layer = next(iter(lorakit.lora_layers(model)))
    orig = layer.weight.detach().clone()
    adapter = layer.adapters["default"]
    cb = PeriodicLoRA(period=1)
    state = lorakit.train.TrainState(model=model)
    naive = orig.clone()
    for _ in range(8):
        with torch.no_grad():  # an update far below bf16's resolution of the weights
            adapter.lora_B.fill_(3e-3)
            adapter.lora_A.fill_(3e-3)
        naive += adapter.delta_weight().to(torch.bfloat16)
        cb.unload_all(state)
    expected = (orig.float() + cb.delta[path]).to(torch.bfloat16)
    assert torch.equal(layer.weight, expected)
    assert not torch.equal(layer.weight, orig), "eight sub-ulp updates must add up to a visible change"
    lost = (naive == orig) & (expected != orig)
    assert lost.sum() > 100, "(control) merging each update into bf16 directly loses it"


class FakeQuantLinear(torch.nn.Linear):
    """A stand-in for a quantised base: weights rounded to multiples of 0.05 (the protocol of lorakit.quant)."""

    is_quantized = True

    def __init__(self, weight, bias=None):
        super().__init__(weight.shape[1], weight.shape[0], bias=bias is not None)
        with torch.no_grad():
            self.weight.copy_(torch.round(weight / 0.05) * 0.05)
            if bias is not None:
                self.bias.copy_(bias)
        self.requires_grad_(False)

    def dequantize(self):
        return self.weight.detach().float()

    def requantized(self, weight):
        return FakeQuantLinear(weight, self.bias)


def test_quantised_base_requantises_from_master_and_restores():
    _, model = _model()
    path, layer = next(iter(lorakit.lora_layers(model)))
    layer.base_layer = FakeQuantLinear(layer.base_layer.weight, layer.base_layer.bias)
    original_module = layer.base_layer
    adapter = layer.adapters["default"]
    cb = PeriodicLoRA(period=1)
    state = lorakit.train.TrainState(model=model)
    for _ in range(3):
        with torch.no_grad():
            adapter.lora_B.fill_(0.02)
            adapter.lora_A.fill_(0.1)
        cb.unload_all(state)
    master = original_module.dequantize() + cb.delta[path]
    assert torch.equal(layer.base_layer.weight, torch.round(master / 0.05) * 0.05)
    to_lora(model, cb)
    assert layer.base_layer is original_module, "the original quantised module must come back bit for bit"


def test_saved_result_reloads_on_original_base(tmp_path):
    base, model = _model(r=2)
    cb = PeriodicLoRA(period=2)
    train(model, [cb], batches(5), lm_loss, _adam(model, lr=2e-2))
    model.eval()
    expected = run(model, "llama", X)
    assert cb.stages == 2
    name = to_lora(model, cb)
    for path, ly in lorakit.lora_layers(model):
        assert ly.adapters[name].r == 3 * 2  # two unloaded stages + the live adapter, rank 2 each
        assert torch.allclose(ly.weight, base.get_submodule(path).weight, atol=1e-6), "base restored"
    assert torch.allclose(run(model, "llama", X), expected, atol=1e-5)
    lorakit.save_adapter(model, tmp_path, name)
    reloaded = lorakit.load_adapter(copy.deepcopy(base), tmp_path)
    assert torch.allclose(run(reloaded, "llama", X), expected, atol=1e-5)


def test_scheduler_restarts():
    _, model = _model()
    opt = _adam(model, lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: (t + 1) / 4)
    lrs = []
    train(model, [PeriodicLoRA(period=3, reset_scheduler=True)], batches(5), lm_loss, opt, scheduler=sched,
          after_step=lambda s: lrs.append(opt.param_groups[0]["lr"]))
    assert lrs == pytest.approx([0.5, 0.75, 0.25, 0.5, 0.75])


def test_bad_arguments():
    with pytest.raises(ValueError, match="period=0: expected a positive number"):
        PeriodicLoRA(period=0)
    with pytest.raises(ValueError, match="momentum=1.5"):
        PeriodicLoRA(period=2, momentum=1.5)
    model = lorakit.inject(build("llama"), lorakit.LoraConfig(variant="adalora", r=4, target_modules=TARGETS))
    with pytest.raises(ValueError, match="additive variant"):
        train(model, [PeriodicLoRA(period=2)], batches(1), lm_loss, _adam(model))
    model = lorakit.inject(build("llama"), lorakit.LoraConfig(r=2, init="pissa", target_modules=TARGETS))
    cb = PeriodicLoRA(period=1)
    train(model, [cb], batches(1), lm_loss, _adam(model))
    with pytest.raises(ValueError, match="init='pissa', so the base holds the residual"):
        to_lora(model, cb)


def test_qlora_base_when_available():
    """With lorakit.quant (QLoRA) present: the 4-bit base is re-quantised from the fp32 master and restored."""
    pytest.importorskip("lorakit.quant")
    base = build("llama")
    model = lorakit.inject(copy.deepcopy(base), lorakit.LoraConfig(r=2, alpha=4, target_modules=TARGETS,
                                                                  quantize="nf4"))
    cb = PeriodicLoRA(period=2)
    originals = {p: ly.base_layer for p, ly in lorakit.lora_layers(model)}
    train(model, [cb], batches(4), lm_loss, _adam(model, lr=2e-2))
    for path, ly in lorakit.lora_layers(model):
        assert getattr(ly.base_layer, "is_quantized", False) and ly.base_layer is not originals[path]
        master = originals[path].dequantize() + cb.delta[path]
        requant = type(originals[path])(master, None, originals[path].quant_type, originals[path].double_quant)
        assert torch.equal(ly.base_layer.dequantize(), requant.dequantize())
    to_lora(model, cb)
    assert all(ly.base_layer is originals[p] for p, ly in lorakit.lora_layers(model))
