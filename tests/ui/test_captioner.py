"""Auto-captioning with a tiny randomly initialised BLIP built from a config (its captions are noise; the
plumbing is what is tested): prefix/suffix, skip-existing, overwrite kept undoable, progress, the CLI, the job."""

import json

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner
from ui_helpers import write_images

from lorakit.cli import app as cli
from lorakit.cli import commands  # noqa: F401  (registers the commands)
from lorakit.ui.captioner import TransformersCaptioner, caption_folder
from lorakit.ui.captions import Captions
from lorakit.ui.workspace import Workspace


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory):
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    root = tmp_path_factory.mktemp("blip")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of", "red", "blue", "ring", "circle"]
    (root / "vocab.txt").write_text("\n".join(words) + "\n")
    tok = BertTokenizer(str(root / "vocab.txt"))
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok)
    text = dict(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=64, bos_token_id=tok.cls_token_id, sep_token_id=tok.sep_token_id,
                pad_token_id=tok.pad_token_id)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=8)
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=vision, projection_dim=16))
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    return root / "model"


def test_caption_folder_prefix_suffix_skip_and_undoable_overwrite(tmp_path, blip_dir):
    ws = Workspace(tmp_path / "ws")
    folder = ws.datasets / "d" / "img" / "1_x"
    images = write_images(folder, 5, captions=False)
    images[0].with_suffix(".txt").write_text("kept by hand\n")
    captioner = TransformersCaptioner(blip_dir, max_new_tokens=6)
    expected = captioner.caption([Image.open(images[1]).convert("RGB")])[0]
    progress = tmp_path / "progress.json"
    counts = caption_folder(ws.datasets / "d", captioner, prefix="sks", suffix="photo", progress=progress)
    assert counts["done"] == counts["written"] == 4 and counts["skipped"] == 1
    assert images[0].with_suffix(".txt").read_text() == "kept by hand\n"
    assert images[1].with_suffix(".txt").read_text().strip() == " ".join(x for x in ("sks", expected, "photo") if x)
    assert json.loads(progress.read_text())["state"] == "done"
    store = Captions(ws)
    counts = caption_folder(ws.datasets / "d", captioner, overwrite=True, store=store)
    assert counts["done"] == 5 and images[0].with_suffix(".txt").read_text().strip() != "kept by hand"
    batch = store.batches()[-1]
    assert batch["what"] == "d: auto-caption" and len(batch["files"]) == 5
    assert store.undo_batch(batch["id"]) >= 1
    assert images[0].with_suffix(".txt").read_text() == "kept by hand\n"  # the overwritten caption came back


def test_cli_caption_and_bad_model(tmp_path, blip_dir):
    folder = tmp_path / "data"
    write_images(folder / "1_x", 2, captions=False)
    out = CliRunner().invoke(cli, ["caption", str(folder), "--model", str(blip_dir), "--prefix", "sks",
                                   "--max-new-tokens", "4", "--progress", str(tmp_path / "p.json")])
    assert out.exit_code == 0, out.output
    assert "captioned 2 images" in out.output and all((folder / "1_x" / f"{i:04d}.txt").read_text().startswith("sks")
                                                       for i in range(2))
    bad = CliRunner().invoke(cli, ["caption", str(folder), "--model", str(tmp_path)])
    assert bad.exit_code == 1 and "no config.json" in bad.output
    assert CliRunner().invoke(cli, ["caption", str(tmp_path / "none"), "--model", str(blip_dir)]).exit_code == 1


def test_caption_job_is_the_cli_command(client, ws_root, blip_dir):
    import shutil

    shutil.copytree(blip_dir, ws_root / "models" / "blip")
    r = client.post("/api/datasets/d1/caption-job", json={"model": "models/blip", "prefix": "sks", "overwrite": True})
    job = client.get(f"/api/jobs/{r.json()['job']}").json()
    assert job["kind"] == "caption" and job["state"] == "queued" and job["queue"] == "tools"
    argv = job["argv"]
    assert argv[1:4] == ["-m", "lorakit", "caption"] and argv[4] == "datasets/d1"
    assert argv[argv.index("--model") + 1] == "models/blip" and "--overwrite" in argv and "--workspace" in argv
    assert client.post("/api/datasets/d1/caption-job", json={"model": "../../x"}).status_code == 400
    assert client.post("/api/datasets/d1/caption-job", json={"model": "models/none"}).status_code == 404
