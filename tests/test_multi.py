"""lorakit.per_row: each row of a mixed batch equals that row run alone with its adapter and strength,
PEFT's ``adapter_names`` at strength 1, and the base model on rows without adapter."""

from __future__ import annotations

import copy

import pytest
import torch
from models import build, example_input, run

import lorakit

ALGOS = [None, "gather", "segment", "dense", "padded"]


def _randomise(model, seed: int = 1, std: float = 0.2):
    """Non-zero B factors / LyCORIS factors, so every adapter changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad and ".modules_to_save." not in n:
                p.add_(torch.randn(p.shape, generator=g) * std)


def _adapted(name: str, configs: dict[str, dict], seed: int = 0):
    model = build(name, seed)
    for adapter, kw in configs.items():
        lorakit.inject(model, lorakit.LoraConfig(**kw), adapter, activate=False)
    _randomise(model)
    return model.eval()


def _alone(model, name: str, x, adapter: str | None, strength: float) -> torch.Tensor:
    with torch.no_grad():
        if adapter is None:
            with lorakit.disable_adapters(model):
                return run(model, name, x)
        lorakit.set_active_adapters(model, {adapter: strength})
        return run(model, name, x)


def _check_rows(model, name, x, rows, strengths, algorithm=None, atol=1e-5):
    with torch.no_grad(), lorakit.per_row(model, rows, strengths, algorithm=algorithm):
        mixed = run(model, name, x)
    for i, (a, s) in enumerate(zip(rows, strengths, strict=True)):
        alone = _alone(model, name, x[i:i + 1], a, s)[0]
        tol = 1e-6 if a is None or s == 0 else atol
        err = (mixed[i] - alone).abs().max().item()
        assert err <= tol, f"row {i} ({a}, {s}) differs from running it alone by {err}"
    return mixed


LLAMA_MIX = {"r4": dict(r=4, alpha=8, target_modules="all-linear"),
             "r16": dict(r=16, alpha=8, target_modules="all-linear"),
             "rs": dict(r=8, alpha=4, use_rslora=True, target_modules=["q_proj", "v_proj"]),
             "dora": dict(r=4, alpha=4, variant="dora", target_modules="all-linear"),
             "loha": dict(r=4, alpha=4, variant="loha", target_modules=["o_proj", "up_proj"]),
             "lokr": dict(r=4, alpha=4, variant="lokr", target_modules=["k_proj"])}


@pytest.mark.parametrize("algorithm", ALGOS)
def test_llama_rows_equal_each_row_alone(algorithm):
    model = _adapted("llama", LLAMA_MIX)
    x = torch.randint(0, 64, (9, 6), generator=torch.Generator().manual_seed(3))
    rows = ["r4", "r16", None, "rs", "dora", "loha", "lokr", "r4", "dora"]
    strengths = [1.0, 0.5, 1.0, 1.3, 0.7, 1.0, -0.5, 0.0, 1.0]
    _check_rows(model, "llama", x, rows, strengths, algorithm)


def test_padded_kernel_skewed_groups_and_partial_stacks(monkeypatch):
    """The padded kernel's three cases: big groups through segments, the whole stack in place, and a
    copied subset of a stack when few of many loaded adapters are in the batch."""
    monkeypatch.setattr(lorakit.multi, "PADDED_NS_PER_VALUE", 1e3)  # padding dear: big groups go to segments
    model = _adapted("mlp", {f"a{i}": dict(r=2 + i % 3, alpha=4, target_modules=["lin0", "lin1"]) for i in range(10)})
    x = torch.randn(24, 3, 10, generator=torch.Generator().manual_seed(8))  # 3 tokens per row
    skewed = ["a0"] * 11 + ["a1"] * 3 + [f"a{i}" for i in range(2, 10)] + [None, None]
    strengths = [0.5 + 0.1 * i for i in range(24)]
    few = ["a3", "a7", None, "a3"] * 6
    plans = []
    for rows in (skewed, few):
        with torch.no_grad(), lorakit.per_row(model, rows, strengths, algorithm="padded") as rmap:
            mixed = model(x)
        plans += [plan for _, plan in rmap._plans.values()]
        for i, (a, s) in enumerate(zip(rows, strengths, strict=True)):
            alone = _alone(model, "mlp", x[i:i + 1], a, s)[0]
            assert (mixed[i] - alone).abs().max() <= (1e-6 if a is None else 1e-5), (rows[i], i)
    assert any(p[5] for p in plans), "no group was large enough to take segments"
    assert any(p[0] is None for p in plans) and any(p[0] is not None for p in plans)


def test_gpt2_conv1d_rows_equal_each_row_alone():
    cfg = dict(target_modules=["c_attn", "c_proj"], r=4, alpha=8)
    model = _adapted("gpt2", {"a": cfg, "b": {**cfg, "r": 2}, "d": {**cfg, "variant": "dora"}})
    x = example_input("gpt2").repeat(3, 1)[:5]
    _check_rows(model, "gpt2", x, ["a", "b", "d", None, "a"], [1.0, 2.0, 0.5, 1.0, 0.3])


@pytest.mark.parametrize("variant", ["lora", "dora"])
def test_conv_and_embedding_layers(variant):
    conv = dict(target_modules=["conv", "conv_strided", "conv_grouped", "conv1d", "head"], r=4, alpha=4,
                variant=variant)
    model = _adapted("conv", {"a": conv, "b": {**conv, "r": 2, "target_modules": ["conv", "conv1d"]}})
    x = torch.randn(4, 3, 9, 9, generator=torch.Generator().manual_seed(2))
    _check_rows(model, "conv", x, ["a", "b", None, "a"], [1.0, 0.5, 1.0, -1.0])
    emb = dict(target_modules=["emb", "lin"], r=4, alpha=4, variant=variant)
    model = _adapted("emb", {"a": emb, "b": {**emb, "r": 3}})
    x = torch.randint(0, 50, (4, 7), generator=torch.Generator().manual_seed(2))
    _check_rows(model, "emb", x, ["b", "a", None, "a"], [1.0, 0.5, 1.0, 2.0])


def test_modules_to_save_head_per_adapter():
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_labels=3,
                      num_attention_heads=4, num_key_value_heads=2, pad_token_id=0)
    model = LlamaForSequenceClassification(cfg).eval()
    for name in ("a", "b"):
        lorakit.inject(model, lorakit.LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"],
                                                 modules_to_save=["score"]), name, activate=False)
    _randomise(model)
    with torch.no_grad():
        for name in ("a", "b"):
            model.score.modules_to_save[name].weight.normal_()
    x = torch.randint(1, 64, (4, 5), generator=torch.Generator().manual_seed(4))
    mixed = _check_rows(model, "llama", x, ["a", "b", None, "b"], [1.0, 1.0, 1.0, 0.5])
    with torch.no_grad():
        with lorakit.disable_adapters(model):
            base = model(x).logits
    assert (mixed[0] - base[0]).abs().max() > 1e-2  # the heads really differ from the original


def _head_adapter():
    """The MLP with LoRA on lin0/lin1 and a trained copy of ``head`` (modules_to_save), random factors."""
    model = build("mlp")
    lorakit.inject(model, lorakit.LoraConfig(r=4, alpha=8, target_modules=["lin0", "lin1"], modules_to_save=["head"]),
                   "a", activate=False)
    _randomise(model)
    with torch.no_grad():
        for p in model.head.modules_to_save["a"].parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(7)))
    return model.eval()


def _by_formula(model, sigma: float) -> torch.Tensor:
    """What strength σ means, written out on a plain copy of the base: W + σ·s·B·A for the LoRA layers and
    W + σ·(W' − W) for the head's copy (its output is affine in W, so this is the blend of outputs)."""
    plain = build("mlp").eval()
    with torch.no_grad():
        for name in ("lin0", "lin1"):
            layer = getattr(model, name)
            ad = layer.adapters["a"]
            getattr(plain, name).weight.copy_(layer.base_layer.weight + sigma * ad.scale * ad.lora_B @ ad.lora_A)
        for pname in ("weight", "bias"):
            w0 = getattr(model.head.original_module, pname)
            getattr(plain.head, pname).copy_(w0 + sigma * (getattr(model.head.modules_to_save["a"], pname) - w0))
    return plain


@pytest.mark.parametrize("sigma", [0.0, 0.5, 1.0, 1.7])
def test_modules_to_save_strength_rule(sigma, tmp_path):
    """A copy at strength σ is base + σ·(copy − base): the same in set_active_adapters and per_row (strength 0 is
    the base head in both), merge_and_unload writes it, and σ = 1 is PEFT's model."""
    model = _head_adapter()
    x = example_input("mlp")
    with torch.no_grad():
        expected = _by_formula(model, sigma)(x)
        got = _alone(model, "mlp", x, "a", sigma)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        with lorakit.per_row(model, ["a"] * len(x), [sigma] * len(x)):
            torch.testing.assert_close(model(x), got, atol=1e-5, rtol=1e-5)
        if sigma == 0:
            with lorakit.disable_adapters(model):
                torch.testing.assert_close(got, model(x), atol=0, rtol=0)
        lorakit.set_active_adapters(model, {"a": sigma})
        merged = lorakit.merge_and_unload(copy.deepcopy(model))
        torch.testing.assert_close(merged(x), got, atol=1e-5, rtol=1e-5)
    if sigma == 1:
        import peft

        lorakit.save_adapter(model, tmp_path, "a")
        theirs = peft.PeftModel.from_pretrained(build("mlp").eval(), tmp_path)
        with torch.no_grad():
            torch.testing.assert_close(theirs(x), got, atol=1e-5, rtol=1e-5)


def test_modules_to_save_strengths_mixed_in_one_batch():
    model = _head_adapter()
    x = example_input("mlp")
    _check_rows(model, "mlp", x, ["a", "a", None, "a"], [0.0, 0.5, 1.0, 1.0])
    _check_rows(model, "mlp", x, ["a", "a", "a", "a"], [1.0, 0.25, 1.0, 0.0])


def test_modules_to_save_blend_of_a_non_affine_module_is_not_merged():
    model = build("mlp")
    model.block = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Tanh())
    lorakit.inject(model, lorakit.LoraConfig(r=2, target_modules=["lin0"], modules_to_save=["block"]), "a")
    lorakit.set_active_adapters(model, {"a": 0.5})
    with pytest.raises(ValueError, match="cannot fold the modules_to_save copy of a Sequential at strength 0.5"):
        lorakit.merge_and_unload(model)


