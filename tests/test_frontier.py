"""research.frontier on a hand-built `dvc exp show --json`: each run labelled by its architecture's knob."""

import csv

from research.frontier import METRICS, points, write


def _run(name, sae, l0, ce):
    return {
        "rev": "a" * 40,
        "name": name,
        "data": {
            "params": {"params.yaml": {"data": {"sae": sae}}},
            "metrics": {
                METRICS: {"data": {"l0": l0, "ce_recovered_zero": ce, "explained_variance": 0.8, "frac_dead": 0.0}}
            },
        },
    }


def test_runs_are_labelled_by_their_architectures_sparsity_knob(tmp_path):
    """A mixed sweep: standard by l1_coeff (architecture absent = standard), topk by topk.k, jumprelu by
    jumprelu.l0_coeff; a topk run whose l1_coeff equals a standard run's is not merged with it."""
    show = [
        {
            "rev": "workspace",
            "experiments": [
                _run("base", {"l1_coeff": 1.0}, 20.0, 0.9),
                _run("l1-2", {"architecture": "standard", "l1_coeff": 2.0}, 8.0, 0.8),
                _run("k16", {"architecture": "topk", "l1_coeff": 1.0, "topk": {"k": 16}}, 16.0, 0.95),
                _run("k32", {"architecture": "topk", "l1_coeff": 1.0, "topk": {"k": 32}}, 32.0, 0.97),
                _run("jr", {"architecture": "jumprelu", "l1_coeff": 1.0, "jumprelu": {"l0_coeff": 0.3}}, 30.0, 0.96),
                {
                    "rev": "b" * 40,
                    "name": "no-metrics",
                    "data": {"params": {"params.yaml": {"data": {"sae": {}}}}, "metrics": {}},
                },
            ],
        }
    ]
    rows = points(show)
    got = [(r["architecture"], r["knob"], r["value"]) for r in rows]
    assert got == [
        ("jumprelu", "jumprelu.l0_coeff", 0.3),
        ("standard", "l1_coeff", 1.0),
        ("standard", "l1_coeff", 2.0),
        ("topk", "topk.k", 16),
        ("topk", "topk.k", 32),
    ]
    write(rows, tmp_path)
    table = list(csv.DictReader(open(tmp_path / "frontier.csv")))
    assert [r["name"] for r in table] == ["jr", "base", "l1-2", "k16", "k32"]
    assert (tmp_path / "frontier.png").stat().st_size > 0 and "topk.k" in (tmp_path / "frontier.md").read_text()
