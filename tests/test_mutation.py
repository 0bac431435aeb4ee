"""benchmarks/mutation.py (make mutation) on one small module with one test: the smoke run the issue asks for. The
full run is slow and is not part of the suite; its committed report is benchmarks/results/mutation.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow(16)
def test_mutation_report_counts_every_mutant(tmp_path):
    """resample.py mutated against the one test of resample_probabilities: that function's mutants are killed but
    one (its 1e-12 floor is too small to see), resample_'s have no test in this selection, and the counts add up."""
    pytest.importorskip("mutmut", reason="`make test` installs mutmut (make mutation's pin)")
    cmd = [sys.executable, "benchmarks/mutation.py", "--only", "src/saelab/training/resample.py"]
    cmd += ["--tests", "tests/test_train.py::test_resample_probabilities_are_loss_squared"]
    cmd += ["--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True)
    res = json.loads((tmp_path / "out" / "mutation_partial.json").read_text())
    s = res["modules"]["src/saelab/training/resample.py"]["all"]
    rows = res["mutants"]
    assert s["mutants"] == len(rows) > 0
    assert s["mutants"] == s["killed"] + s["survived"] + s["equivalent"] + s["no_tests"] + s["timeout"] + s["other"]
    probs = [r for r in rows if r["function"] == "resample_probabilities"]
    assert probs and sum(r["status"] == "killed" for r in probs) >= len(probs) - 1
    assert all(r["status"] == "no tests" for r in rows if r["function"] == "resample_")
    assert all("mutation" in r for r in rows if r["status"] != "killed")  # every survivor is shown with its line
    assert (tmp_path / "out" / "mutation_partial.md").read_text().startswith("# Mutation testing")
