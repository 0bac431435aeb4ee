"""The HTML feature browser: escaping, content, and a real render in headless Chromium."""

import html
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from saelab.analysis.browser import build
from saelab.analysis.run import Inputs, pass_analyses, weight_analyses, write_figures, write_tables
from saelab.config import AnalysisConfig, EvaluateConfig
from saelab.data.lm import load_lm
from saelab.eval.evaluate import EvalSample
from saelab.saes.base import SAE

REPO = Path(__file__).resolve().parents[1]
EVIL = "<script>window.pwned=1</script>&\"'"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def analysis(tiny_lm, tmp_path_factory):
    """The full analysis of a small random SAE on the tiny LM, written like the stage writes it."""
    path, rows = tiny_lm
    lm = load_lm(path)
    sae = SAE(64, 256, seed=0)
    with torch.no_grad():
        sae.b_enc[:128] = -100.0  # half the features never fire: an ultra-low cluster
    freq = np.r_[np.zeros(128), np.full(128, 0.05)]
    cfg = AnalysisConfig(topk=(1, 5), n_examples=3, batch_rows=8)
    inp = Inputs(
        lm.model,
        lm.tokenizer,
        sae,
        "blocks.0.mlp.hook_post",
        0,
        freq,
        rows.size,
        rows,
        lm.model.state_dict()["ln_final.weight"],
        1e-4,
        1e-2,
        lm.bos_token_id,
    )
    weights, cols, extra = weight_analyses(inp, cfg)
    passed, res = pass_analyses(
        inp, cfg, EvalSample.draw(len(rows), rows.shape[1], None, EvaluateConfig(ce_max_tokens=128)), "cpu"
    )
    m, pm = weights.as_dict(), passed.as_dict()
    out, figs, csvs = (
        tmp_path_factory.mktemp("analysis"),
        tmp_path_factory.mktemp("figs"),
        tmp_path_factory.mktemp("csv"),
    )
    write_tables(out, inp, cfg, cols, extra, res)
    write_figures(figs, csvs, cols, extra, res, m | pm, cfg)
    return out, figs, m | pm


def test_analysis_metrics_are_complete(analysis):
    """The stage's metrics hold every one of the twelve quantities."""
    _, figs, m = analysis
    for key in (
        "frac_dead",
        "frac_ultra_low",
        "frac_dense",
        "ultra_low_enc_share_cos_above",
        "ultra_low_cofire_max_share",
        "enc_dec_cos_median",
        "neuron_frac_dense",
        "kurtosis_median",
        "null_share_enc_mean",
        "null_share_baseline",
        "de_projection_median_non_ultra_low",
        "frequent_cos_var",
        "logit_skew_median",
        "topk_1_ce_recovered_zero",
        "topk_all_mse",
        "ce_diff_p99",
        "n_features_with_examples",
    ):
        assert key in m, key
    assert m["ultra_low_cofire_max_share"] == 0.0  # the ultra-low half never fires
    assert m["null_share_baseline"] == pytest.approx(1 - 32 / 64)
    assert {p.name for p in figs.glob("*.png")} >= {"topk.png", "kurtosis.png", "de_projection.png", "logit_lens.png"}


def test_every_corpus_string_is_escaped(analysis, tmp_path):
    """A context holding HTML is shown as text, never as markup."""
    out, figs, m = analysis
    shutil.copytree(out, tmp_path / "a")
    ex = pq.read_table(tmp_path / "a/examples.parquet").to_pylist()
    ex[0]["left"], ex[0]["token"] = EVIL, EVIL
    pq.write_table(pa.Table.from_pylist(ex), tmp_path / "a/examples.parquet")
    page = build(tmp_path / "a", [figs], {"analysis": m})
    assert "<script>window.pwned" not in page
    assert "&lt;script&gt;window.pwned=1&lt;/script&gt;&amp;&quot;&#x27;" in page


