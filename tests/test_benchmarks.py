"""The benchmark scripts' own bookkeeping: what keys a cached run, and summaries that meet a degenerate run."""

import importlib.util
import json
import math
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def functional():
    return _load("functional")


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


def test_speed_table_takes_medians_of_per_round_ratios_and_names_a_failed_peer():
    """benchmarks/speed.py: a ratio is the median of the rounds' ratios (not a ratio of medians), tokens/s the median
    with its range; a peer that failed is a row naming the failure, and its ratios are left out, not guessed."""
    speed = _load("speed")
    lm = {"tokens_per_s": speed.median_range([7_200.0, 14_400.0, 21_600.0])}
    res = {
        "saelab": {"tokens_per_s_runs": [10.0, 30.0, 20.0], "mse": 2.0},
        "saelab-unit": {"tokens_per_s_runs": [40.0, 40.0, 40.0], "mse": 1.5},
        "sparsify": {"tokens_per_s_runs": [10.0, 10.0, 40.0], "mse": 1.0},
    }
    topk = {"results": res, "failed": {"sae-lens": "exit 1"}}
    dense = [{"summary": {"saelab": {"tokens_per_s": t}, "sae-lens": {"tokens_per_s": 2 * t}},
              "results": {"a": {"trainer": "saelab", "mse": 3.0}, "b": {"trainer": "sae-lens", "mse": 4.0}}}
             for t in (1.0, 2.0, 3.0)]  # fmt: skip
    table = {(r["benchmark"], r["trainer"]): r for r in speed.rows(lm, topk, dense)}
    assert table[("lm stage (train_lm)", "saelab")]["tokens_per_s"]["median"] == 14_400.0
    assert table[("topk", "saelab")]["tokens_per_s"] == {"median": 20.0, "min": 10.0, "max": 30.0,
                                                         "rounds": [10.0, 30.0, 20.0]}  # fmt: skip
    ratio = table[("topk ratio", "saelab / sparsify")]
    assert ratio["ratio"]["rounds"] == [1.0, 3.0, 0.5] and ratio["ratio"]["median"] == 1.0  # medians alone: 20/10
    assert ratio["mse_difference"] == pytest.approx(1.0) and not ratio["met"]  # 1.0x, and at a higher MSE
    assert table[("topk ratio", "saelab-unit / sparsify")]["met"]  # 4x >= 2x
    assert table[("topk", "sae-lens")]["failed"] == "exit 1" and ("topk ratio", "saelab / sae-lens") not in table
    assert table[("dense ratio", "saelab / sae-lens")]["ratio"]["median"] == pytest.approx(0.5)
    md = speed.markdown({"machine": "m", "date": "d", "commit": "c", "command": "x", "torch": "t", "threads": 2,
                         "device": "cpu", "repeat": 3, "table": list(table.values())})  # fmt: skip
    assert "| topk | sae-lens | failed: exit 1 |" in md and "| 1.00 (0.50-3.00)x |" in md
    gpu = {(r["benchmark"], r["trainer"]): r for r in speed.rows(lm, topk, dense, "cuda")}  # the goals are the CPU's
    unit = gpu[("topk ratio", "saelab-unit / sparsify")]
    assert "met" not in unit and "not judged" in unit["goal"] and unit["ratio"] == table[
        ("topk ratio", "saelab-unit / sparsify")]["ratio"]  # fmt: skip
    assert "MISSED" not in gpu[("lm stage (train_lm)", "saelab")]["goal"]


def test_worker_env_puts_benchmarks_and_src_first_and_keeps_the_callers_path(monkeypatch):
    """A peer installed with pip --target (a machine without an index) stays importable in the workers."""
    harness = _load("harness")
    monkeypatch.setenv("PYTHONPATH", "/opt/peers")
    path = harness.worker_env()["PYTHONPATH"].split(os.pathsep)
    assert path[0].endswith("benchmarks") and path[1].endswith("src") and path[2:] == ["/opt/peers"]
    monkeypatch.delenv("PYTHONPATH")
    assert len(harness.worker_env()["PYTHONPATH"].split(os.pathsep)) == 2


def test_features_unique_to_a_loss_read_gain_and_top_token_share():
    """A feature is unique when alive and without a decoder match above the threshold in the other SAE's alive
    features (a dead twin does not count); the read gain is 1 for a direction read like a random one and 0 in
    W_out's null space; the top-token share counts the commonest token; corpus text never breaks a table."""
    import torch

    ff = _load("functional_features")
    a = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    b = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, -1.0]])
    alive_a, alive_b = torch.tensor([True, True, True, False]), torch.tensor([True, False, True])
    ua, ub, ca, cb = ff.unique(a, b, alive_a, alive_b, 0.5)
    # a0 matches b0; a1 has no match; a2's match b1 is dead and b2 is its opposite; a3 is dead
    assert ua.tolist() == [False, True, True, False] and ub.tolist() == [False, False, True]
    assert ca[0] == pytest.approx(1.0) and ca[2] == pytest.approx(0.0) and math.isnan(ca[3])  # not the dead twin
    assert cb[0] == pytest.approx(1.0) and math.isnan(cb[1])
    none_alive = torch.zeros(3, dtype=torch.bool)  # the other SAE all dead: nothing matches, every alive row unique
    ua, ub, ca, _ = ff.unique(a, b, alive_a, none_alive, 0.5)
    assert ua.tolist() == alive_a.tolist() and not ub.any() and ca.isnan().all()
    w_out = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # reads dims 0 and 1; ‖W‖_F / √3 = √(2/3)
    g = ff.read_gain(torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.0, 5.0], [1.0, 1.0, 1.0]]), w_out)
    assert g.tolist() == pytest.approx([math.sqrt(3 / 2), 0.0, 1.0])
    assert ff.mode_share([5, 5, 7, 5]) == 0.75 and ff.mode_share([1]) == 1.0 and math.isnan(ff.mode_share([]))
    assert ff.md("a|b`c\nd\te") == "a¦bˋc⏎d→e"


