"""kohya sample-prompt files: the line syntax, TOML with subsets, JSON, and clear errors."""

import json

import pytest

from lorakit.sd.sample_prompts import SamplePrompt, parse_line, read_prompt_file


def test_line_options_as_kohya_reads_them():
    p = parse_line("1girl, (red hair:1.2) --n lowres, bad hands --w 768 --h 512 --s 28 --l 6.5 --d 42 --ss euler_a")
    assert p == SamplePrompt("1girl, (red hair:1.2)", "lowres, bad hands", 768, 512, 28, 6.5, 42, "euler_a")


def test_defaults_and_clamped_steps():
    p = parse_line("a cat --s 5000")
    assert (p.width, p.height, p.steps, p.cfg, p.seed, p.sampler, p.negative) == (512, 512, 1000, None, None, None, "")


def test_txt_skips_comments_and_blank_lines(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("# header\n\na cat --d 1\n  \na dog --w 640\n")
    assert [(p.prompt, p.seed, p.width) for p in read_prompt_file(f)] == [("a cat", 1, 512), ("a dog", None, 640)]


def test_toml_subsets_inherit_defaults(tmp_path):
    f = tmp_path / "p.toml"
    f.write_text('[prompt]\nnegative_prompt = "ugly"\nwidth = 640\nsample_steps = 12\n\n'
                 '[[prompt.subset]]\nprompt = "a cat"\n\n[[prompt.subset]]\nprompt = "a dog"\nwidth = 512\nseed = 3\n')
    got = read_prompt_file(f)
    assert [(p.prompt, p.negative, p.width, p.steps, p.seed) for p in got] == [
        ("a cat", "ugly", 640, 12, None), ("a dog", "ugly", 512, 12, 3)]


def test_json_lines_and_dicts(tmp_path):
    f = tmp_path / "p.json"
    f.write_text(json.dumps(["a cat --l 4", {"prompt": "a dog", "scale": 5.0, "sample_sampler": "ddim"}]))
    got = read_prompt_file(f)
    assert [(p.prompt, p.cfg, p.sampler) for p in got] == [("a cat", 4.0, None), ("a dog", 5.0, "ddim")]


def test_errors_name_the_option(tmp_path):
    with pytest.raises(ValueError, match="--w 'abc' is not a valid int"):
        parse_line("a cat --w abc")
    with pytest.raises(ValueError, match="unknown option '--x 3'"):
        parse_line("a cat --x 3")
    f = tmp_path / "p.json"
    f.write_text(json.dumps([{"prompt": "a", "steps": 3}]))
    with pytest.raises(ValueError, match="unknown key"):
        read_prompt_file(f)


def test_prompt_problems_name_file_and_line_for_every_bad_option(tmp_path):
    from lorakit.sd.sample_prompts import prompt_problems

    f = tmp_path / "p.txt"
    f.write_text("# ok\na cat --ss euler_a\na dog --ss not_a_sampler\n\na cow --w 100 --l nan\na hen --ss DDIM Karras\n")
    problems = prompt_problems(f)
    assert len(problems) == 4, problems
    assert problems[0].startswith(f"{f}:3: --ss 'not_a_sampler': unknown sampler")
    assert problems[1].startswith(f"{f}:5: size 100x512") and problems[2].startswith(f"{f}:5: --l nan")
    assert problems[3].startswith(f"{f}:6: --ss 'DDIM Karras'") and "does not support schedule type" in problems[3]
    f.write_text("a cat --w abc\n")
    assert prompt_problems(f) == [f"{f}:1: --w 'abc' is not a valid int."]
    f.write_text("# only a comment\n")
    assert "no prompts" in prompt_problems(f)[0]


def test_prompt_problems_of_broken_toml_and_json_files(tmp_path):
    from lorakit.sd.sample_prompts import prompt_problems

    f = tmp_path / "p.toml"
    f.write_text('[prompt]\nwidth = 512\n\n[[prompt.subset]]\nprompt = "a cat\n')
    (problem,) = prompt_problems(f)
    assert problem.startswith(f"{f}: not valid TOML") and "line 5" in problem
    f.write_text('[prompt]\nwidth = "big"\n[[prompt.subset]]\nprompt = "a"\n')
    assert prompt_problems(f) == [f"{f} [[prompt.subset]] 1: width='big'; expected an integer."]
    j = tmp_path / "p.json"
    j.write_text('["a cat",\n  "a dog" "x"]')
    (problem,) = prompt_problems(j)
    assert problem.startswith(f"{j}:2: not valid JSON")
