"""The benchmark scripts' own bookkeeping: what keys a cached run, and summaries that meet a degenerate run."""

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def functional():
    spec = importlib.util.spec_from_file_location("bench_functional", ROOT / "benchmarks" / "functional.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _row(arch, loss, value, l0, ce, mse=1.0, dead=0.0, tps=100.0):
    return {"arch": arch, "loss": loss, "value": value, "l0": l0, "ce_recovered_zero": ce, "mse": mse,
            "frac_dead": dead, "tokens_per_s": tps}  # fmt: skip


def test_functional_cache_key_follows_evaluation_settings_and_input_contents(functional, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("a: 1\n")
    lm = tmp_path / "lm"
    lm.mkdir()
    (lm / "w").write_bytes(b"0")
    args = SimpleNamespace(n_tokens=1, d_sae=2, batch_size=3, lr=0.1, seed=0, ft_frac=0.1, ft_lr=0.01,
                           eval_tokens=8, ce_tokens=4, params=params, lm=lm, tokens=tmp_path / "t",
                           cache=tmp_path / "c")  # fmt: skip
    base = functional.settings_key(args)
    assert functional.settings_key(args) == base
    for change in ({"eval_tokens": 16}, {"ce_tokens": 8}, {"seed": 1}):
        assert functional.settings_key(SimpleNamespace(**{**vars(args), **change})) != base, change
    params.write_text("a: 2\n")  # same path, new content
    assert functional.settings_key(args) != base
    params.write_text("a: 1\n")
    (lm / "w").write_bytes(b"1")
    assert functional.settings_key(args) != base


def test_functional_goals_and_report_survive_a_run_at_l0_zero(functional, tmp_path):
    rows = [
        _row("topk", "mse", 0, 0.0, 0.0),  # a degenerate MSE run: no latent fires
        _row("topk", "mse", 16, 16.0, 0.95),
        _row("topk", "mse", 32, 32.0, 0.97),
        _row("topk", "mse+ft", 0, 0.0, 0.1),
        _row("topk", "mse+ft", 16, 16.0, 0.97),
        _row("topk", "kl", 0, 0.0, 0.99),  # L0 0 "reaching" a CE must not count as the smallest L0
        _row("topk", "kl", 16, 16.0, 0.96),
        _row("topk", "kl", 32, 32.0, 0.975),
    ]
    g = functional.goals(rows)
    assert {x["value"]: x["kl_l0"] for x in g["kl_reach"]}[16] == 16.0
    ft = {x["value"]: x for x in g["finetune"]}
    assert math.isnan(ft[0]["l0_ratio"]) and not ft[0]["met"]
    assert ft[16]["gap_reduction"] == pytest.approx(1 - 0.03 / 0.05) and ft[16]["met"] is False
    report = {"hardware": "cpu", "n_tokens": 1, "d_sae": 2, "batch_size": 3, "lr": 0.1, "seed": 0,
              "ft_frac": 0.1, "ft_lr": 0.01, "eval_tokens": 8, "ce_eval_tokens": 4, "command": "x", "runs": rows,
              "goals": g}  # fmt: skip
    functional.write_outputs(report, tmp_path / "out")
    back = json.loads((tmp_path / "out" / "functional.json").read_text())  # strict JSON: no NaN token
    assert {x["value"]: x["l0_ratio"] for x in back["goals"]["finetune"]}[0] is None
    assert "L0 0.0" in (tmp_path / "out" / "functional.md").read_text()


def test_json_safe_turns_non_finite_floats_into_none(functional):
    got = functional.json_safe({"a": [1.0, math.nan, {"b": math.inf}], "c": (2, -math.inf), "d": "nan"})
    assert got == {"a": [1.0, None, {"b": None}], "c": [2, None], "d": "nan"}