def test_equals_peft_adapter_names(tmp_path):
    import peft

    base = build("llama")
    pm = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    pm.add_adapter("big", peft.LoraConfig(r=12, lora_alpha=6, target_modules=["q_proj", "down_proj"]))
    pm.add_adapter("rs", peft.LoraConfig(r=8, lora_alpha=8, use_rslora=True, target_modules=["v_proj"]))
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    pm.save_pretrained(tmp_path)
    lk = copy.deepcopy(base)
    lorakit.load_adapter(lk, tmp_path, "default", activate=False)
    for name in ("big", "rs"):
        lorakit.load_adapter(lk, tmp_path / name, name, activate=False)
    x = torch.randint(0, 64, (6, 8), generator=torch.Generator().manual_seed(6))
    rows = ["default", "big", "__base__", "rs", "big", "default"]
    pm.eval()
    with torch.no_grad():
        theirs = pm(x, adapter_names=rows).logits
        for algorithm in ALGOS:
            with lorakit.per_row(lk, [None if r == "__base__" else r for r in rows], algorithm=algorithm):
                ours = lk(x).logits
            assert (ours - theirs).abs().max() <= 1e-4
        with lorakit.disable_adapters(lk):
            plain = lk(x).logits
    assert (ours[2] - plain[2]).abs().max() <= 1e-6
    assert (ours[0] - plain[0]).abs().max() > 1e-2


