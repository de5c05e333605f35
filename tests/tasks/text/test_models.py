"""Loading a text model for training: with a 4-bit base, nothing keeps the memory-mapped checkpoint alive (its
pages, all read by quantisation, would stay resident: the whole fp32 model in RSS next to the packed one)."""

import gc

import tiny_hf as tiny

from lorakit.tasks.text.models import load_model, select_trainable
from lorakit.train.config import from_dict


def _mapped(path) -> bool:
    with open("/proc/self/maps") as f:
        return any(str(path) in line for line in f)


def test_qlora_model_does_not_keep_the_checkpoint_mapped(tmp_path):
    model_dir = tiny.llama_dir(tmp_path / "llama")
    (tmp_path / "train.txt").write_text("\n\n".join(tiny.CORPUS))
    cfg = {"model": {"path": str(model_dir)}, "data": {"train": str(tmp_path / "train.txt")},
           "lora": {"r": 4, "target_modules": "all-linear"}, "train": {"output_dir": str(tmp_path / "run")}}
    dense = select_trainable(load_model(from_dict(cfg).model), from_dict(cfg))
    assert _mapped(model_dir / "model.safetensors")  # what the loader does: weights stay memory-mapped
    del dense
    gc.collect()
    cfg["lora"]["quantize"] = "nf4"
    run_cfg = from_dict(cfg)
    model = select_trainable(load_model(run_cfg.model), run_cfg)
    assert not _mapped(model_dir / "model.safetensors")
    assert model(input_ids=tiny.tokenizer()(["the cat sat"], return_tensors="pt").input_ids).logits.isfinite().all()
