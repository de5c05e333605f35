"""Caption processing: kohya's order and each option, reproducible under a fixed seed."""

import math
import random
from types import SimpleNamespace

import pytest

from lorakit.tasks.diffusion.dataset.args import DatasetArgs
from lorakit.tasks.diffusion.dataset.captions import is_static, process_caption, tag_frequency

CAPTION = "sks, dog, red collar, grass, sunny, park"


def opts(**kw):
    base = {k: getattr(DatasetArgs(), k) for k in ("caption_prefix", "caption_suffix", "caption_separator",
                                                   "secondary_separator", "keep_tokens", "keep_tokens_separator",
                                                   "shuffle_caption", "caption_dropout_rate",
                                                   "caption_dropout_every_n_epochs", "caption_tag_dropout_rate",
                                                   "token_warmup_min", "token_warmup_step", "enable_wildcard")}
    return SimpleNamespace(**(base | kw))


def draws(o, n=200, caption=CAPTION, epoch=1, step=0, seed=0, **kw):
    return [process_caption(caption, o, random.Random(f"{seed}:{i}"), epoch=epoch, step=step, **kw) for i in range(n)]


def test_plain_caption_is_the_first_line_unchanged():
    assert draws(opts(), 3, caption="a photo\nsecond line") == ["a photo"] * 3
    assert is_static(opts()) and not is_static(opts(shuffle_caption=True))


def test_prefix_suffix_come_first_then_dropout_empties_everything():
    o = opts(caption_prefix="pre", caption_suffix="post")
    assert draws(o, 1) == [f"pre {CAPTION} post"]
    out = draws(opts(caption_prefix="pre", caption_dropout_rate=0.3), 2000)
    assert set(out) == {"", f"pre {CAPTION}"}
    assert out.count("") / len(out) == pytest.approx(0.3, abs=0.04)


def test_dropout_every_n_epochs_counts_from_one():
    o = opts(caption_dropout_every_n_epochs=3)
    assert [draws(o, 1, epoch=e)[0] == "" for e in range(1, 7)] == [False, False, True, False, False, True]


def test_shuffle_keeps_the_head_and_permutes_the_rest():
    o = opts(shuffle_caption=True, keep_tokens=2)
    tags = [t.strip() for t in CAPTION.split(",")]
    out = draws(o)
    assert all(c.split(", ")[:2] == tags[:2] and sorted(c.split(", ")) == sorted(tags) for c in out)
    assert len(set(out)) > 20  # 4! = 24 orders of the flexible tags
    assert out == draws(o) and out != draws(o, seed=1)  # the seed decides


def test_keep_tokens_separator_fixes_head_and_tail():
    o = opts(shuffle_caption=True, keep_tokens=5, keep_tokens_separator="|||")
    caption = "sks dog, photo ||| a, b, c, d ||| masterpiece, best"
    out = draws(o, caption=caption)
    for c in out:
        parts = c.split(", ")
        assert parts[:2] == ["sks dog", "photo"] and parts[-2:] == ["masterpiece", "best"]
        assert sorted(parts[2:-2]) == ["a", "b", "c", "d"]
    assert len(set(out)) > 12


def test_tag_dropout_drops_flexible_tags_only():
    o = opts(caption_tag_dropout_rate=0.5, keep_tokens=1)
    out = draws(o, 2000)
    assert all(c.split(", ")[0] == "sks" for c in out)
    kept = sum(len(c.split(", ")) - 1 for c in out) / len(out)
    assert kept == pytest.approx(5 * 0.5, abs=0.15)
    orders = [[t for t in CAPTION.split(", ") if t in c.split(", ")] == c.split(", ") for c in out]
    assert all(orders)  # no shuffle: the survivors keep their order


def test_token_warmup_length_follows_the_formula():
    o = opts(token_warmup_step=10, token_warmup_min=2)
    flex = CAPTION.split(", ")
    for step in (0, 3, 7, 9, 10, 20):
        n = math.floor(step * (len(flex) - 2) / 10) + 2 if step < 10 else len(flex)
        assert draws(o, 1, step=step) == [", ".join(flex[:n])]
    frac = opts(token_warmup_step=0.5, token_warmup_min=1)  # a fraction of the run's steps
    assert draws(frac, 1, step=25, max_train_steps=100) == [", ".join(flex[:1 + math.floor(25 * 5 / 50)])]


def test_wildcards_pick_options_and_keep_escaped_braces():
    o = opts(enable_wildcard=True)
    out = draws(o, 300, caption="a {red|green|blue} {{literal}} {cat|dog}")
    assert {c.split()[1] for c in out} == {"red", "green", "blue"}
    assert {c.split()[3] for c in out} == {"cat", "dog"}
    assert all(c.split()[2] == "{literal}" for c in out)
    lines = draws(o, 200, caption="first line\nsecond line")
    assert set(lines) == {"first line", "second line"}


def test_secondary_separator_joins_after_shuffle():
    o = opts(shuffle_caption=True, secondary_separator=";;;")
    out = draws(o, 100, caption="a;;;b, c, d")
    assert all("a,b" in c for c in out)  # "a;;;b" moved as one tag, then became "a,b"


def test_tag_frequency_is_kohyas():
    assert tag_frequency(["Dog, red", "dog,  grass", ""]) == {"dog": 2, "red": 1, "grass": 1}
