"""The memory calculator of ``lorakit validate`` against real models: parameter counts and bytes equal those of
the model the trainer builds (LoRA, DoRA, QLoRA NF4), activations match what autograd keeps, and validate
checks a config for the processes it will run on."""

import pytest
import tiny_hf as tiny
import torch
import yaml
from typer.testing import CliRunner

from lorakit.cli import app, commands  # noqa: F401  (commands registers the commands)
from lorakit.quant import Linear4bit
from lorakit.tasks.text.models import load_model, select_trainable
from lorakit.train.config import from_dict
from lorakit.train.estimate import _activations, text_estimate
from lorakit.train.plan import processes


def _cfg(tmp_path, llama_path, **lora):
    (tmp_path / "train.txt").write_text("\n\n".join(tiny.CORPUS))
    return {"model": {"path": str(llama_path), "device": "cpu"},
            "data": {"train": str(tmp_path / "train.txt"), "max_length": 8, "packing": True},
            "lora": {"r": 4, "target_modules": "all-linear", **lora},
            "train": {"output_dir": str(tmp_path / "run"), "batch_size": 2}}


@pytest.mark.parametrize("lora", [{}, {"variant": "dora"}, {"quantize": "nf4"}, {"quantize": "fp4", "double_quant": False}],
                         ids=["lora", "dora", "nf4", "fp4-no-dq"])
def test_counts_and_bytes_equal_the_built_model(tmp_path, llama_path, lora):
    cfg = from_dict(_cfg(tmp_path, llama_path, **lora))
    est = text_estimate(cfg)
    real = select_trainable(load_model(cfg.model), cfg)
    trainable = [p for p in real.parameters() if p.requires_grad]
    assert est.trainable == sum(p.numel() for p in trainable)
    packed = [m for m in real.modules() if isinstance(m, Linear4bit)]
    dense = sum(p.numel() * 4 for p in real.parameters() if not p.requires_grad)
    expected = {"float32": dense} | ({lora["quantize"]: sum(m.storage_bytes() for m in packed)} if packed else {})
    assert est.frozen_bytes == expected
    assert est.params == sum(p.numel() for p in real.parameters() if not p.requires_grad) + \
        sum(m.in_features * m.out_features for m in packed) + est.trainable
    assert est.blocks == real.config.num_hidden_layers  # FSDP units: one per LlamaDecoderLayer


def test_activation_estimate_matches_what_autograd_keeps(llama_path):
    """All linear layers adapted: the saved tensors of one forward (distinct storages, parameters excluded)."""
    from lorakit.config import LoraConfig
    from lorakit.inject import inject
    from lorakit.tasks.text.config import ModelArgs

    model = inject(load_model(ModelArgs(path=str(llama_path))), LoraConfig(r=4, target_modules="all-linear"))
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    for batch, seq in ((1, 16), (4, 32)):
        kept.clear()
        ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(0))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(input_ids=ids, labels=ids).loss.backward()
        estimate = _activations(model.config, batch * seq, seq, "float32", False)
        assert estimate == pytest.approx(sum(kept.values()), rel=0.15), (batch, seq)


def test_processes_from_options_or_torchrun_env():
    assert processes(4, 2, {}) == (8, 4)
    assert processes(None, None, {"WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4"}) == (8, 4)
    assert processes(None, None, {}) == (1, 1)


def test_validate_checks_the_processes_and_prints_the_memory_table(tmp_path, llama_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(_cfg(tmp_path, llama_path, quantize="nf4") | {
        "train": {"output_dir": str(tmp_path / "run"), "batch_size": 2, "distributed": "fsdp"}}))
    result = CliRunner().invoke(app, ["validate", str(path), "--nproc-per-node", "2"])
    assert result.exit_code == 0, result.output
    for part in ("processes: 2 (2 per node x 1 node(s)), fsdp", "= 4 samples per optimizer step",
                 "FSDP x2, each", "base weights", "total (estimate)"):
        assert part in result.output, (part, result.output)
    result = CliRunner().invoke(app, ["validate", str(path), "--nproc-per-node", "2", "--nnodes", "8"])
    assert result.exit_code == 1
    assert "fewer than one optimizer step needs (batch 2 x accumulation 1 x 16 processes = 32)" in \
        " ".join(result.output.split())


@pytest.mark.parametrize("device", ["cuda", "auto"])
def test_device_check_one_gpu_per_process(monkeypatch, device):
    """validate's check that each process of a node gets its own GPU (LOCAL_RANK picks it)."""
    from lorakit.train.plan import device_problems

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert device_problems(device, 2) == ([], [])
    assert device_problems(device, 1) == ([], [])
    problems, notes = device_problems(device, 4)
    assert problems == ["4 processes per node but this machine has 2 CUDA device(s); each process takes GPU "
                        "LOCAL_RANK of its node: use --nproc-per-node 2 (torchrun's too)."] and notes == []


def test_device_check_cpu_processes_beyond_cores(monkeypatch):
    from lorakit.train.plan import device_problems

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    assert device_problems("auto", 2) == ([], [])
    assert device_problems("auto", 3) == ([], ["3 CPU processes share 2 cores: each gets one thread and they wait "
                                               "on each other."])
