"""Folder layout, reg balancing, step counts, kohya TOML, problems, determinism and sharding."""

import json
import math
from collections import Counter

import pytest
import torch
from sd_data import folder, image, snapshot

from lorakit.tasks.diffusion.dataset import DatasetArgs, build_dataset, problems
from lorakit.tasks.diffusion.dataset.buckets import Bucketer


def expected_reg_repeats(n_train, reg):
    """kohya's balancing, written as a closed form: reg images in order, each with its repeats, until
    n_train is reached; then +1 repeat per image in turn (kohya's loop, unrolled)."""
    used, n = [], 0
    for repeats in reg:
        if n >= n_train:
            break
        used.append(repeats)
        n += repeats
    i = 0
    while n < n_train:
        used[i % len(used)] += 1
        n += 1
        i += 1
    return used


@pytest.fixture
def dogs(tmp_path):
    root = tmp_path / "img"
    folder(root, "3_sks dog", [(128, 128), (160, 120), (120, 160), (75, 175), (128, 128)],
           ["sks dog, red", None, "sks dog, grass", "sks dog", None])
    folder(root, "2_sks cat", [(128, 128), (175, 88)], ["cat", "cat, sofa"])
    (root / "3_sks dog" / "img02.txt").write_text("\ufeffsks dog, grass\nsecond line ignored", encoding="utf-8")
    return root


SMALL = {"resolution": 128, "enable_bucket": True, "min_bucket_reso": 64, "max_bucket_reso": 256}


def test_folder_layout_repeats_captions_and_steps(dogs):
    b = build_dataset(DatasetArgs(train_data_dir=str(dogs), **SMALL), batch_size=2, seed=0, scan_only=True)
    assert b.problems == []
    (ds,) = b.datasets
    caps = {(i.path.parent.name, i.path.name): i.caption for i in ds.items}
    assert caps[("3_sks dog", "img01.png")] == "sks dog" and caps[("3_sks dog", "img00.png")] == "sks dog, red"
    assert caps[("3_sks dog", "img02.png")] == "sks dog, grass"  # written with a BOM below
    assert {i.num_repeats for i in ds.items if i.path.parent.name == "2_sks cat"} == {2}
    bucketer = Bucketer((128, 128), min_size=64, max_size=256)
    per_bucket = Counter()
    for i in ds.items:
        per_bucket[bucketer.select(*i.size)[0]] += i.num_repeats
    assert len(b) == sum(math.ceil(n / 2) for n in per_bucket.values())
    assert {r["resolution"]: r["samples"] for r in b.table()} == {f"{w}x{h}": n for (w, h), n in per_bucket.items()}
    assert f"= {len(b)} batches" in b.explain_steps() and "5 images x 3 repeats = 15" in b.explain_steps()
    meta = b.metadata()
    assert meta["ss_num_train_images"] == str(5 * 3 + 2 * 2) and meta["ss_num_batches_per_epoch"] == str(len(b))
    assert '"3_sks dog": {"n_repeats": 3, "img_count": 5}' in meta["ss_dataset_dirs"]
    assert '"sks dog": 5' in meta["ss_tag_frequency"]


@pytest.mark.parametrize("train,reg", [((2, 3), [1, 1, 1]), ((1, 10), [2, 1]), ((4, 2), [3, 3, 3, 3, 3])])
def test_reg_balancing_matches_kohya(tmp_path, train, reg):
    n_img, repeats = train
    folder(tmp_path / "img", f"{repeats}_x", [(128, 128)] * n_img)
    for j, r in enumerate(reg):
        image(tmp_path / "reg" / f"{r}_y" / f"r{j}.png", 128, 128)
    b = build_dataset(DatasetArgs(train_data_dir=str(tmp_path / "img"), reg_data_dir=str(tmp_path / "reg"),
                                  prior_loss_weight=0.5, **SMALL), batch_size=3, seed=0, scan_only=True)
    (ds,) = b.datasets
    # folders are read in name order; rebuild kohya's reg order from the same listing
    reg_order = [int(p.parent.name.split("_")[0]) for p in sorted((tmp_path / "reg").glob("*/*.png"))]
    expected = expected_reg_repeats(n_img * repeats, reg_order)
    assert [i.num_repeats for i in ds.items if i.is_reg] == expected
    total = n_img * repeats + sum(expected)
    assert len(b) == math.ceil(total / 3)  # one bucket
    weights = torch.cat([x["loss_weight"] for x in b.epoch(0)])
    assert Counter(weights.tolist()) == {1.0: n_img * repeats, 0.5: sum(expected)}


