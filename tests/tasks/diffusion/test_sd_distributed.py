"""SD training on two processes (DDP, gloo, CPU) equals one process on the same global batch: the loss of every
step and the LoRA file agree within 1e-5, with the text encoders trained, with ``train_unet_only``, and with
cached text-encoder outputs (which crashed at step 2 under torchrun: the unfrozen encoders were "parameters
that were not used in producing loss", issue 19 item 1); and with FSDP2 (U-Net and CLIP sharded per block).
The same for FLUX.1 and SD3 (DDP with cached text states and ``train_unet_only``; FSDP2 with the transformer's,
CLIP's and T5's blocks as units, CLIP trained): before, their noise and σ came from each rank's own RNG, not the batch's."""

import json

import pytest
import sd_pipes
import torch
from dit_tiny import save_pipeline as save_dit_pipeline
from multiproc import run_ranks
from safetensors.torch import load_file

from lorakit.train import run
from lorakit.train.callbacks import Callback
from lorakit.train.config import from_dict

CASES = {"te": {}, "unet-only": {"network": {"train_unet_only": True}},
         "cached-te": {"network": {"train_unet_only": True}, "data": {"cache_text_encoder_outputs": True}},
         "fsdp": {"train": {"distributed": "fsdp"}}}  # U-Net and CLIP blocks sharded (their _no_split_modules)


def config(tmp, model, images, case: str, out: str, accum: int):
    """Two steps of 2 samples each (a checkpoint and a LoRA file after the first): 2 processes x batch 1, or
    1 process x batch 1 x accumulation 2."""
    extra = CASES[case]
    cfg = sd_pipes.sd_config(tmp, model, images, network={**extra.get("network", {})},
                            data={**extra.get("data", {}), "cache_dir": str(tmp / f"cache-{out}")},
                            train={"output_dir": str(tmp / out), "batch_size": 1, "grad_accum": accum, "max_steps": 2,
                                   "save_precision": "fp32", "save_every_n_epochs": None, "save_every_n_steps": 1,
                                   "lr": 1e-3, **extra.get("train", {})})
    return from_dict(cfg)


def _ddp_worker(rank, tmp, model, images):
    for case in CASES:
        run(config(tmp, model, images, case, f"ddp-{case}", accum=1), quiet=True)
    return rank


