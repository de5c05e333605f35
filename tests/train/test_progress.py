"""Progress off a terminal (plain lines), speed after a resume, and the step summary with max_steps."""

from types import SimpleNamespace

from torch import nn

from lorakit.train.callbacks import TrainState
from lorakit.train.hooks import ProgressBar, step_summary


def test_plain_lines_when_not_a_terminal_and_speed_since_resume(capsys):
    state = TrainState(model=nn.Linear(1, 1), step=4, total_steps=12, loss=0.5, lr=1e-3, samples_seen=40)
    bar = ProgressBar("lora", every=4, interactive=False)
    bar.on_train_begin(state)
    for step in range(5, 13):
        state.step, state.samples_seen = step, step * 10
        bar.on_step_end(state)
    bar.on_train_end(state)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[2] for line in lines] == ["8/12", "12/12"]  # every 4 steps and the last one
    assert all("since resume at step 4" in line and "\x1b" not in line for line in lines)


def test_step_summary_says_when_max_steps_caps_the_count():
    t = SimpleNamespace(epochs=3.0, batch_size=4, grad_accum=1, max_steps=5)
    text = step_summary("steps = 40 items", t, 10, 5, 0)
    assert "= 30 optimizer steps" in text and "train.max_steps=5 caps it: 5 steps" in text
    t.max_steps = None
    assert "caps" not in step_summary("steps = 40 items", t, 10, 30, 2) and "2 warmup" in step_summary("steps = 40 items", t, 10, 30, 2)
    t.max_steps = 50
    assert "extends it: 50 steps" in step_summary("steps = 40 items", t, 10, 50, 0)
