"""The layout holds: no import cycle, the library never imports research, no private name crosses a module."""

import ast
import re
from pathlib import Path

from saelab import deps

REPO = Path(__file__).resolve().parents[1]
TREES = ("src/saelab", "research", "stages", "benchmarks", "tests")


def _modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of our packages (saelab, research, stages)."""
    out = {}
    for tree in ("src/saelab", "research", "stages"):
        for f in (REPO / tree).rglob("*.py"):
            parts = f.relative_to(REPO / ("src" if tree.startswith("src") else "")).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def _edges(f: Path, known: set[str]) -> set[str]:
    """Our modules that ``f`` names in an import statement (anywhere in the file)."""
    found = set()
    for node in ast.walk(ast.parse(f.read_text(), str(f))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module in known:
            subs = {f"{node.module}.{a.name}" for a in node.names} & known
            found |= subs or {node.module}
            found |= {node.module} if len(subs) < len(node.names) else set()
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a list of modules, or None."""
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                return stack[stack.index(n) :] + [n]
            if n not in state and (c := visit(n)):
                return c
        state[m] = "done"
        stack.pop()
        return None

    for m in sorted(graph):
        if m not in state and (c := visit(m)):
            return c
    return None


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _edges(f, set(mods)) - {m} for m, f in mods.items()}


def test_no_import_cycle():
    """The import graph of saelab, research and stages (lazy imports included) has no cycle."""
    assert _cycle(_graph()) is None, _cycle(_graph())


def test_cycle_finder_finds_a_cycle():
    """The check above can fail: a graph with a -> b -> a is reported."""
    assert _cycle({"a": {"b"}, "b": {"a"}, "c": set()}) == ["a", "b", "a"]


def test_library_never_imports_research_or_stages():
    """No module of saelab imports research or stages, directly or lazily."""
    for m, targets in _graph().items():
        if m.startswith("saelab"):
            assert not {t for t in targets if t.split(".")[0] in ("research", "stages")}, m


def _private_imports(f: Path) -> list[str]:
    bad = []
    for node in ast.walk(ast.parse(f.read_text(), str(f))):
        ours = (*deps.PACKAGES, "tests", "benchmarks")
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ours:
            bad += [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    return bad


def test_no_private_name_crosses_a_module():
    """No file imports a _private name from another module of ours (src, research, stages, benchmarks, tests)."""
    files = [f for tree in TREES for f in (REPO / tree).rglob("*.py")]
    bad = {str(f.relative_to(REPO)): p for f in files if (p := _private_imports(f))}
    assert not bad


def test_private_import_check_can_fail(tmp_path):
    """The check above sees a private name imported across modules."""
    f = tmp_path / "m.py"
    f.write_text("from saelab.section import _hidden\n")
    assert _private_imports(f) == ["saelab.section._hidden"]


# "seed" means a random seed only; the replicated work is "the reference" (docs/contributing.md, "Rules").
# These phrases use "seed" for the replicated post, its code or the discussion texts the project started from.
SEED_AS_REFERENCE = re.compile(
    r"the\s+seed's\s+(?:setting|replication|run|runs|code|post|paper|mechanisms|numbers|claims?|figures?)\b"
    r"|differs?\s+from\s+the\s+seed\b|\b(?:in|from)\s+the\s+seeds\s+\(|--shape\s+seed\b"
    r"|\bseed\s+(?:post|paper|code|replication|texts?|discussion)s?\b",
    re.IGNORECASE,
)
TEXT_TREES = ("README.md", "docs", "findings", "research", "src/saelab", "stages", "benchmarks")


def _seed_as_reference(text: str) -> list[str]:
    return [m.group(0) for m in SEED_AS_REFERENCE.finditer(text)]


def test_seed_means_a_random_seed_only():
    """No doc, finding or code names the replicated work (or its source texts) "the seed"."""
    files = [p for t in TEXT_TREES for p in ([REPO / t] if t.endswith(".md") else (REPO / t).rglob("*"))]
    files = [f for f in files if f.suffix in (".md", ".py", ".yaml") and f.is_file()]
    bad = {str(f.relative_to(REPO)): hits for f in files if (hits := _seed_as_reference(f.read_text()))}
    assert not bad


def test_seed_vocabulary_check_can_fail():
    """The check above sees each kind of misuse, and leaves random seeds alone."""
    assert _seed_as_reference("How it differs from the seed: gelu-1l") == ["differs from the seed"]
    assert _seed_as_reference("the seed's\nreplication used") == ["the seed's\nreplication"]
    assert _seed_as_reference("step_roofline.py --shape seed --dtype bf16") == ["--shape seed"]
    assert _seed_as_reference("seed 0 and seed 1; the seed's data order; per-seed runs") == []
