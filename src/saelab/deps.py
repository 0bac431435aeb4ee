"""The code a stage runs, found from its source: what each dvc.yaml must list as the stage's deps.

Every stage of every pipeline follows one convention: its ``cmd`` runs ``python -m <module>``, a
module of ``stages`` (the root pipeline) or of ``research.<pipeline>.stages``, and its deps list that
module's file and the files of every ``saelab`` and ``research`` module it imports, directly or
through other modules (lazy imports inside functions included), as ``${lib}/...`` and
``${research}/...`` (the two vars each dvc.yaml defines). ``tests/test_dvc_deps.py`` fails when a
list drifts; this module prints the expected lists, or rewrites them in place::

    python -m saelab.deps            # every pipeline: stage, module, expected code deps
    python -m saelab.deps --fix      # rewrite the code deps of every stage in every dvc.yaml
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]  # the repository: src/saelab/deps.py -> ../../
PACKAGES = {"saelab": ROOT / "src", "research": ROOT, "stages": ROOT}
PIPELINES = ("dvc.yaml", "research/questions/dvc.yaml", "research/synthetic/dvc.yaml")
CMD_MODULE = re.compile(r"python -m ([\w.]+)")
CODE_DEP = re.compile(r"^\s*- (\$\{(lib|research)\}/|stages/\w+\.py\s*$)")


def module_file(name: str) -> Path | None:
    """The file of module ``name`` of one of our packages, or None (third-party, or not a module)."""
    top = name.split(".")[0]
    if top not in PACKAGES:
        return None
    base = PACKAGES[top].joinpath(*name.split("."))
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.exists():
            return cand
    return None


def imports(path: Path) -> set[str]:
    """Every module of our packages named by an import statement anywhere in ``path``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] in PACKAGES}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if module_file(f"{node.module}.{a.name}")}
    # importing a.b.c runs the __init__ of a and a.b as well
    return found | {".".join(m.split(".")[:i]) for m in found for i in range(1, m.count(".") + 1)}


def closure(script: Path) -> set[Path]:
    """Files of every saelab and research module that ``script`` imports, directly or transitively."""
    todo, seen = list(imports(script)), set()
    while todo:
        f = module_file(todo.pop())
        if f is not None and f not in seen and f != script:
            seen.add(f)
            todo += imports(f)
    return {f for f in seen if f.parts[len(ROOT.parts)] != "stages"}


def stage_module(cmd: str) -> str:
    """The module a stage's ``cmd`` runs; a cmd that does not follow the convention is refused."""
    m = CMD_MODULE.search(" ".join(cmd.split()))
    if m is None:
        raise ValueError(f"cmd {cmd!r} does not run `python -m <module>` (saelab.deps: one stage convention)")
    return m.group(1)


def code_deps(cmd: str) -> list[str]:
    """The code deps a stage with ``cmd`` must list, as written in dvc.yaml: its own module's file first
    (``stages/<name>.py`` or ``${research}/<pipeline>/stages/<name>.py``), then its closure sorted."""
    script = module_file(stage_module(cmd))
    if script is None:
        raise ValueError(f"cmd {cmd!r}: module {stage_module(cmd)} not found in stages/ or research/")
    return [_written(script)] + sorted(_written(f) for f in closure(script))


def _written(f: Path) -> str:
    rel = f.relative_to(ROOT).as_posix()
    if rel.startswith("src/saelab/"):
        return "${lib}/" + rel.removeprefix("src/saelab/")
    if rel.startswith("research/"):
        return "${research}/" + rel.removeprefix("research/")
    return rel


def stages(dvc_yaml: Path) -> dict[str, dict]:
    """Stage name -> its definition (the ``do`` body of foreach stages)."""
    raw = yaml.safe_load(dvc_yaml.read_text())["stages"]
    return {name: st.get("do", st) for name, st in raw.items()}


CADENCE = ("seed", "log_every", "checkpoint_every")  # sae keys that change no SAE (seeds come from `seeds`)


def train_params() -> list[str]:
    """The ``sae`` keys the root train stage depends on: every SAEConfig key but the cadence, then every
    registered architecture's section (dvc.yaml cannot pick one by ``sae.architecture``), in that order."""
    import saelab.saes  # noqa: F401  (registers the built-in architectures)
    from saelab import registry
    from saelab.config import SAEConfig

    keys = [f"sae.{k}" for k in SAEConfig.model_fields if k not in CADENCE]
    return keys + [f"sae.{name}" for name in registry.sections()]


SAE_KEYS_NOTE = "  # each architecture's section (all of them: dvc.yaml cannot pick by architecture)"


def _first_section() -> str:
    from saelab import registry

    return f"sae.{next(iter(registry.sections()))}"


TRAIN_STAGES = ("train", "train_site", "train_transcoder")  # the root pipeline's SAE-training stages


def _fix_train_params(text: str) -> str:
    """The root train stages' ``sae.*`` param lines rewritten to :func:`train_params` (other lines kept)."""
    lines, out, in_train, written = text.splitlines(keepends=True), [], False, False
    for line in lines:
        if line.startswith("  ") and not line.startswith("   "):
            in_train, written = line.strip().rstrip(":") in TRAIN_STAGES, False
        if in_train and line.lstrip().startswith("- sae.") and line.startswith("      - "):
            if not written:
                keys, first_section = train_params(), _first_section()
                out += [f"      - {k}{SAE_KEYS_NOTE if k == first_section else ''}\n" for k in keys]
                written = True
            continue
        out.append(line)
    return "".join(out)


def fix(dvc_yaml: Path) -> bool:
    """Rewrite every stage's code deps in ``dvc_yaml`` to its closure (comments and order elsewhere kept)."""
    text = dvc_yaml.read_text()
    lines, out, changed = text.splitlines(keepends=True), [], False
    want = {name: code_deps(st["cmd"]) for name, st in stages(dvc_yaml).items()}
    current = None
    for line in lines:
        m = re.match(r"^  (\w+):\s*$", line)
        if m and m.group(1) in want:
            current, written = m.group(1), False
        if current and CODE_DEP.match(line):
            if not written:
                indent = line[: line.index("-")]
                out += [f"{indent}- {d}\n" for d in want[current]]
                written = True
            continue
        out.append(line)
    new = "".join(out)
    train = stages(dvc_yaml).get("train")
    if train is not None and stage_module(train["cmd"]) == "stages.train":  # the root pipeline's SAE stage
        new = _fix_train_params(new)
    if new != text:
        dvc_yaml.write_text(new)
        changed = True
    return changed


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fix", action="store_true", help="rewrite the code deps of every dvc.yaml in place")
    args = p.parse_args(argv)
    for rel in PIPELINES:
        path = ROOT / rel
        if args.fix:
            print(rel, "rewritten" if fix(path) else "up to date")
            continue
        for name, st in stages(path).items():
            print(f"{rel} {name} ({stage_module(st['cmd'])}):", *code_deps(st["cmd"]))


if __name__ == "__main__":
    sys.exit(main())
