"""The contract matrix: every case (layer type x init x scaling x bias mode x config) through the
shared invariants in ``contract.py``. Variants add rows here."""

import contract
import pytest

CONVS = ["conv1d", "conv", "conv_strided", "conv_grouped", "conv_reflect", "pw"]

CASES = {
    "mlp-kaiming": ("mlp", dict(target_modules=["lin0", "lin1"])),
    "mlp-gaussian-rslora-biasall": ("mlp", dict(target_modules=["lin0", "lin1"], init="gaussian", use_rslora=True,
                                                 bias="all")),
    "mlp-regex-loraonly-save": ("mlp", dict(target_modules=r"lin\d", bias="lora_only", modules_to_save=["head"])),
    "mlp-pissa": ("mlp", dict(target_modules=["lin0", "lin1"], init="pissa", r=4, alpha=8)),
    "mlp-olora": ("mlp", dict(target_modules=["lin1"], init="olora", r=4)),
    "mlp-dropout": ("mlp", dict(target_modules=["lin0", "lin1"], dropout=0.2)),
    "conv-kaiming": ("conv", dict(target_modules=CONVS, r=4)),
    "conv-gaussian-biasall-save": ("conv", dict(target_modules=CONVS, r=4, init="gaussian", bias="all",
                                                modules_to_save=["head"])),
    "emb": ("emb", dict(target_modules=["emb", "lin"], r=4)),
    "llama-all-linear": ("llama", dict(target_modules="all-linear", r=4, alpha=8)),
    "llama-patterns": ("llama", dict(target_modules=["q_proj", "v_proj", "down_proj"], rank_pattern={"v_proj": 2},
                                     alpha_pattern={"q_proj": 16}, layers_to_transform=[1])),
    "gpt2-conv1d": ("gpt2", dict(target_modules=["c_attn", "c_proj"], r=4)),
    "gpt2-all-linear-rslora": ("gpt2", dict(target_modules="all-linear", r=4, use_rslora=True)),
    # LyCORIS variants (LoHa: Hadamard, LoKr: Kronecker)
    "loha-mlp": ("mlp", dict(variant="loha", target_modules=["lin0", "lin1"], r=4, bias="lora_only")),
    "loha-conv": ("conv", dict(variant="loha", target_modules=CONVS, r=4, modules_to_save=["head"])),
    "loha-conv-tucker": ("conv", dict(variant="loha", target_modules=CONVS, r=2, use_effective_conv2d=True)),
    "loha-gpt2-conv1d": ("gpt2", dict(variant="loha", target_modules=["c_attn", "c_proj"], r=2, dropout=0.1)),
    "lokr-mlp": ("mlp", dict(variant="lokr", target_modules=["lin0", "lin1"], r=1, decompose_both=True,
                             decompose_factor=2)),
    "lokr-conv": ("conv", dict(variant="lokr", target_modules=CONVS, r=1, init="lycoris")),
    "lokr-conv-tucker": ("conv", dict(variant="lokr", target_modules=CONVS, r=1, use_effective_conv2d=True)),
    "lokr-llama": ("llama", dict(variant="lokr", target_modules="all-linear", r=2, alpha=4)),
    # AdaLoRA's SVD-form layer (rank allocation itself is tested in tests/train)
    "adalora-mlp": ("mlp", dict(variant="adalora", target_modules=["lin0", "lin1"], r=4, dropout=0.1)),
    "adalora-conv": ("conv", dict(variant="adalora", target_modules=CONVS, r=4, modules_to_save=["head"])),
    "adalora-gpt2": ("gpt2", dict(variant="adalora", target_modules=["c_attn", "c_proj"], r=4)),
    # DoRA (adapters/dora.py): every layer kind, plus dropout and principal inits underneath it
    "dora-mlp": ("mlp", dict(target_modules=["lin0", "lin1"], variant="dora", bias="lora_only")),
    "dora-mlp-dropout-pissa": ("mlp", dict(target_modules=["lin0", "lin1"], variant="dora", dropout=0.2,
                                           init="pissa", r=4)),
    "dora-conv": ("conv", dict(target_modules=CONVS, r=4, variant="dora", modules_to_save=["head"])),
    "dora-emb": ("emb", dict(target_modules=["emb", "lin"], r=4, variant="dora")),
    "dora-gpt2-conv1d": ("gpt2", dict(target_modules=["c_attn", "c_proj"], r=4, variant="dora")),
    "dora-llama-rslora": ("llama", dict(target_modules="all-linear", r=4, variant="dora", use_rslora=True)),
    "dora-gpt2-olora": ("gpt2", dict(target_modules=["c_attn", "c_fc"], r=4, variant="dora", init="olora")),
    # QLoRA (quant.py): 4-bit bases under LoRA and DoRA
    "qlora-nf4-mlp-save": ("mlp", dict(target_modules=["lin0", "lin1"], quantize="nf4", modules_to_save=["head"])),
    "qlora-fp4-nodq-mlp": ("mlp", dict(target_modules=["lin1"], quantize="fp4", double_quant=False)),
    "qlora-nf4-llama-rslora": ("llama", dict(target_modules=["q_proj", "v_proj", "up_proj"], r=4, quantize="nf4",
                                             use_rslora=True)),
    "qlora-nf4-gpt2-conv1d": ("gpt2", dict(target_modules=["c_attn"], r=4, quantize="nf4")),
    "qdora-nf4-mlp": ("mlp", dict(target_modules=["lin0", "lin1"], variant="dora", quantize="nf4")),
    "qdora-nf4-llama": ("llama", dict(target_modules="all-linear", r=4, variant="dora", quantize="nf4")),
}

params = pytest.mark.parametrize("case", list(CASES))


@params
def test_fresh_is_base(case):
    contract.check_fresh_is_base(*CASES[case])


@params
def test_disabled_is_base(case):
    contract.check_disabled_is_base(*CASES[case])


@params
def test_merge_unmerge(case):
    contract.check_merge(*CASES[case])


@params
def test_save_load(case, tmp_path):
    contract.check_save_load(*CASES[case], tmp_path)


@params
def test_training_touches_only_adapters(case):
    contract.check_training(*CASES[case])