@pytest.fixture(scope="module")
def sd_ddp(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sd-ddp")
    model, images = sd_pipes.save_pipeline(tmp / "model"), sd_pipes.save_dataset(tmp / "img")
    run_ranks(_ddp_worker, 2, (tmp, model, images), timeout=300, log_dir=tmp)
    return tmp, model, images


def _losses(run_dir):
    return [json.loads(r)["loss"] for r in (run_dir / "metrics.jsonl").read_text().splitlines() if "loss" in r]


@pytest.mark.parametrize("case", list(CASES))
def test_sd_ddp_two_ranks_equal_one_process(sd_ddp, case):
    tmp, model, images = sd_ddp
    single = run(config(tmp, model, images, case, f"single-{case}", accum=2), quiet=True)
    assert single.summary["steps"] == 2
    a, b = tmp / f"single-{case}", tmp / f"ddp-{case}"
    assert _losses(b) == pytest.approx(_losses(a), abs=1e-5) and len(_losses(a)) == 2
    for name in ("tiny-step00000001.safetensors", "tiny.safetensors"):  # after step 1 (a checkpoint's), the end
        fa, fb = load_file(a / name), load_file(b / name)
        assert fa.keys() == fb.keys() and any(k.startswith("lora_te_") for k in fa) == (case in ("te", "fsdp"))
        for k in fa:
            torch.testing.assert_close(fb[k], fa[k], rtol=0, atol=1e-5, msg=k)
    assert max(float(v.abs().max()) for k, v in fa.items() if "lora_up" in k) > 1e-4  # the LoRA trained


DIT_CASES = {"cached-te": CASES["cached-te"], "fsdp": CASES["fsdp"]}  # DDP unet-only + cached; FSDP trains CLIP
DIT_RUNS = [(f, c) for f in ("flux1", "sd3") for c in DIT_CASES]


def dit_config(tmp, family, case: str, out: str, accum: int):
    """As ``config``, on the tiny FLUX.1 / SD3 pipeline at 32 pixels (8 T5 tokens)."""
    extra = DIT_CASES[case]
    cfg = sd_pipes.sd_config(tmp, tmp / family, tmp / "img", network={"dim": 4, "alpha": 4, **extra.get("network", {})},
                            data={"resolution": 32, "min_bucket_reso": 16, "max_bucket_reso": 64, "bucket_reso_steps": 4,
                                  **extra.get("data", {}), "cache_dir": str(tmp / f"cache-{out}")},
                            train={"output_dir": str(tmp / out), "batch_size": 1, "grad_accum": accum, "max_steps": 2,
                                   "t5xxl_max_token_length": 8, "save_precision": "fp32", "save_every_n_epochs": None,
                                   "save_every_n_steps": 1, "lr": 1e-3, **extra.get("train", {})})
    return from_dict(cfg)


class Units(Callback):
    """The class names of the FSDP2 units and the local share of the first transformer block's frozen weights."""

    def on_train_begin(self, state):
        from torch.distributed.fsdp import FSDPModule

        blocks = state.model.transformer.transformer_blocks[0]
        self.names = sorted({type(m).__name__ for m in state.model.modules() if isinstance(m, FSDPModule)})
        local = sum(p.to_local().numel() for p in blocks.parameters() if not p.requires_grad)
        self.share = local / sum(p.numel() for p in blocks.parameters() if not p.requires_grad)


def _dit_worker(rank, tmp):
    units = {}
    for family, case in DIT_RUNS:
        cbs = [Units()] if case == "fsdp" else []
        run(dit_config(tmp, family, case, f"ddp-{family}-{case}", accum=1), cbs, quiet=True)
        if cbs:
            units[family] = (cbs[0].names, cbs[0].share)
    return units


@pytest.fixture(scope="module")
def dit_ddp(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dit-ddp")
    for family in ("flux1", "sd3"):
        save_dit_pipeline(tmp / family, family)
    sd_pipes.save_dataset(tmp / "img", size=(32, 32))
    return tmp, run_ranks(_dit_worker, 2, (tmp,), timeout=300, log_dir=tmp)


@pytest.mark.parametrize(("family", "case"), DIT_RUNS)
def test_dit_two_ranks_equal_one_process(dit_ddp, family, case):
    tmp, units = dit_ddp
    run(dit_config(tmp, family, case, f"single-{family}-{case}", accum=2), quiet=True)
    a, b = tmp / f"single-{family}-{case}", tmp / f"ddp-{family}-{case}"
    assert _losses(b) == pytest.approx(_losses(a), abs=1e-5) and len(_losses(a)) == 2
    for name in ("tiny-step00000001.safetensors", "tiny.safetensors"):
        fa, fb = load_file(a / name), load_file(b / name)
        assert fa.keys() == fb.keys() and any(k.startswith("lora_te1_") for k in fa) == (case != "cached-te")
        for k in fa:
            torch.testing.assert_close(fb[k], fa[k], rtol=0, atol=1e-5, msg=k)
    assert max(float(v.abs().max()) for k, v in fa.items() if "lora_up" in k and "unet" in k) > 1e-4
    if case == "fsdp":  # every rank: the transformer's and the encoders' blocks are units, each holds half
        blocks = {"flux1": ["FSDPFluxSingleTransformerBlock", "FSDPFluxTransformerBlock", "FSDPT5Block"],
                  "sd3": ["FSDPJointTransformerBlock", "FSDPT5Block"]}[family]
        for per_rank in units:
            names, share = per_rank[family]
            clip = {"FSDPCLIPEncoderLayer", "FSDPCLIPTextEmbeddings"}  # CLIP's own _no_split_modules
            assert set(names) == {*blocks, *clip, "FSDPDitNetwork"} and share == pytest.approx(0.5, abs=0.02)
