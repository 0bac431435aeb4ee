"""dvc.yaml cannot go stale: each stage depends on exactly its import closure; train's params are per key, cadence left out."""

from pathlib import Path

import yaml

from saelab.checkpoint import CADENCE_KEYS
from saelab.config import SAEConfig
from saelab.deps import closure

REPO = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _library_deps(stage: dict) -> set[Path]:
    out = set()
    for d in stage["deps"]:
        path = str(d).split("#")[0].strip().replace("${lib}", "src/saelab")
        p = REPO / path
        if path.startswith("src/"):
            out |= {f for f in p.rglob("*.py")} if p.is_dir() else {p}
    return out


def test_every_stage_lists_exactly_its_import_closure():
    """For every stage, the library files in its deps equal the saelab modules its script imports
    (transitively, lazy imports included): an unlisted import or a stale entry fails."""
    for name, stage in STAGES.items():
        script = REPO / "stages" / f"{name}.py"
        assert f"stages/{name}.py" in stage["deps"], name
        want, have = closure(script), _library_deps(stage)
        assert have == want, f"{name}: missing {sorted(map(str, want - have))}, stale {sorted(map(str, have - want))}"


def test_closure_sees_lazy_imports(tmp_path):
    """An import inside a function body is part of the closure (stream.py imports lm lazily)."""
    script = tmp_path / "s.py"
    script.write_text("def f():\n    from saelab.lm import load_lm\n")
    assert REPO / "src/saelab/lm.py" in closure(script)


def test_training_params_are_per_key_without_cadence():
    """train depends on every sae key that changes the SAE and on none of the logging/checkpoint cadence."""
    params = set(STAGES["train"]["params"])
    training = {f"sae.{k}" for k in SAEConfig.model_fields if k not in ("seed", "log_every", "checkpoint_every")}
    assert training <= params
    assert not {"sae", "sae.log_every", "sae.checkpoint_every"} & params
    assert {"log_every", "checkpoint_every"} <= set(CADENCE_KEYS)


def test_exp_show_opens_with_the_sae_headline_then_l1_coeff():
    """`dvc exp show` lists metrics (dvc.yaml order, file key order) before params (params.yaml order):
    one declared metrics file whose first keys are CE recovered, L0 and EV, and sae.l1_coeff as the
    first param, so a 200-column terminal shows all four without flags."""
    from saelab.evaluate import HEADLINE

    declared = [next(iter(m)) if isinstance(m, dict) else m for s in STAGES.values() for m in s.get("metrics", [])]
    assert declared == ["metrics/evaluate.json"]
    assert HEADLINE[:3] == ("ce_recovered_zero", "l0", "explained_variance") and len(HEADLINE) <= 10
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert next(iter(params)) == "sae" and list(params["sae"])[:2] == ["architecture", "l1_coeff"]


def test_synthetic_stages_list_exactly_their_import_closure():
    """synthetic/dvc.yaml too: each stage's library deps are its script's import closure."""
    synth = yaml.safe_load((REPO / "synthetic/dvc.yaml").read_text())["stages"]
    for name, stage in synth.items():
        stage = stage.get("do", stage)
        deps = [str(d).replace("${lib}", "../src/saelab") for d in stage["deps"]]
        script = REPO / "stages" / f"synth_{name}.py"
        assert f"../stages/synth_{name}.py" in deps, name
        have = {REPO / d.removeprefix("../") for d in deps if d.startswith("../src/")}
        want = closure(script)
        assert have == want, f"{name}: missing {sorted(map(str, want - have))}, stale {sorted(map(str, have - want))}"


def test_question_stages_list_exactly_their_import_closure():
    """questions/dvc.yaml too: each stage's library deps are its script's import closure."""
    stages = yaml.safe_load((REPO / "questions/dvc.yaml").read_text())["stages"]
    script_of = {"activations": "q_activations", "train": "q_train", "train_hook": "q_train",
                 "train_derived": "q_train", "answer": "q_answer"}
    assert set(stages) == set(script_of)
    for name, stage in stages.items():
        stage = stage.get("do", stage)
        deps = [str(d).replace("${lib}", "../src/saelab") for d in stage["deps"]]
        script = REPO / "stages" / f"{script_of[name]}.py"
        assert f"../stages/{script.name}" in deps and script.name in stage["cmd"], name
        have = {REPO / d.removeprefix("../") for d in deps if d.startswith("../src/")}
        want = closure(script)
        assert have == want, f"{name}: missing {sorted(map(str, want - have))}, stale {sorted(map(str, have - want))}"
