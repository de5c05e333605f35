"""Prompt editing, alternation and AND as A1111 defines them: the examples of ``modules/prompt_parser.py``'s
docstring (10 steps), the step each sampling step reads, AND's sub-prompt weights, and the texts A1111's
parser leaves alone."""

import pytest

from lorakit.sd.schedule import prompt_schedule, split_and, text_at

A1111_EXAMPLES = [  # get_learned_conditioning_prompt_schedules([p], 10)
    ("test", [(10, "test")]),
    ("a [b:3]", [(3, "a "), (10, "a b")]),
    ("a [b: 3]", [(3, "a "), (10, "a b")]),
    ("a [[[b]]:2]", [(2, "a "), (10, "a [[b]]")]),
    ("[(a:2):3]", [(3, ""), (10, "(a:2)")]),
    ("a [b : c : 1] d", [(1, "a b  d"), (10, "a  c  d")]),
    ("a[b:[c:d:2]:1]e", [(1, "abe"), (2, "ace"), (10, "ade")]),
    ("a [unbalanced", [(10, "a [unbalanced")]),
    ("a [b:.5] c", [(5, "a  c"), (10, "a b c")]),
    ("((a][:b:c [d:3]", [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
    ("[a|(b:1.1)]", [(i, "a" if i % 2 else "(b:1.1)") for i in range(1, 11)]),
    ("[fe|]male", [(i, "female" if i % 2 else "male") for i in range(1, 11)]),
    ("[fe|||]male", [(i, "female" if i % 4 == 1 else "male") for i in range(1, 11)]),
    # the docstring's header example at 100 steps
    ("fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75][ in foreground::0.6]"
     "[ in background:0.25] [shoddy:masterful:0.5]", None),
]


@pytest.mark.parametrize(("text", "want"), A1111_EXAMPLES[:-1])
def test_a1111_docstring_examples(text, want):
    assert prompt_schedule(text, 10) == want


def test_a1111_header_example_at_100_steps():
    got = prompt_schedule(A1111_EXAMPLES[-1][0], 100)
    assert got == [
        (25, "fantasy landscape with a mountain and an oak in foreground shoddy"),
        (50, "fantasy landscape with a lake and an oak in foreground in background shoddy"),
        (60, "fantasy landscape with a lake and an oak in foreground in background masterful"),
        (75, "fantasy landscape with a lake and an oak in background masterful"),
        (100, "fantasy landscape with a lake and a christmas tree in background masterful")]


def test_half_way_edit_at_20_steps_switches_after_step_10():
    """A1111's sampler reads entry ``i`` while step ``i`` (0-based) <= its end: "a" for steps 0..10."""
    schedule = prompt_schedule("[a:b:0.5]", 20)
    assert schedule == [(10, "a"), (20, "b")]
    assert [text_at(schedule, i) for i in range(20)] == ["a"] * 11 + ["b"] * 9
    assert prompt_schedule("[a:b:10]", 20) == schedule  # a step count
    assert prompt_schedule("[a:b:1.0]", 20) == [(20, "a")]  # a fraction: 1.0 x 20 steps, never switches
    assert prompt_schedule("[a:b:1e1]", 20) == schedule  # no ".": a step count of 10
    assert prompt_schedule("[a:b:0]", 20) == [(20, "b")] == prompt_schedule("[a:b:-3]", 20)
    assert prompt_schedule("[a:b:99]", 20) == [(20, "a")]  # capped at the step count


def test_add_remove_and_nesting():
    assert prompt_schedule("a [dog:4] cat", 8) == [(4, "a  cat"), (8, "a dog cat")]
    assert prompt_schedule("a [dog::4] cat", 8) == [(4, "a dog cat"), (8, "a  cat")]
    assert prompt_schedule("[a:[b:c:6]:0.25]", 8) == [(2, "a"), (6, "b"), (8, "c")]
    assert prompt_schedule("[[a:b:1]|c]", 4) == [(1, "a"), (2, "c"), (3, "b"), (4, "c")]
    assert prompt_schedule("(x [a:b:1]:1.3) BREAK y", 2) == [(1, "(x a:1.3) BREAK y"), (2, "(x b:1.3) BREAK y")]
    assert prompt_schedule("\\[a:b:1\\] [c\\:d:1]", 2) == [(1, "\\[a:b:1\\] "), (2, "\\[a:b:1\\] c\\:d")]


@pytest.mark.parametrize("text", ["a|b [c:d:1]", "a [c:d:1] \\", "[a:b:c]", "[a|b:1]", "[a:b:1:2]", "plain"])
def test_texts_a1111_reads_as_written(text):
    """A stray | or a lone trailing backslash fails A1111's parse: the whole prompt is taken as written."""
    assert prompt_schedule(text, 10) == [(10, text)]


def test_unmatched_brackets_next_to_an_edit_follow_a1111s_parser():
    """Checked against A1111's Earley parser: an odd run of unmatched brackets after an edit keeps it."""
    assert prompt_schedule("[a:b:1]]", 10) == [(1, "a]"), (10, "b]")]
    assert prompt_schedule("[a:b:1]]]", 10) == [(10, "[a:b:1]]]")]
    assert prompt_schedule("[a:b:1]):", 10) == [(10, "[a:b:1]):")]
    assert prompt_schedule("x)[a:b:1]y", 10) == [(1, "x)ay"), (10, "x)by")]


def test_and_splits_into_weighted_sub_prompts():
    assert split_and("a cat AND a dog:0.5 AND (x:1.2)") == [("a cat", 1.0), (" a dog", 0.5), (" (x:1.2)", 1.0)]
    assert split_and("a cat :1.5 ") == [("a cat", 1.5)]  # even alone, a trailing weight is the sub-prompt's
    assert split_and("a cat AND dog: -0.5") == [("a cat", 1.0), (" dog", -0.5)]
    assert split_and("cats and dogs, BRAND") == [("cats and dogs, BRAND", 1.0)]
    assert split_and("a:b AND c:.5") == [("a:b", 1.0), (" c", 0.5)]


def test_steps_must_be_positive():
    with pytest.raises(ValueError, match="steps=0"):
        prompt_schedule("a", 0)
