"""Latent and text-encoder caches: reused across runs, invalidated by content, never stale, never in the data."""

import pytest
import torch
from sd_data import CountingEncoder, folder, image, snapshot

from lorakit.tasks.diffusion.dataset import DatasetArgs, build_dataset
from lorakit.tasks.diffusion.dataset.cache import LatentCache
from lorakit.tasks.diffusion.dataset.images import load_pixels

SMALL = {"resolution": 128, "enable_bucket": True, "min_bucket_reso": 64, "max_bucket_reso": 256}


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "img"
    folder(root, "2_thing", [(128, 128), (160, 120), (128, 128)], ["a, b", "c", None])
    return root


def build(root, cache_dir, enc, vae_key="vae-1", **kw):
    args = DatasetArgs(train_data_dir=str(root), cache_latents=True, cache_latents_to_disk=True,
                       cache_dir=str(cache_dir), **(SMALL | kw))
    return build_dataset(args, batch_size=2, seed=0, encode_latents=enc, vae_key=vae_key)


def test_latents_are_the_encoder_output_and_reused_by_later_runs(data, tmp_path):
    before = snapshot(data)
    enc = CountingEncoder()
    b = build(data, tmp_path / "cache", enc)
    assert b.problems == [] and enc.images == 3 and b.latent_caches[0].encoded == 3
    ds = b.datasets[0]
    for batch in b.epoch(0):
        assert "pixels" not in batch and batch["latents"].shape[1] == 4
    for index, item in enumerate(ds.items):  # each entry is what the encoder gives for the centre crop
        assert torch.allclose(b.latent_caches[0].get(index, False), enc(load_pixels(item)[None])[0])
    enc2 = CountingEncoder()
    again = build(data, tmp_path / "cache", enc2)
    assert enc2.calls == [] and again.latent_caches[0].encoded == 0
    assert all(torch.equal(x["latents"], y["latents"]) for x, y in zip(b.epoch(1), again.epoch(1), strict=True))
    assert snapshot(data) == before  # the cache lives in its own directory
    assert list((tmp_path / "cache" / "latents").rglob("*.safetensors"))


def test_changed_image_vae_or_bucket_is_re_encoded(data, tmp_path):
    cache = tmp_path / "cache"
    build(data, cache, CountingEncoder())
    image(data / "2_thing" / "img01.png", 160, 120, (1, 2, 3))  # same size, new pixels
    enc = CountingEncoder()
    b = build(data, cache, enc)
    assert enc.images == 1
    item = next(i for i in b.datasets[0].items if i.path.name == "img01.png")
    index = b.datasets[0].items.index(item)
    assert torch.allclose(b.latent_caches[0].get(index, False), enc(load_pixels(item)[None])[0])
    enc = CountingEncoder()
    build(data, cache, enc, vae_key="vae-2")
    assert enc.images == 3  # another VAE: nothing reused
    enc = CountingEncoder()
    build(data, cache, enc, resolution=96, min_bucket_reso=64)
    assert enc.images == 3  # other buckets: other crops


def test_flip_aug_caches_both_and_batches_pick_the_mirror(data, tmp_path):
    enc = CountingEncoder()
    b = build(data, tmp_path / "c", enc, flip_aug=True, vae_batch_size=2)
    assert enc.images == 6 and max(enc.calls) == 2  # each image and its mirror, at most vae_batch_size per call
    ds, cache = b.datasets[0], b.latent_caches[0]
    for index, item in enumerate(ds.items):
        assert torch.allclose(cache.get(index, True), enc(load_pixels(item, flip=True)[None])[0])
    seen = set()
    for batch in b.epoch(0):
        for lat in batch["latents"]:
            matches = [(i, f) for i in range(len(ds.items)) for f in (False, True) if torch.equal(lat, cache.get(i, f))]
            assert matches
            seen |= {f for _, f in matches}
    assert seen == {False, True}


def test_processes_sharing_a_disk_cache_split_the_encoding(data, tmp_path):
    b = build_dataset(DatasetArgs(train_data_dir=str(data), **SMALL), batch_size=1, seed=0, scan_only=True)
    items = b.datasets[0].items
    counts = []
    for shard in ((0, 2), (1, 2), (0, 1)):
        enc = CountingEncoder()
        LatentCache("v", tmp_path / "cache").fill(items, enc, shard=shard)
        counts.append(enc.images)
    assert counts == [2, 1, 0]  # images 0 and 2, then image 1, then every entry is on disk


def test_corrupt_entry_is_re_encoded_not_used(data, tmp_path):
    cache = tmp_path / "cache"
    build(data, cache, CountingEncoder())
    victim = sorted((cache / "latents").rglob("*.safetensors"))[0]
    victim.write_bytes(b"garbage")
    enc = CountingEncoder()
    build(data, cache, enc)
    assert enc.images == 1


def test_ram_cache_without_disk_writes_nothing(data, tmp_path):
    enc = CountingEncoder()
    args = DatasetArgs(train_data_dir=str(data), cache_dir=str(tmp_path / "cache"), **SMALL)
    b = build_dataset(args, batch_size=2, seed=0, encode_latents=enc, vae_key="v")
    assert enc.images == 3 and not (tmp_path / "cache").exists()
    assert next(b.epoch(0))["latents"].shape[1] == 4


class TextEncoder:
    def __init__(self):
        self.calls = []

    def __call__(self, captions):
        self.calls.append(list(captions))
        lengths = torch.tensor([float(len(c)) for c in captions])
        return {"hidden": lengths[:, None, None].expand(-1, 3, 2).clone(), "pooled": lengths[:, None] * 2}


def test_text_encoder_outputs_cached_per_caption(data, tmp_path):
    te = TextEncoder()
    args = DatasetArgs(train_data_dir=str(data), cache_text_encoder_outputs=True,
                       cache_text_encoder_outputs_to_disk=True, caption_prefix="photo of", cache_dir=str(tmp_path / "c"),
                       **SMALL)
    b = build_dataset(args, batch_size=2, seed=0, encode_text=te, text_key="te-1")
    assert sorted(c for call in te.calls for c in call) == ["photo of a, b", "photo of c", "photo of thing"]
    for batch in b.epoch(0):
        assert "captions" not in batch and batch["te_hidden"].shape[1:] == (3, 2)
        assert torch.equal(batch["te_pooled"][:, 0], batch["te_hidden"][:, 0, 0] * 2)
    te2 = TextEncoder()
    build_dataset(args, batch_size=2, seed=0, encode_text=te2, text_key="te-1")
    assert te2.calls == []
    build_dataset(args, batch_size=2, seed=0, encode_text=te2, text_key="te-2")
    assert len(te2.calls) == 1
    dynamic = DatasetArgs(train_data_dir=str(data), cache_text_encoder_outputs=True, shuffle_caption=True, **SMALL)
    assert any("never change" in p for p in build_dataset(dynamic, batch_size=1, seed=0).problems)



def test_ranks_encode_their_share_before_the_barrier(data, tmp_path, monkeypatch):
    events = []
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "barrier", lambda: events.append("barrier"))
    args = DatasetArgs(train_data_dir=str(data), cache_latents_to_disk=True, cache_dir=str(tmp_path / "c"), **SMALL)
    for rank in (1, 0):
        build_dataset(args, batch_size=1, seed=0, world=2, rank=rank, encode_latents=CountingEncoder(events),
                      vae_key="v")
    # rank 1 encodes image 1, waits, then (alone here) the rest; rank 0 then finds every entry on disk
    assert events == [1, "barrier", 1, 1, "barrier"]
