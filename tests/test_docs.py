"""The docs: the site builds with no broken link or page, and the README is a landing page that links into it."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_docs_site_builds_strictly(tmp_path):
    """`mkdocs build --strict` passes: every page is in the nav and every link and anchor resolves."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (tmp_path / "site/metrics/index.html").exists()


def test_a_page_left_out_of_the_nav_fails_the_build(tmp_path):
    """The strict build refuses a docs page that the nav does not list (mkdocs.yml validation)."""
    shutil.copytree(REPO / "docs", tmp_path / "docs")
    shutil.copy(REPO / "mkdocs.yml", tmp_path / "mkdocs.yml")
    (tmp_path / "docs/orphan.md").write_text("# Orphan\n")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")]
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env)
    assert res.returncode != 0 and "orphan.md" in res.stdout + res.stderr


def test_readme_is_a_landing_page_whose_links_exist():
    """README.md is at most 12 KB and every docs page it links to exists (anchors included)."""
    readme = (REPO / "README.md").read_text()
    assert len(readme.encode()) <= 12 * 1024
    links = re.findall(r"\]\((docs/[\w./-]+?)(?:#([\w-]+))?\)", readme)
    assert len(links) >= 8
    for path, anchor in links:
        page = REPO / path
        assert page.is_file(), path
        if anchor:
            heads = [line.lstrip("#").strip() for line in page.read_text().splitlines() if line.startswith("#")]
            slugs = {re.sub(r"\s+", "-", re.sub(r"[^\w\s-]", "", h.lower())).strip("-") for h in heads}
            assert anchor in slugs, (path, anchor)


# The headline table of README.md and docs/results.md: each row's label and the committed figures it must quote,
# as (file, key, format). A figure that moved in metrics/ and not in the table fails here.
HEADLINE = {
    "CE loss recovered (zero ablation)": [
        ("metrics/evaluate.json", "ce_recovered_zero", ".3f"),
        ("metrics/evaluate_detail.json", "ce_clean", ".3f"),
        ("metrics/evaluate_detail.json", "ce_sae", ".3f"),
        ("metrics/evaluate_detail.json", "ce_zero_ablation", ".3f"),
    ],
    "CE loss recovered (mean ablation)": [
        ("metrics/evaluate.json", "ce_recovered_mean", ".3f"),
        ("metrics/evaluate_detail.json", "ce_mean_ablation", ".3f"),
    ],
    "L0": [("metrics/evaluate.json", "l0", ".1f")],
    "explained variance (centred)": [("metrics/evaluate.json", "explained_variance", ".3f")],
    "MSE (Σ over dims, mean over tokens)": [("metrics/evaluate.json", "mse", ".1f")],
    "L2 ratio": [("metrics/evaluate.json", "l2_ratio", ".3f")],
    "dead / ultra-low (< 1e-4) / dense (> 1e-2)": [
        ("metrics/evaluate.json", "frac_dead", ".1%"),
        ("metrics/evaluate.json", "frac_ultra_low", ".1%"),
        ("metrics/evaluate.json", "frac_dense", ".1%"),
    ],
}


def _table_rows(text: str) -> dict[str, str]:
    """First cell (bold and code marks dropped) -> the rest of the row, for every Markdown table row (the first
    row of a label wins: the headline table comes first)."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            cells = line.strip("|").split("|", 1)
            rows.setdefault(cells[0].strip().replace("*", ""), cells[1] if len(cells) > 1 else "")  # first
    return rows


def _quote_misses(text: str, root: Path) -> list[str]:
    """The headline figures ``text``'s table does not quote at their format (a row missing counts as a miss)."""
    rows, misses = _table_rows(text), []
    for label, figures in HEADLINE.items():
        row = next((v for k, v in rows.items() if k.startswith(label)), None)
        for file, key, fmt in figures:
            want = format(json.loads((root / file).read_text())[key], fmt)
            quoted = row is not None and re.search(rf"(?<![\d.]){re.escape(want)}(?![\d])", row.replace("**", ""))
            if not quoted:
                misses.append(f"{label}: {file}:{key} = {want}")
    return misses


def test_headline_tables_quote_the_committed_metrics():
    """README.md's and docs/results.md's results tables quote metrics/evaluate*.json at their printed precision."""
    for page in ("README.md", "docs/results.md"):
        assert not _quote_misses((REPO / page).read_text(), REPO), page


def test_headline_check_can_fail(tmp_path):
    """A figure that moved in metrics/ but not in the table is caught, and so is a missing row."""
    (tmp_path / "metrics").mkdir()
    for name in ("evaluate.json", "evaluate_detail.json"):
        shutil.copy(REPO / "metrics" / name, tmp_path / "metrics" / name)
    readme = (REPO / "README.md").read_text()
    assert not _quote_misses(readme, tmp_path)
    l0 = format(json.loads((tmp_path / "metrics/evaluate.json").read_text())["l0"], ".1f")
    inside = readme.replace(f"| **{l0}** |", f"| **1{l0}** |")  # the figure only inside a larger number
    assert inside != readme and any(m.startswith("L0") for m in _quote_misses(inside, tmp_path))
    stale_first = "| L0 | **0.0** |\n\n" + readme  # the first row of a label is the one read
    assert any(m.startswith("L0") for m in _quote_misses(stale_first, tmp_path))
    moved = json.loads((tmp_path / "metrics/evaluate.json").read_text())
    moved["l0"] += 0.2
    (tmp_path / "metrics/evaluate.json").write_text(json.dumps(moved))
    assert _quote_misses(readme, tmp_path) == [f"L0: metrics/evaluate.json:l0 = {moved['l0']:.1f}"]
    no_l2 = "\n".join(line for line in readme.splitlines() if not line.startswith("| L2 ratio"))
    assert any(m.startswith("L2 ratio") for m in _quote_misses(no_l2, tmp_path))
