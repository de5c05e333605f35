"""Aspect-ratio buckets exactly as kohya's ``BucketManager`` makes and assigns them.

Bucket list (``make_bucket_resolutions``), with A = W*H of the resolution and d = the step::

    {(s, s)} with s = floor(sqrt(A)/d)*d, and for w in min..max step d:
    h = min(max, floor(floor(A/w)/d)*d); (w, h) and (h, w) when h >= min

An image goes to the bucket with the nearest aspect ratio (an exact size match first), is scaled to
cover it and the overflow is cropped: a small image is enlarged, whatever ``min_bucket_reso`` (kohya).
With ``bucket_no_upscale`` it keeps its size (shrunk to area A when larger) and its bucket is that size
rounded down to d: crop, never pad (a side below d gives no bucket).

``bucket_problems`` lists the settings for which this gives no usable bucket list (kohya divides by
zero or loops far too long): every combination either passes it and buckets every image, or gets a
one-line problem.
"""

from __future__ import annotations

import math

MAX_SIDE = 16384
"""Largest resolution side and ``max_bucket_reso`` accepted (SDXL trains at 1024; 16384 is far beyond any
model and keeps the bucket list a few thousand candidates long)."""


def make_bucket_resolutions(resolution: tuple[int, int], min_size: int = 256, max_size: int = 1024,
                            divisible: int = 64) -> list[tuple[int, int]]:
    """kohya's predefined buckets (width, height), sorted."""
    area = resolution[0] * resolution[1]
    side = int(math.sqrt(area) // divisible) * divisible
    resos = {(side, side)}
    for width in range(min_size, max_size + 1, divisible):
        height = min(max_size, int((area // width) // divisible) * divisible)
        if height >= min_size:
            resos.add((width, height))
            resos.add((height, width))
    return sorted(resos)


def bucket_problems(resolution: tuple[int, int], *, enable_bucket: bool, min_size: int, max_size: int,
                    steps: int) -> list[str]:
    """Why these settings give no usable bucket list, one line each (``min_size``/``max_size`` as kohya
    rounds them: down/up to a multiple of ``steps``); empty when every image gets a bucket."""
    w, h = resolution
    e = []
    if max(w, h) > MAX_SIDE:
        e.append(f"resolution {w}x{h}: sides above {MAX_SIDE} pixels are not supported; lower the resolution.")
    if not enable_bucket:  # one bucket of the resolution: min/max/steps do not apply (kohya)
        return e
    if max_size > MAX_SIDE:
        e.append(f"max_bucket_reso={max_size}: above {MAX_SIDE} pixels is not supported; lower it.")
    if math.isqrt(w * h) < steps:
        e.append(f"resolution {w}x{h} is smaller than one bucket step (bucket_reso_steps={steps}), so no bucket "
                 f"fits its area; lower bucket_reso_steps to at most {math.isqrt(w * h)} (the model may need a "
                 "multiple of 8, 32 or 64) or raise the resolution.")
    if min_size < steps:
        e.append(f"min_bucket_reso rounds down to {min_size} with bucket_reso_steps={steps} (kohya rounds it down to "
                 f"a multiple of the step), and a bucket side cannot be {min_size}; set min_bucket_reso to at least "
                 f"{steps}.")
    if min_size > max_size:
        e.append(f"min_bucket_reso={min_size} is larger than max_bucket_reso={max_size} (both rounded to "
                 f"bucket_reso_steps={steps}); lower min_bucket_reso or raise max_bucket_reso.")
    if min(w, h) < min_size:
        e.append(f"resolution {w}x{h} is smaller than min_bucket_reso={min_size}; lower min_bucket_reso or raise the "
                 "resolution.")
    if max(w, h) > max_size:
        e.append(f"resolution {w}x{h} is larger than max_bucket_reso={max_size}; raise max_bucket_reso or lower "
                 "the resolution.")
    return e


def crop_ltrb(bucket: tuple[int, int], image_size: tuple[int, int]) -> tuple[float, float, float, float]:
    """Crop box for SDXL's conditioning (kohya ``get_crop_ltrb``, Stability's preprocessing): the image
    fitted *inside* the bucket, centred. Its left/top are the ``crop_top_left`` the U-Net is told."""
    bucket_ar = bucket[0] / bucket[1]
    image_ar = image_size[0] / image_size[1]
    if bucket_ar > image_ar:
        width, height = bucket[1] * image_ar, bucket[1]
    else:
        width, height = bucket[0], bucket[0] / image_ar
    left = (bucket[0] - width) // 2
    top = (bucket[1] - height) // 2
    return left, top, left + width, top + height


class Bucketer:
    """Assigns image sizes to buckets for one dataset (kohya ``BucketManager.select_bucket``)."""

    def __init__(self, resolution: tuple[int, int], *, enable_bucket: bool = True, min_size: int = 256,
                 max_size: int = 1024, steps: int = 64, no_upscale: bool = False):
        self.steps = steps
        self.max_area = resolution[0] * resolution[1]
        self.no_upscale = enable_bucket and no_upscale
        if not enable_bucket:  # one fixed bucket: scale to cover it, crop the rest
            self.predefined = [tuple(resolution)]
        elif not no_upscale:
            self.predefined = make_bucket_resolutions(resolution, min_size, max_size, steps)
        else:
            self.predefined = []  # made per image
        self.aspects = [w / h for w, h in self.predefined]

    def round_to_steps(self, x: float) -> int:
        x = int(x + 0.5)
        return x - x % self.steps

    def select(self, width: int, height: int) -> tuple[tuple[int, int], tuple[int, int], float]:
        """(bucket (w, h), resized size (w, h) before the crop, aspect-ratio error of the bucket)."""
        aspect = width / height
        if not self.no_upscale:
            reso = (width, height)
            if reso not in self.predefined:
                errors = [abs(a - aspect) for a in self.aspects]
                reso = self.predefined[errors.index(min(errors))]  # first minimum, as numpy's argmin
            scale = reso[1] / height if aspect > reso[0] / reso[1] else reso[0] / width
            resized = (int(width * scale + 0.5), int(height * scale + 0.5))
        else:
            if width * height > self.max_area:
                # shrink to the area, rounding the axis that keeps the aspect ratio best to the step
                rw = math.sqrt(self.max_area * aspect)
                rh = self.max_area / rw
                bw, bh = self.round_to_steps(rw), self.round_to_steps(rh)
                h_of_w, w_of_h = self.round_to_steps(bw / aspect), self.round_to_steps(bh * aspect)
                ar_w = bw / h_of_w if h_of_w else math.inf  # kohya divides by zero here: no bucket (see scan)
                ar_h = w_of_h / bh if bh else math.inf
                if abs(ar_w - aspect) < abs(ar_h - aspect):
                    resized = (bw, int(bw / aspect + 0.5))
                else:
                    resized = (int(bh * aspect + 0.5), bh)
            else:
                resized = (width, height)
            reso = (resized[0] - resized[0] % self.steps, resized[1] - resized[1] % self.steps)
        return reso, resized, reso[0] / reso[1] - aspect if reso[1] else math.inf

    def smallest(self) -> tuple[int, int] | None:
        """The smallest predefined bucket (``None`` with no_upscale: buckets follow the images)."""
        return min(self.predefined, key=lambda r: r[0] * r[1]) if self.predefined else None