@pytest.fixture(scope="module")
def chromium():
    """Debian's chromium, installed here when missing (root + apt); skipped with the reason otherwise."""
    exe = shutil.which("chromium")
    if exe is None and shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        try:
            subprocess.run(
                "apt-get update -qq && apt-get install -y -qq chromium",
                shell=True,
                env=env,
                capture_output=True,
                timeout=900,
                check=True,
            )
        except (subprocess.SubprocessError, OSError) as err:
            pytest.skip(f"chromium is not installed and `apt-get install chromium` failed: {err}")
        exe = shutil.which("chromium")
    if exe is None:
        pytest.skip("chromium is not installed and cannot be installed here (needs root and apt-get)")
    return exe


def test_page_renders_in_headless_chromium(analysis, chromium, tmp_path):
    """In a real browser every figure decodes and a feature's contexts are shown; a screenshot is saved."""
    out, figs, m = analysis
    page = tmp_path / "index.html"
    page.write_text(build(out, [figs], {"analysis": m}))
    common = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(
        [*common, "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    total = re.search(r'data-images-total="(\d+)"', dom)
    loaded = re.search(r'data-images-loaded="(\d+)"', dom)
    assert total and loaded and int(total.group(1)) >= 6 and loaded.group(1) == total.group(1)
    first = pq.read_table(out / "examples.parquet").to_pylist()[0]
    assert f'id="f{first["feature"]}"' in dom and "<mark>" in dom
    shot = tmp_path / "browser.png"
    subprocess.run(
        [*common, "--window-size=1280,1600", f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120
    )
    assert shot.exists() and shot.stat().st_size > 10_000
    keep = os.environ.get("SAELAB_SCREENSHOT_DIR")
    if keep:
        shutil.copy(shot, keep)


def test_control_characters_are_rendered_visibly():
    """NUL, ESC, DEL and C1 controls from the corpus never reach the HTML raw; newline and tab show as arrows."""
    from saelab.analysis.browser import context_html

    html = context_html("a\x00b\x1b[31m", "\x7f", "\x85\n\t<")
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in html)
    assert "␀" in html and "␛" in html and "␡" in html and "\\x85" in html and "⏎→&lt;" in html


def _anchors(md: str) -> set[str]:
    """Anchors of a Markdown file's headings, as mkdocs's toc (and GitHub) make them."""
    import re

    out = set()
    for line in md.splitlines():
        if line.startswith("#"):
            text = line.lstrip("#").strip().lower()
            out.add(re.sub(r"\s+", "-", re.sub(r"[^\w\s-]", "", text)).strip("-"))
    return out


def test_neuron_basis_class_is_never_shown_unlabelled():
    """The header names the decoder's neuron-basis class as such: no bare '· dense' beside the frequency."""
    from saelab.analysis.browser import feature_header

    for cls in ("dense", "1-sparse", "10-ish"):
        f = {"frequency": 7.619e-06, "enc_dec_cos": 0.5, "kurtosis": 3.0, "fve_top_1": 0.1, "sparsity_class": cls}
        html = feature_header(f, 1_048_576)
        assert f"· {cls}" not in html and f"neuron-basis class of W_dec</a>: {cls}" in html
        assert "8 of 1,048,576 tokens" in html  # the frequency says how many tokens it stands for


def test_every_label_links_to_a_definition_that_exists(analysis, tmp_path):
    """Every field label on the page links to docs/metrics.md at an anchor its headings define."""
    import re

    from saelab.analysis.browser import DOCS, FIELDS

    page = build(analysis[0], [analysis[1]], {"analysis": analysis[2]}, generations=_generations())
    anchors = _anchors((REPO / "docs/metrics.md").read_text())
    linked = set(re.findall(re.escape(DOCS) + r"#([\w-]+)", page))
    assert linked and linked <= anchors, linked - anchors
    assert {a for _, a in FIELDS.values()} <= anchors
    for name, _ in FIELDS.values():
        assert name in page, name


def test_a_page_elsewhere_links_the_docs_from_where_it_is(analysis, tmp_path):
    """A site's page (reports/sites/<hook>.html) links docs/metrics.md two folders up, every link of it; the
    worst-token and co-firing sections and the metrics summary are linked too."""
    import re

    from saelab.analysis.browser import DOCS

    root = build(analysis[0], [analysis[1]], {"analysis": analysis[2]}, generations=_generations())
    site = build(analysis[0], [analysis[1]], {"analysis": analysis[2]}, generations=_generations(),
                 docs="../../docs/metrics.md")  # fmt: skip
    links = re.findall(r"""href=["']([^"'#]*metrics\.md)""", site)
    assert links and set(links) == {"../../docs/metrics.md"}
    assert len(links) == len(re.findall(r"""href=["']([^"'#]*metrics\.md)""", root))
    assert site == root.replace(DOCS, "../../docs/metrics.md")
    for anchor in ("worst-tokens", "co-firing-contexts"):
        assert f'"{DOCS}#{anchor}"' in root
    # the sortable table's headers link their definition with a '?' that does not take the sorting click
    heads = re.findall(r"<th onclick=\"sortTable\(this\)\">(.*?)</th>", root)
    assert len(heads) == 7 and all('onclick="event.stopPropagation()"' in h for h in heads[1:])


def _generations(first: int | None = 1) -> dict:
    """A splice stage's generations.json of one prompt whose continuations part at token ``first`` (0, 1 or
    None: the same continuation)."""
    clean = ["a", EVIL, "c"]
    spliced = {0: ["", EVIL, "c"], 1: ["a", "X", "Y"], None: clean}[first]
    mode = {"first_divergence": first, "clean": "".join(clean), "spliced": "".join(spliced),
            "clean_pieces": clean, "spliced_pieces": spliced}  # fmt: skip
    summary = {"n_prompts": 1, "prompt_tokens": 4, "new_tokens": 3,
               "greedy_diverged_share": 0.0 if first is None else 1.0, "greedy_first_divergence_median": first,
               "sampled_diverged_share": None,
               "sampled_first_divergence_median": None}  # fmt: skip
    return {"summary": summary, "prompts": [{"row": 7, "prompt": "p\n" + EVIL, "greedy": mode, "sampled": mode}]}


def test_continuations_mark_where_the_spliced_model_parts_and_escape_every_token():
    """The first token where the clean and spliced continuations differ is marked, the later ones dimmed, the
    shared ones plain; tokens and prompts are escaped; an older file without pieces shows its text; none: no
    section."""
    from saelab.analysis.browser import generations_section

    html_ = generations_section(_generations(1), {"all": {"argmax_changed": 0.125}})
    assert "<script>" not in html_ and "&lt;script&gt;" in html_ and "⏎" in html_  # the prompt's newline shown
    evil = html.escape(EVIL)
    # shared token plain, the first parting token marked, the later ones dimmed: on both sides
    assert '<span class="ctx">a<span class="part">X</span><span class="after">Y</span></span>' in html_
    assert f'<span class="ctx">a<span class="part">{evil}</span><span class="after">c</span></span>' in html_
    assert "100.0% of prompts part, first at new token 1 (median" in html_
    assert "12.5% of the eval predictions" in html_ and "sampled: n/a" in html_ and "n/a of prompts" not in html_
    at_0 = generations_section(_generations(0))  # the very first new token differs, and it decodes to ""
    assert '<span class="ctx"><span class="part">a</span><span class="after">' in at_0
    assert '<span class="ctx"><span class="part"><span class="empty"' in at_0 and "∅" in at_0
    assert "<td>0</td></tr>" in at_0 and "100.0% of prompts part, first at new token 0 (median" in at_0
    same = generations_section(_generations(None))
    assert 'class="part"' not in same and 'class="after"' not in same and "0.0% of prompts part, none part" in same
    assert f'<span class="ctx">a{evil}c</span>' in same
    old = _generations(1)
    for mode in ("greedy", "sampled"):
        old["prompts"][0][mode] = {k: v for k, v in old["prompts"][0][mode].items() if not k.endswith("_pieces")}
    old_html = generations_section(old)
    assert 'class="part"' not in old_html and "aXY" in old_html
    assert "<script>" not in old_html and f"a{evil}c" in old_html
    assert generations_section(None) == ""
    assert "n_prompts is 0" in generations_section({"summary": {"n_prompts": 0}, "prompts": []})
