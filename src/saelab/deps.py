"""The library modules a stage script imports, found from its source: what dvc.yaml must list.

``tests/test_dvc_deps.py`` compares this closure with each stage's ``deps`` in dvc.yaml, so
an import added anywhere (lazy imports inside functions included) fails the suite until the
stage depends on the module, and a stale entry fails it too. Print the expected lists with::

    python -m saelab.deps
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1]  # src/


def _module_file(name: str) -> Path | None:
    parts = name.split(".")
    base = SRC.joinpath(*parts)
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.exists():
            return cand
    return None


def _imports(path: Path) -> set[str]:
    """Every ``saelab`` module named by an import statement anywhere in ``path``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "saelab"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "saelab":
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if _module_file(f"{node.module}.{a.name}")}
    # importing a.b.c runs the __init__ of a and a.b as well
    return found | {".".join(m.split(".")[:i]) for m in found for i in range(1, m.count(".") + 1)}


def closure(script: Path) -> set[Path]:
    """Files of every saelab module that ``script`` imports, directly or through other modules."""
    todo, seen = list(_imports(script)), set()
    while todo:
        f = _module_file(todo.pop())
        if f is not None and f not in seen:
            seen.add(f)
            todo += _imports(f)
    return seen


def main() -> None:
    root = SRC.parent
    for script in sorted((root / "stages").glob("*.py")):
        if script.name != "__init__.py":
            print(script.stem, sorted(str(p.relative_to(root)) for p in closure(script)))


if __name__ == "__main__":
    sys.exit(main())