def test_generate_mixed_rows_kv_cache_and_beams():
    model = _adapted("llama", {k: LLAMA_MIX[k] for k in ("r4", "dora", "lokr")})
    x = torch.randint(1, 64, (4, 5), generator=torch.Generator().manual_seed(7))
    rows, strengths = ["r4", None, "dora", "lokr"], [1.0, 1.0, 0.6, 1.0]
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None)
    for extra in ({}, {"num_beams": 2, "num_return_sequences": 2}):
        with torch.no_grad(), lorakit.per_row(model, rows, strengths):
            mixed = model.generate(x, **kw, **extra)
        k = extra.get("num_return_sequences", 1)
        for i, (a, s) in enumerate(zip(rows, strengths, strict=True)):
            with torch.no_grad():
                if a is None:
                    with lorakit.disable_adapters(model):
                        alone = model.generate(x[i:i + 1], **kw, **extra)
                else:
                    lorakit.set_active_adapters(model, {a: s})
                    alone = model.generate(x[i:i + 1], **kw, **extra)
            assert torch.equal(mixed[i * k:(i + 1) * k], alone), f"row {i} ({a}) generated differently"


def test_state_is_restored_and_base_rows_exact():
    model = _adapted("mlp", {"a": dict(r=2, alpha=2, target_modules=["lin0", "lin1"])})
    lorakit.set_active_adapters(model, "a")
    x = example_input("mlp")
    with torch.no_grad():
        before = model(x)
        with lorakit.per_row(model, [None] * 4):
            with lorakit.disable_adapters(model):
                base = model(x)
            inside = model(x)
        assert torch.equal(inside, base)
        assert torch.equal(model(x), before)
    assert all(layer.rows is None for _, layer in lorakit.lora_layers(model))


