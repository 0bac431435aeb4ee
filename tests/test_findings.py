"""The findings gatherer: regimes recognised by their one changed param, verdicts by hand."""

from research.findings import QUANTITIES, gather, regime_of, table, verdict

DEFAULTS = {"seeds": [0, 1], "sae": {"lr": 0.003, "l1_coeff": 1.0, "n_tokens": 2_000_000}}


def _run(sae, ce, name="exp", rev=None):
    rev = rev or str(ce)
    return {
        "rev": rev,
        "name": name,
        "data": {
            "rev": rev,
            "timestamp": "2026-11-23T12:00:00",
            "params": {"params.yaml": {"data": {"seeds": [0], "sae": sae}}},
            "metrics": {"metrics/evaluate.json": {"data": {}}},
        },
    }


def _read(rev):
    """Stands in for `git show <rev>:metrics/...`: the run's CE recovered is its rev."""
    return {"metrics/evaluate.json": {"ce_recovered_zero": float(rev)}}


def test_regime_is_the_one_changed_param():
    """A run that changes only sae.lr is the lr regime (seeds ignored); two changes match no regime."""
    assert regime_of({"seeds": [0], "sae": {**DEFAULTS["sae"], "lr": 0.001}}, DEFAULTS) == "lr 1e-3"
    assert regime_of(DEFAULTS, DEFAULTS) == "default"
    assert regime_of({"sae": {**DEFAULTS["sae"], "lr": 0.001, "l1_coeff": 2.0}}, DEFAULTS) is None


def test_verdicts_by_hand():
    """All pass -> every regime; none -> does not replicate; mixed -> some; one regime says so."""
    assert verdict([True, True]) == "holds in every regime"
    assert verdict([False, False]) == "does not replicate"
    assert verdict([True, False]) == "holds in some"
    assert verdict([True]) == "holds in the one regime measured"
    assert verdict([None, None]) == "not measured"


def test_table_applies_each_criterion_per_regime():
    """CE recovered 0.95 (default) and 0.7 (l1 2.0) against ">= 0.90": holds in some, naming the default."""
    runs = [
        _run(DEFAULTS["sae"], 0.95, "workspace", "workspace"),
        _run({**DEFAULTS["sae"], "l1_coeff": 2.0}, 0.7),
        _run({**DEFAULTS["sae"], "lr": 0.001}, 0.5, "running-lr", "workspace"),  # queued/running: skipped
        _run(DEFAULTS["sae"], 0.1, "old-commit"),
    ]  # a baseline that is not the workspace: skipped
    found = gather(runs, DEFAULTS, lambda rev: _read(rev if rev != "workspace" else "0.95"))
    row = next(r for r in table(found) if r["quantity"] == QUANTITIES[0].name)
    assert row["default"] == 0.95 and row["l1_coeff 2.0"] == 0.7
    assert row["verdict"] == "holds in some (default)" and "lr 1e-3" not in found