def test_kohya_toml_inheritance(tmp_path):
    a = folder(tmp_path, "a", [(512, 512), (512, 512)], ["from caption file", None], ext=".caption")
    b = folder(tmp_path, "b", [(768, 512)], ["tagged"], ext=".txt")
    toml = tmp_path / "ds.toml"
    toml.write_text(f"""
[general]
shuffle_caption = true
keep_tokens = 1
caption_prefix = "general"

[[datasets]]
resolution = [768, 512]
batch_size = 2
enable_bucket = false
class_tokens = "sks"

  [[datasets.subsets]]
  image_dir = '{a}'
  num_repeats = 4

  [[datasets.subsets]]
  image_dir = '{b}'
  caption_extension = ".txt"
  shuffle_caption = false
  caption_prefix = "sub"
""")
    bs = build_dataset(DatasetArgs(dataset_config=str(toml), caption_prefix="cli", keep_tokens=3), batch_size=7,
                       seed=0, scan_only=True)
    assert bs.problems == []
    (ds,) = bs.datasets
    sa, sb = ds.spec.subsets
    assert ds.spec.batch_size == 2 and ds.spec.resolution == (768, 512) and not ds.spec.enable_bucket
    assert (sa.caption_extension, sa.shuffle_caption, sa.keep_tokens, sa.caption_prefix) == (".caption", True, 1, "general")
    assert (sb.caption_extension, sb.shuffle_caption, sb.caption_prefix, sb.num_repeats) == (".txt", False, "sub", 1)
    assert sorted(i.caption for i in ds.items) == ["from caption file", "sks", "tagged"]
    assert {i.bucket for i in ds.items} == {(768, 512)}
    assert len(bs) == math.ceil((2 * 4 + 1) / 2)
    meta = json.loads(bs.metadata()["ss_datasets"])
    assert meta[0]["batch_size_per_device"] == 2 and [s["num_repeats"] for s in meta[0]["subsets"]] == [4, 1]
    assert json.loads(bs.metadata()["ss_dataset_dirs"]) == {"a": {"n_repeats": 4, "img_count": 2},
                                                           "b": {"n_repeats": 1, "img_count": 1}}


def test_every_problem_is_listed_with_its_file(tmp_path):
    root = tmp_path / "img"
    good = folder(root, "2_ok", [(512, 512), (512, 512)], ["fine", "   \n"])
    (good / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    image(good / "tiny.png", 100, 120)
    (good / "._img00.png").write_bytes(b"macOS fork")  # hidden: skipped, as kohya's glob skips it
    (root / "no_prefix").mkdir()
    toml = tmp_path / "bad.toml"
    toml.write_text("[general]\nshufle_caption = true\n[[datasets]]\nresolution = 'big'\n"
                    "[[datasets.subsets]]\nimage_dir = 'nowhere'\nface_crop_aug_range = [2.0, 4.0]\n")
    before = snapshot(tmp_path)
    scanned = build_dataset(DatasetArgs(train_data_dir=str(root), reg_data_dir=str(tmp_path / "missing")),
                            batch_size=1, seed=0)
    out = scanned.problems
    text = "\n".join(out)
    for needle in ("broken.png: unreadable", "img01.txt: empty caption", "no_prefix: skipped",
                   "reg_data_dir='" + str(tmp_path / "missing")):
        assert needle in text, (needle, out)
    assert "._img00" not in text and "tiny.png" not in text and len(out) == 4
    # smaller than the 512 bucket: upscaled as kohya does, and said
    assert any("1 image(s) are smaller than their bucket" in n and "tiny.png (100x120 -> 512x512)" in n
               for n in scanned.notes), scanned.notes
    bad = build_dataset(DatasetArgs(dataset_config=str(toml)), batch_size=1, seed=0).problems
    text = "\n".join(bad)
    for needle in ("unknown key 'shufle_caption'; did you mean 'shuffle_caption'", "resolution='big'",
                   "face_crop_aug_range=[2.0, 4.0] is not supported", "image_dir='nowhere' is not a folder"):
        assert needle in text, (needle, bad)
    assert "not valid TOML" in build_dataset(DatasetArgs(dataset_config=str(good / "img00.txt")), batch_size=1,
                                             seed=0).problems[0]
    assert snapshot(tmp_path) == before  # nothing in the dataset folders was written or deleted


def test_args_problems_collect_everything():
    out = problems(DatasetArgs(resolution="abc", keep_tokens=-1, caption_dropout_rate=2, caption_extension="txt"))
    assert len(out) == 4 and all(o.startswith("data.") for o in out)
    assert "data.train_data_dir: missing" in problems(DatasetArgs())[0]
    assert problems(DatasetArgs(train_data_dir="x", min_bucket_reso=1024, max_bucket_reso=512))
    steps = build_dataset(DatasetArgs(train_data_dir="x", enable_bucket=True, bucket_reso_steps=32), batch_size=1,
                          seed=0, bucket_step=64).problems
    assert any("not a multiple of 64" in p for p in steps)


def test_epochs_are_deterministic_resumable_and_sharded(dogs):
    args = DatasetArgs(train_data_dir=str(dogs), shuffle_caption=True, flip_aug=True, cache_latents=False,
                       **SMALL)
    b = build_dataset(args, batch_size=2, seed=5)
    full = list(b.epoch(1))
    again = list(build_dataset(args, batch_size=2, seed=5).epoch(1, 3))
    assert len(full) == len(b) and len(again) == len(b) - 3
    for x, y in zip(full[3:], again, strict=True):
        assert x["captions"] == y["captions"] and torch.equal(x["pixels"], y["pixels"])
    other = list(b.epoch(2))
    assert [x["captions"] for x in other] != [x["captions"] for x in full]
    ranks = [build_dataset(args, batch_size=2, seed=5, world=2, rank=r) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == math.ceil(len(b) / 2)
    shards = [list(r.epoch(1)) for r in ranks]
    merged = [x for pair in zip(*shards, strict=True) for x in pair][:len(full)]
    assert all(torch.equal(x["pixels"], y["pixels"]) for x, y in zip(merged, full, strict=True))
    batch = full[0]
    assert batch["pixels"].shape[0] == batch["original_size"].shape[0] == len(batch["captions"])
    assert batch["pixels"].shape[2:] == tuple(batch["target_size"][0].tolist())
