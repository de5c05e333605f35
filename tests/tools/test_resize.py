"""resize: SVD truncation error (Eckart–Young), kept strength, dynamic rank rules."""

import pytest
import torch
from lora_files import SHAPES, delta, lora_file, tail

from lorakit.tools.resize import resize_lora


def test_fixed_rank_is_the_best_approximation_at_the_same_strength():
    lf = lora_file(0, rank=4, alpha=3.0)
    new, reports = resize_lora(lf, rank=2)
    for rep in reports:
        old, got = delta(lf.modules[rep.module]), delta(new.modules[rep.module])
        s = torch.linalg.svdvals(old.flatten(1))
        assert rep.new_rank == 2 and rep.old_rank == 4
        assert abs(float((got - old).norm()) - tail(s, 2)) < 1e-4 * float(s[0])
        assert abs(rep.fro_retained - float((s[:2] ** 2).sum().sqrt() / s.norm())) < 1e-5
        assert float(new.modules[rep.module]["alpha"]) == pytest.approx(3.0 / 4 * 2)  # (alpha/r)·k


def test_full_rank_resize_changes_nothing():
    lf = lora_file(1, rank=3)
    new, _ = resize_lora(lf, rank=3)
    for key in SHAPES:
        torch.testing.assert_close(delta(new.modules[key]), delta(lf.modules[key]), rtol=1e-4, atol=1e-5)
        assert new.modules[key]["lora_down.weight"].shape == lf.modules[key]["lora_down.weight"].shape


@pytest.mark.parametrize("method,param", [("sv_fro", 0.9), ("sv_cumulative", 0.8), ("sv_ratio", 4.0)])
def test_dynamic_rules(method, param):
    lf = lora_file(2, rank=6)
    _, reports = resize_lora(lf, rank=6, method=method, param=param)
    for rep in reports:
        s = torch.linalg.svdvals(delta(lf.modules[rep.module]).flatten(1))[:6]
        k = rep.new_rank
        if method == "sv_fro":  # smallest k keeping ≥ param of the Frobenius norm
            assert rep.fro_retained >= param - 1e-6
            assert k == 1 or float((s[:k - 1] ** 2).sum().sqrt() / s.norm()) < param
        elif method == "sv_cumulative":
            assert rep.sum_retained >= param - 1e-6
        else:
            assert k == int((s > s[0] / param).sum())


def test_dynamic_needs_its_parameter():
    with pytest.raises(ValueError, match="needs its parameter"):
        resize_lora(lora_file(0), method="sv_fro")
