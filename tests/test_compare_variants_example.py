"""The comparison example runs end to end (tiny budgets) and reports every variant this checkout has."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "examples"))

import compare_variants  # noqa: E402


def test_runs_and_reports(capsys):
    rows = compare_variants.main(["--steps", "6", "--pretrain-steps", "3"])
    ran = {r["variant"] for r in rows if "skipped" not in r}
    assert {"LoRA", "AdaLoRA 6->4 (lr x1)", "PeriodicLoRA (N=2)", "LoHa", "LoKr"} <= ran
    assert all(r["loss"] > 0 and 0 <= r["acc"] <= 1 for r in rows if "skipped" not in r)
    out = capsys.readouterr().out
    assert "final loss" in out and "accuracy" in out