def test_splice_members_reads_each_pairs_models_and_refuses_ones_evaluate_did_not_score(tmp_path):
    """The sets name each target's SAE and each pair's transcoder (input->target) with the evaluate stage's files
    for them; a member whose cost alone differs from evaluate's by more than 1e-5 nats is named."""
    sm = _load("splice_members")
    t, s = "blocks.1.hook_mlp_out", "blocks.1.ln2.hook_normalized"
    sets = sm.members(tmp_path, {t: s}, 2)
    assert sets["saes"] == {t: (tmp_path / f"models/sites/{t}/seed-2", tmp_path / f"metrics/sites/{t}")}
    assert sets["transcoders"] == {
        f"{s}->{t}": (tmp_path / f"models/transcoders/{t}/seed-2", tmp_path / f"metrics/transcoders/{t}")
    }
    metrics = {"per_site": {"a": {"ce_increase_alone": 0.05}, "b": {"ce_increase_alone": 0.1}}}
    details = {"a": {"ce_sae": 4.05, "ce_clean": 4.0}, "b": {"ce_sae": 4.1001, "ce_clean": 4.0}}
    bad = sm.mismatches(metrics, details)
    assert len(bad) == 1 and bad[0].startswith("b: +0.100000 here, +0.100100 in evaluate")


def test_size_equivalent_interpolates_in_log_n_between_the_bracketing_rungs_and_nowhere_else():
    """Between two rungs, linear in log N; at a rung, that rung's N; outside the ladder's CE range, None."""
    ladder = _load("lm_ladder")
    rungs = [(1000, 5.0), (4000, 4.0), (16000, 3.5)]
    assert ladder.size_equivalent(rungs, 4.5) == pytest.approx(2000)  # halfway in CE: the geometric mean
    assert ladder.size_equivalent(rungs, 4.0) == pytest.approx(4000) and ladder.size_equivalent(rungs, 3.75) == (
        pytest.approx(8000))  # fmt: skip
    assert ladder.size_equivalent(rungs, 5.5) is None and ladder.size_equivalent(rungs, 3.0) is None
    with pytest.raises(ValueError, match="does not fall"):
        ladder.size_equivalent([(1000, 5.0), (4000, 5.2), (16000, 3.5)], 5.1)


def test_ladder_counts_n_without_the_embeddings_and_unembedding():
    """N: every parameter but the token and positional embeddings and the unembedding (biases and LayerNorms in)."""
    from saelab.config import LMConfig
    from saelab.data import lm

    ladder = _load("lm_ladder")
    cfg = LMConfig(vocab_size=300, d_model=32, d_mlp=128, n_heads=4, n_layers=1, n_ctx=16)
    n, total = ladder.n_params(lm.build_model(lm.tl_config(cfg)))
    assert total - n == 300 * 32 + 16 * 32 + 32 * 300
    assert n == 4 * 32 + 4 * (32 * 32 + 32) + (32 * 128 + 128) + (128 * 32 + 32) + 2 * 32


def test_functional_goals_count_kl_ds_as_a_functional_loss(functional, tmp_path):
    """kl_ds runs (--losses ... kl_ds) enter the reach goal, the equal-L0 rows and the throughput as KL's do, each
    row naming its loss; without them the report's KL+ds figures are empty, not an error."""
    rows = [
        _row("topk", "mse", 16, 16.0, 0.95, tps=200.0),
        _row("topk", "mse", 64, 64.0, 0.98, tps=200.0),
        _row("topk", "mse+ft", 16, 16.0, 0.96),
        _row("topk", "mse+ft", 64, 64.0, 0.985),
        _row("topk", "kl", 16, 16.0, 0.96, tps=100.0),
        _row("topk", "kl", 64, 64.0, 0.975, tps=100.0),
        _row("topk", "kl_ds", 16, 16.0, 0.97, tps=150.0),
        _row("topk", "kl_ds", 64, 64.0, 0.99, tps=150.0),
    ]
    g = functional.goals(rows)
    best = next(x for x in g["kl_reach"] if x["is_best_mse"])
    assert best["kl_arch"] == "topk kl_ds" and 16.0 < best["kl_l0"] < 64.0  # only kl_ds reaches 0.98
    assert {(x["loss"], x["value"]) for x in g["equal_l0"]} == {("kl", 16), ("kl", 64), ("kl_ds", 16), ("kl_ds", 64)}
    speed = g["throughput"][0]
    assert speed["kl_over_mse"] == 0.5 and speed["kl_ds_over_mse"] == 0.75
    kept = [r for r in rows if r["loss"] != "kl_ds"]
    without = functional.goals(kept)
    assert math.isnan(without["throughput"][0]["kl_ds_over_mse"])
    assert next(x for x in without["kl_reach"] if x["is_best_mse"])["kl_l0"] is None
    report = {"hardware": "cpu", "n_tokens": 1, "d_sae": 2, "batch_size": 3, "lr": 0.1, "seed": 0, "ft_frac": 0.1,
              "ft_lr": 0.01, "eval_tokens": 8, "ce_eval_tokens": 4, "command": "x", "runs": kept,
              "goals": without}  # fmt: skip
    functional.write_outputs(report, tmp_path / "out")
    text = (tmp_path / "out" / "functional.md").read_text()
    assert "KL+ds — (—x)" in text and "no functional run reaches it" in text
