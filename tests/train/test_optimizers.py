"""The optimizers SD users ask for (Lion, Prodigy, Adafactor, any importable class with arguments), the
polynomial schedule and warm-up given as a fraction (kohya's ``lr_warmup_steps`` < 1)."""

import warnings

import pytest
import torch
import transformers
from torch import nn

from lorakit.tasks.diffusion.config import SDTrainArgs
from lorakit.train.optim import make_optimizer, make_scheduler, warmup_steps


def _groups():
    torch.manual_seed(0)
    return [{"params": [nn.Parameter(torch.randn(4, 3))], "lr": 1e-3}, {"params": [nn.Parameter(torch.randn(3))],
                                                                          "lr": 5e-3}]


@pytest.mark.parametrize("name,cls,extra", [
    ("lion", "lion_pytorch.Lion", {"betas": (0.95, 0.98)}),
    ("Prodigy", "prodigyopt.Prodigy", {"d_coef": 2.0, "d0": 1e-2}),
    ("adafactor", "transformers.optimization.Adafactor", {}),
    ("torch.optim.SGD", "torch.optim.SGD", {"momentum": 0.9}),
])
def test_named_and_dotted_optimizers_take_their_arguments_and_step(name, cls, extra):
    groups = _groups()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt = make_optimizer(groups, SDTrainArgs(optimizer=name, optimizer_args=extra), torch.device("cpu"))
    assert f"{type(opt).__module__}.{type(opt).__name__}".endswith(cls.rsplit(".", 1)[1])
    assert type(opt).__module__.split(".")[0] == cls.split(".")[0]
    for key, value in extra.items():
        assert opt.param_groups[0][key] == value
    if name == "Prodigy":  # one adaptive step size: the first group's lr, and a warning says so
        assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-3] and "one learning rate" in str(caught[0].message)
    else:
        assert [g["lr"] for g in opt.param_groups] == [1e-3, 5e-3]  # per-group learning rates are kept
    before = groups[0]["params"][0].detach().clone()
    groups[0]["params"][0].sum().backward()
    groups[1]["params"][0].sum().backward()
    opt.step()
    assert not torch.equal(before, groups[0]["params"][0])


def test_unknown_optimizers_are_explained():
    with pytest.raises(ValueError, match="no 'Nope'"):
        make_optimizer(_groups(), SDTrainArgs(optimizer="torch.optim.Nope"), torch.device("cpu"))
    with pytest.raises(ImportError, match="needs nowhere_pkg"):
        make_optimizer(_groups(), SDTrainArgs(optimizer="nowhere_pkg.Opt"), torch.device("cpu"))
    with pytest.raises(ValueError, match="not a torch.optim.Optimizer"):
        make_optimizer(_groups(), SDTrainArgs(optimizer="torch.nn.Linear"), torch.device("cpu"))
    with pytest.raises(ValueError, match="dotted class path"):
        make_optimizer(_groups(), SDTrainArgs(optimizer="sgdd"), torch.device("cpu"))


@pytest.mark.parametrize("power", [1.0, 2.0])
def test_polynomial_matches_transformers_and_warmup_fraction(power):
    total = 40
    args = SDTrainArgs(scheduler="polynomial", warmup_steps=0.1, power=power)
    assert warmup_steps(args, total) == 4
    ours_opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    ref_opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    ours = make_scheduler(ours_opt, args, total)
    ref = transformers.get_polynomial_decay_schedule_with_warmup(ref_opt, 4, total, lr_end=0.0, power=power)
    for _ in range(total + 2):
        assert ours.get_last_lr() == pytest.approx(ref.get_last_lr(), abs=1e-12)
        ours_opt.step(), ref_opt.step(), ours.step(), ref.step()
