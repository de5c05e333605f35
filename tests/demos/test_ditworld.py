"""Learning, not just parity: a LoRA trained with lorakit's FLUX.1 flow-matching path on the shipped tiny
FLUX.1-shaped base (assets/ditworld-flux, pretrained on sdworld's shapes, never on rings) learns the
held-out concept "sks ring": sdworld's probe reads far more rings in the triggered samples than the
base draws, while plain prompts keep their shapes."""

from pathlib import Path

import pytest
import torch

from lorakit.demos.ditworld import evaluate
from lorakit.demos.ditworld.pretrain import T5_TOKENS, t5_tokenizer
from lorakit.demos.sdworld.concept import write_concept, write_regularization
from lorakit.demos.sdworld.probe import load_probe
from lorakit.demos.sdworld.world import CONCEPT, TRIGGER, Scene

ROOT = Path(__file__).resolve().parents[2]
BASE, PROBE = ROOT / "assets" / "ditworld-flux", ROOT / "assets" / "sdworld-probe.safetensors"


def test_t5_tokenizer_keeps_world_words_whole_and_reloads(tmp_path):
    from transformers import T5TokenizerFast

    tok = t5_tokenizer()
    caption = Scene(CONCEPT, "red", "blue").caption()
    assert tok.tokenize(caption) == ["▁" + w for w in caption.split()] and TRIGGER in caption
    tok.save_pretrained(tmp_path)
    assert T5TokenizerFast.from_pretrained(tmp_path)(caption).input_ids == tok(caption).input_ids
    assert len(tok(caption).input_ids) <= T5_TOKENS


@pytest.fixture
def one_thread():
    """Hundreds of small ops: on two cores shared with other jobs a second thread mostly waits for the
    first (15 s alone, minutes under load); one thread keeps it near its idle time either way."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_a_flux_lora_learns_the_held_out_concept(tmp_path, one_thread):
    from diffusers import FluxPipeline

    from lorakit.sd import load_lora
    from lorakit.train import run
    from lorakit.train.config import from_dict

    data = tmp_path / "data"
    write_concept(data)  # 16 rings x 10 repeats, five aspect ratios
    write_regularization(data, n=32)  # the base world's shapes (prior preservation)
    cfg = {"task": "diffusion", "model": {"path": str(BASE), "device": "cpu"},
           "data": {"train_data_dir": str(data), "resolution": 32, "enable_bucket": True, "min_bucket_reso": 16,
                    "max_bucket_reso": 64, "bucket_reso_steps": 8, "caption_extension": ".txt", "cache_latents": True,
                    "cache_text_encoder_outputs": True,
                    "cache_dir": str(tmp_path / "cache")},
           "network": {"dim": 16, "alpha": 16, "train_unet_only": True},
           "train": {"output_dir": str(tmp_path / "run"), "output_name": "ring", "epochs": 3, "batch_size": 4,
                     "lr": 1e-3, "t5xxl_max_token_length": T5_TOKENS, "progress": False, "plot": False, "seed": 0,
                     "save_every_n_epochs": None}}
    result = run(from_dict(cfg), quiet=True)
    assert result.summary["family"] == "flux1" and result.summary["steps"] > 100
    pipe = FluxPipeline.from_pretrained(str(BASE), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    probe = load_probe(PROBE)
    before = evaluate.shares(pipe, probe)
    load_lora(pipe, str(tmp_path / "run" / "ring.safetensors"))
    after = evaluate.shares(pipe, probe)
    # measured when written (24 prompts each): rings 38 % -> 79 %, plain prompts' shapes 100 % -> 92 %
    assert before["shape"] >= 0.9, before  # the base draws the world's shapes
    assert after["concept"] >= before["concept"] + 0.25 and after["concept"] >= 0.6, (before, after)
    assert after["shape"] >= 0.75, (before, after)  # and the LoRA keeps them for prompts without the trigger