def test_errors():
    model = _adapted("mlp", {"a": dict(r=2, alpha=2, target_modules=["lin0"])})
    x = example_input("mlp")
    with pytest.raises(ValueError, match=r"unknown adapter\(s\) \['zz'\]; this model has \['a'\]"):
        with lorakit.per_row(model, ["a", "zz"]):
            pass
    with pytest.raises(ValueError, match="2 adapter names but 3 strengths"):
        with lorakit.per_row(model, ["a", None], [1, 2, 3]):
            pass
    with pytest.raises(ValueError, match="finite"):
        with lorakit.per_row(model, ["a"], [float("nan")]):
            pass
    with pytest.raises(ValueError, match="algorithm=.bmm.: expected None"):
        with lorakit.per_row(model, ["a"], algorithm="bmm"):
            pass
    with pytest.raises(ValueError, match="given 3 rows but a layer saw a batch of 4"):
        with torch.no_grad(), lorakit.per_row(model, ["a", None, "a"]):
            model(x)
    lorakit.set_active_adapters(model, "a")
    lorakit.merge(model)
    with pytest.raises(RuntimeError, match="unmerge"):
        with lorakit.per_row(model, ["a"] * 4):
            pass


def test_cached_stacks_follow_weight_changes():
    cfg = dict(r=2, alpha=2, target_modules=["lin0", "lin1"])
    model = _adapted("mlp", {"a": cfg, "d": {**cfg, "variant": "dora"}})
    x = example_input("mlp")
    rows = ["a", "d", None, "d"]
    _check_rows(model, "mlp", x, rows, [1.0] * 4)
    with torch.no_grad():  # in-place writes (a training step, load_state_dict) bump version counters
        for name, p in model.named_parameters():
            if "lora_B" in name or "magnitude" in name or name == "lin1.base_layer.weight":
                p.mul_(1.5)
    _check_rows(model, "mlp", x, rows, [1.0] * 4)
    lorakit.delete_adapter(model, "a")
    _check_rows(model, "mlp", x, ["d", None, "d", "d"], [0.5] * 4)
