"""dvc.yaml cannot go stale: one stage convention, each stage lists exactly its code, train's params per key."""

from pathlib import Path

import pytest
import yaml

from saelab import deps
from saelab.training.checkpoint import CADENCE_KEYS

REPO = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _code_deps(stage: dict) -> list[str]:
    return [str(d).split("#")[0].strip() for d in stage["deps"] if deps.CODE_DEP.match(f"- {d}")]


@pytest.mark.parametrize("pipeline", deps.PIPELINES)
def test_every_stage_of_every_pipeline_lists_exactly_its_code(pipeline):
    """Every stage runs `python -m <module>` and lists that module's file and its import closure (saelab and
    research, lazy imports included) as its code deps: an unlisted import or a stale entry fails."""
    for name, stage in deps.stages(REPO / pipeline).items():
        want = deps.code_deps(stage["cmd"])
        assert _code_deps(stage) == want, f"{pipeline} {name}: run `python -m saelab.deps --fix`"


def test_every_pipeline_of_the_tree_is_checked():
    """deps.PIPELINES names every dvc.yaml of the repository (tracked or new), so a new pipeline is never left out."""
    import subprocess

    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    assert sorted(f for f in files if Path(f).name == "dvc.yaml") == sorted(deps.PIPELINES)


def test_stage_modules_follow_one_convention():
    """Root stages are modules of stages/, a research pipeline's are modules of its own stages/ package."""
    for pipeline in deps.PIPELINES:
        package = "stages" if pipeline == "dvc.yaml" else Path(pipeline).parent.as_posix().replace("/", ".") + ".stages"
        for name, stage in deps.stages(REPO / pipeline).items():
            assert deps.stage_module(stage["cmd"]).rsplit(".", 1)[0] == package, (pipeline, name)


def test_a_cmd_outside_the_convention_is_refused():
    """A stage that runs a script by path instead of `python -m` is refused with the rule's name."""
    with pytest.raises(ValueError, match="one stage convention"):
        deps.code_deps("python ../stages/q_train.py --run base")


def test_closure_sees_lazy_imports(tmp_path):
    """An import inside a function body is part of the closure."""
    script = tmp_path / "s.py"
    script.write_text("def f():\n    from saelab.data.lm import load_lm\n")
    assert REPO / "src/saelab/data/lm.py" in deps.closure(script)


def test_fix_restores_a_drifted_list(tmp_path):
    """--fix rewrites a stage whose code deps lost an entry and gained a stale one, and leaves the rest alone."""
    text = (REPO / "dvc.yaml").read_text()
    drifted = text.replace("      - ${lib}/data/text.py\n", "      - ${lib}/gone.py\n", 1)
    assert drifted != text
    path = tmp_path / "dvc.yaml"
    path.write_text(drifted)
    assert deps.fix(path) and path.read_text() == text


def test_stages_before_train_import_no_architecture():
    """text, lm, tokens and activations do not depend on saelab/saes/: an architecture change reruns from train on."""
    for name in ("text", "lm", "tokens", "activations"):
        assert not [d for d in _code_deps(STAGES[name]) if "/saes/" in d], name


def test_training_params_are_per_key_without_cadence():
    """train depends on every sae key that changes the SAE (every registered architecture's section included),
    in the order saelab.deps writes them, and on none of the logging/checkpoint cadence."""
    params = [p for p in STAGES["train"]["params"] if str(p).startswith("sae.")]
    assert params == deps.train_params()
    assert [p for p in STAGES["train_site"]["params"] if str(p).startswith("sae.")] == params  # every further site
    assert {"sae.topk", "sae.jumprelu", "sae.l1_coeff"} <= set(params)
    assert not {"sae", "sae.log_every", "sae.checkpoint_every", "sae.seed"} & set(params)
    assert {"log_every", "checkpoint_every"} <= set(CADENCE_KEYS)


def test_fix_adds_a_new_architecture_section_to_train(tmp_path):
    """A newly registered architecture's section reaches train's params through `saelab.deps --fix`."""
    from saelab import registry
    from saelab.saes.base import SAE

    class Extra(SAE):
        architecture = "extra_for_deps"
        Params = type(registry.get("topk").Params)("ExtraParams", (registry.get("topk").Params,), {})
        COMMON_PARAMS = ()
        KNOB = ("extra_for_deps", "k")

    registry.register(Extra)
    try:
        path = tmp_path / "dvc.yaml"
        path.write_text((REPO / "dvc.yaml").read_text())
        deps.fix(path)
        for stage in ("train", "train_site"):
            assert "sae.extra_for_deps" in yaml.safe_load(path.read_text())["stages"][stage]["params"], stage
    finally:
        del registry.REGISTRY["extra_for_deps"]
