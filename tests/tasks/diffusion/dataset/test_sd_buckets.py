"""Buckets equal kohya's algorithm (re-derived here from the formulas in sd-training.md, written apart)."""

import math
import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from lorakit.tasks.diffusion.dataset.buckets import (
    Bucketer,
    bucket_problems,
    crop_ltrb,
    make_bucket_resolutions,
)
from lorakit.tasks.diffusion.dataset.images import load_pixels, resize, size_conditioning
from lorakit.tasks.diffusion.dataset.layout import SubsetSpec
from lorakit.tasks.diffusion.dataset.scan import ImageItem

SIZES = [(512, 512), (1024, 768), (768, 1024), (300, 700), (700, 300), (2000, 500), (640, 480), (1920, 1080),
         (333, 777), (1000, 1000), (256, 1024), (512, 768), (4000, 3000), (100, 90), (577, 1111)]
SETTINGS = [((512, 512), 256, 1024, 64), ((768, 768), 256, 1024, 64), ((1024, 1024), 512, 2048, 32),
            ((768, 512), 320, 960, 64)]


def expected_buckets(res, lo, hi, d):
    area = res[0] * res[1]
    out = {(math.isqrt(area) // d * d,) * 2}
    w = lo
    while w <= hi:
        h = min(hi, (area // w) // d * d)
        if h >= lo:
            out |= {(w, h), (h, w)}
        w += d
    return sorted(out)


def expected_upscale(size, buckets):
    w, h = size
    if size in buckets:
        b = size
    else:  # nearest aspect ratio, first in sorted order on a tie
        b = min(enumerate(buckets), key=lambda ib: (abs(ib[1][0] / ib[1][1] - w / h), ib[0]))[1]
    s = b[1] / h if w / h > b[0] / b[1] else b[0] / w
    return b, (int(w * s + 0.5), int(h * s + 0.5))


def expected_no_upscale(size, area, d):
    w, h = size
    if w * h > area:
        ar = w / h
        rw = math.sqrt(area * ar)
        rh = area / rw

        def rnd(x):
            return int(x + 0.5) // d * d

        bw, bh = rnd(rw), rnd(rh)
        err_w = abs(bw / rnd(bw / ar) - ar)
        err_h = abs(rnd(bh * ar) / bh - ar)
        resized = (bw, int(bw / ar + 0.5)) if err_w < err_h else (int(bh * ar + 0.5), bh)
    else:
        resized = size
    return (resized[0] // d * d, resized[1] // d * d), resized


def test_512_list_is_the_documented_one():
    half = [(256, 832), (256, 896), (256, 960), (256, 1024), (320, 704), (320, 768), (384, 640), (448, 576)]
    assert make_bucket_resolutions((512, 512)) == sorted(half + [(h, w) for w, h in half] + [(512, 512)])


@pytest.mark.parametrize("res,lo,hi,d", SETTINGS)
def test_bucket_list_and_assignment_upscale(res, lo, hi, d):
    buckets = expected_buckets(res, lo, hi, d)
    assert make_bucket_resolutions(res, lo, hi, d) == buckets
    b = Bucketer(res, min_size=lo, max_size=hi, steps=d)
    for size in SIZES:
        bucket, resized, err = b.select(*size)
        assert (bucket, resized) == expected_upscale(size, buckets), size
        assert resized[0] >= bucket[0] and resized[1] >= bucket[1]  # covers the bucket, then crops
        assert err == pytest.approx(bucket[0] / bucket[1] - size[0] / size[1])


@pytest.mark.parametrize("res,lo,hi,d", SETTINGS)
def test_assignment_no_upscale(res, lo, hi, d):
    b = Bucketer(res, min_size=lo, max_size=hi, steps=d, no_upscale=True)
    for size in SIZES:
        bucket, resized, _ = b.select(*size)
        assert (bucket, resized) == expected_no_upscale(size, res[0] * res[1], d), size
        assert bucket[0] <= resized[0] and bucket[1] <= resized[1]  # a crop, never padding
        assert resized[0] <= max(size[0], d * math.ceil(size[0] / d))  # never enlarged (beyond step rounding)


side = st.integers(1, 3000)


@given(res=st.tuples(side, side), steps=st.integers(1, 130), lo=st.integers(1, 1200), hi=st.integers(1, 2200),
       enable=st.booleans(), no_upscale=st.booleans(), sizes=st.lists(st.tuples(st.integers(1, 5000),
                                                                                st.integers(1, 5000)), min_size=1, max_size=5))
@settings(max_examples=400, deadline=None, derandomize=True)
def test_every_setting_buckets_every_image_or_says_why_in_one_line(res, steps, lo, hi, enable, no_upscale, sizes):
    lo, hi = lo - lo % steps, hi + (-hi) % steps  # kohya's rounding, as the dataset specs hold them
    problems = bucket_problems(res, enable_bucket=enable, min_size=lo, max_size=hi, steps=steps)
    if problems:
        assert all(p and "\n" not in p for p in problems)
        return
    b = Bucketer(res, enable_bucket=enable, min_size=lo, max_size=hi, steps=steps, no_upscale=no_upscale)
    for w, h in sizes:
        bucket, resized, _ = b.select(w, h)
        if enable and no_upscale:  # its size (shrunk to the area) rounded down: a crop, or no bucket (a problem)
            assert bucket[0] <= resized[0] and bucket[1] <= resized[1]
            assert bucket[0] % steps == 0 and bucket[1] % steps == 0
            assert resized == (w, h) or resized[0] * resized[1] <= 2 * res[0] * res[1] + 2 * steps * max(resized)
        else:  # any image, however small, covers a predefined bucket (kohya upscales it)
            assert bucket in b.predefined and min(bucket) >= 1
            assert resized[0] >= bucket[0] and resized[1] >= bucket[1]
            assert not enable or (bucket[0] % steps == 0 and bucket[1] % steps == 0 and min(bucket) >= steps)


def test_issue_settings_give_problems_not_a_division_by_zero():
    # resolution 32 with kohya's default step 64: no bucket fits; min 16 rounds down to 0
    for lo in (256, 16):
        lo_r = lo - lo % 64
        found = bucket_problems((32, 32), enable_bucket=True, min_size=lo_r, max_size=1024, steps=64)
        assert any("smaller than one bucket step (bucket_reso_steps=64)" in p for p in found), found
    assert any("rounds down to 0" in p for p in bucket_problems((512, 512), enable_bucket=True, min_size=0,
                                                                  max_size=1024, steps=64))
    assert bucket_problems((32, 32), enable_bucket=False, min_size=0, max_size=1024, steps=64) == []


def test_small_images_are_upscaled_into_a_bucket_as_kohya_does(tmp_path):
    b = Bucketer((512, 512), min_size=256, max_size=1024, steps=64)
    bucket, resized, _ = b.select(100, 120)  # below min_bucket_reso: kohya's select_bucket enlarges it
    assert bucket == expected_upscale((100, 120), make_bucket_resolutions((512, 512)))[0] and resized[0] > 100
    gradient_image(tmp_path / "small.png", 100, 120)
    px = load_pixels(item_for(tmp_path / "small.png", (100, 120), b))  # the training path takes it
    assert px.shape == (3, bucket[1], bucket[0]) and px.isfinite().all()
    nb = Bucketer((512, 512), min_size=256, max_size=1024, steps=64, no_upscale=True)
    assert nb.select(100, 120)[:2] == ((64, 64), (100, 120))  # min/max do not apply: its own size, rounded down
    assert nb.select(40, 120)[0] == (0, 64)  # a side below the step: no bucket (the scan reports it)


def test_bucketing_off_is_one_bucket_cover_and_crop():
    b = Bucketer((512, 512), enable_bucket=False)
    for size in SIZES:
        bucket, resized, _ = b.select(*size)
        assert bucket == (512, 512) and min(resized[0] - 512, resized[1] - 512) == 0


def gradient_image(path, w, h):
    xs = torch.arange(w).float().div(w - 1).mul(255).round().to(torch.uint8)
    ys = torch.arange(h).float().div(h - 1).mul(255).round().to(torch.uint8)
    arr = torch.stack([xs.expand(h, w), ys[:, None].expand(h, w), torch.zeros(h, w, dtype=torch.uint8)], -1)
    Image.fromarray(arr.numpy()).save(path)


def item_for(path, size, bucketer, **options):
    opts = {"resize_interpolation": "nearest", "flip_aug": False, "random_crop": False, "color_aug": False} | options
    item = ImageItem(path, size, "", SubsetSpec(str(path.parent), options=opts), 1, False)
    item.bucket, item.resized, _ = bucketer.select(*size)
    return item


def test_pixels_are_the_centre_crop_and_flip_mirrors(tmp_path):
    path = tmp_path / "g.png"
    gradient_image(path, 200, 100)  # wide: 512-area buckets pick 704x320 (aspect 2.2 ~ 2.0), crop the width
    item = item_for(path, (200, 100), Bucketer((256, 256), min_size=64, max_size=512, steps=64))
    bw, bh = item.bucket
    px = load_pixels(item)
    assert px.shape == (3, bh, bw) and px.min() >= -1 and px.max() <= 1
    reference = Image.open(path).resize(item.resized, Image.Resampling.NEAREST)
    left, top = (item.resized[0] - bw) // 2, (item.resized[1] - bh) // 2
    ref = torch.from_numpy(np.array(reference.crop((left, top, left + bw, top + bh)))).float()
    assert torch.equal(px.permute(1, 2, 0), ref / 127.5 - 1)
    assert torch.equal(load_pixels(item, flip=True), px.flip(-1))


def test_sdxl_size_conditioning_follows_kohya(tmp_path):
    bucketer = Bucketer((1024, 1024), min_size=512, max_size=2048, steps=32)
    for size in [(1920, 1080), (800, 1200), (1024, 1024)]:
        item = item_for(tmp_path / "x.png", size, bucketer)
        (bw, bh) = item.bucket
        ar = size[0] / size[1]
        fit = (bh * ar, bh) if bw / bh > ar else (bw, bw / ar)  # image fitted inside the bucket
        left, top = (bw - fit[0]) // 2, (bh - fit[1]) // 2
        assert size_conditioning(item, False) == ((size[1], size[0]), (int(top), int(left)), (bh, bw))
        assert size_conditioning(item, True)[1] == (int(top), int(bw - (left + fit[0])))
        assert crop_ltrb(item.bucket, size)[:2] == (left, top)


def test_default_filter_is_area_when_shrinking_else_lanczos():
    img = Image.fromarray(torch.randint(0, 256, (40, 60, 3), generator=torch.Generator().manual_seed(0),
                                        dtype=torch.uint8).numpy())
    for size, name in (((30, 20), Image.Resampling.BOX), ((90, 60), Image.Resampling.LANCZOS),
                       ((70, 30), Image.Resampling.LANCZOS)):  # one side grows: lanczos, as kohya
        assert np.array_equal(np.asarray(resize(img, size, None)), np.asarray(img.resize(size, name)))
    assert np.array_equal(np.asarray(resize(img, (30, 20), "bicubic")),
                          np.asarray(img.resize((30, 20), Image.Resampling.BICUBIC)))


def test_random_crop_and_color_aug_draw_from_the_sample_rng(tmp_path):
    path = tmp_path / "g.png"
    gradient_image(path, 100, 50)
    bucketer = Bucketer((64, 64), min_size=32, max_size=128, steps=32)
    centre = load_pixels(item_for(path, (100, 50), bucketer))
    crop = item_for(path, (100, 50), bucketer, random_crop=True)
    crops = [load_pixels(crop, rng=random.Random(i)) for i in range(20)]
    assert len({c[0, 0, 0].item() for c in crops}) > 5  # the left edge moves (red encodes x)
    assert all(torch.equal(load_pixels(crop, rng=random.Random(i)), crops[i]) for i in range(3))
    aug = item_for(path, (100, 50), bucketer, color_aug=True)
    draws = [load_pixels(aug, rng=random.Random(i)) for i in range(150)]
    changed = [not torch.equal(px, centre) for px in draws]
    assert sum(changed) / len(changed) == pytest.approx(0.33, abs=0.1)  # kohya applies it a third of the time
    assert all(px.shape == centre.shape and (px - centre).abs().mean() < 0.2 for px in draws)  # mild changes
