"""The single-process parts of lorakit.train.distributed: the launcher's environment (torchrun, SLURM), which
errors mean a lost process, the FSDP config checks."""

import pytest
import tiny_hf as tiny

from lorakit.config import ConfigError
from lorakit.train.config import from_dict
from lorakit.train.distributed import Distributed, DistributedRunError, launch_env


def test_launch_env_reads_torchrun_then_slurm():
    torchrun = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "SLURM_PROCID": "9"}
    assert launch_env(torchrun) == {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    slurm = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_NTASKS_PER_NODE": "4(x2)",
             "MASTER_ADDR": "node1"}
    assert launch_env(slurm) == {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"}
    assert launch_env({k: v for k, v in slurm.items() if k != "MASTER_ADDR"}) == {}  # srun of one process
    assert launch_env({"SLURM_NTASKS": "1", "SLURM_PROCID": "0", "MASTER_ADDR": "x"}) == {}
    assert launch_env({}) == {}


def test_a_lost_peer_becomes_one_clear_error_naming_the_checkpoint(tmp_path):
    ckpt = tmp_path / "checkpoint-000004"
    ckpt.mkdir()
    (ckpt / "COMPLETE").write_text('{"step": 4}')
    d = Distributed(rank=1, world=2, strategy="fsdp")
    gloo = RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:1")
    err = d.lost_peer(gloo, tmp_path)
    assert isinstance(err, DistributedRunError)
    assert str(err).startswith("rank 1 of 2: another process of this run stopped or the connection failed (Runtime")
    assert f"The newest complete checkpoint is {ckpt}; restart every process with `--resume`" in str(err)
    assert "No checkpoint was written yet" in str(d.lost_peer(gloo, tmp_path / "empty"))
    assert d.lost_peer(ValueError("bad value in the data"), tmp_path) is None  # not a distributed failure
    assert Distributed().lost_peer(gloo, tmp_path) is None  # one process: nothing was lost


def _cfg(tmp_path, bert_path, **train):
    tiny.write_jsonl(tmp_path / "train.jsonl", tiny.classification_rows())
    return {"model": {"path": str(bert_path), "task": "classification", "device": "cpu"},
            "data": {"train": str(tmp_path / "train.jsonl")}, "lora": {"r": 4, "target_modules": ["query"]},
            "train": {"output_dir": str(tmp_path / "run"), **train}}


def test_fsdp_options_are_checked_against_the_device_and_each_other(tmp_path, bert_path):
    assert from_dict(_cfg(tmp_path, bert_path, distributed="fsdp", fsdp_wrap=["BertLayer"])).train.distributed == "fsdp"
    with pytest.raises(ConfigError) as exc:
        from_dict(_cfg(tmp_path, bert_path, distributed="fsdp", fsdp_cpu_offload=True, mixed_precision="bf16",
                       fsdp_wrap=["not a class"]))
    text = str(exc.value)
    assert "train.fsdp_cpu_offload: true keeps GPU weights in CPU memory" in text and "model.device='cpu'" in text
    assert "train.fsdp_wrap=['not a class']: expected block class names" in text
    with pytest.raises(ConfigError, match="train.fsdp_wrap is an FSDP option but train.distributed='ddp'"):
        from_dict(_cfg(tmp_path, bert_path, fsdp_wrap=["BertLayer"]))
    with pytest.raises(ConfigError, match="train.distributed='sharded': expected one of 'ddp', 'fsdp'"):
        from_dict(_cfg(tmp_path, bert_path, distributed="sharded"))
