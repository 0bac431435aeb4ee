"""The docs: the site builds with no broken link or page, and the README is a landing page that links into it."""

import os
import re
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
