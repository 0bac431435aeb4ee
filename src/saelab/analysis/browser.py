"""A self-contained, offline HTML feature browser (``reports/index.html``).

Figures are inlined as base64 PNG, the feature table sorts and filters with a few
lines of plain JavaScript, and every string that comes from the corpus or the
tokenizer goes through :func:`html.escape` (corpus text is arbitrary).
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
h1,h2{border-bottom:1px solid #ddd}
img{width:540px;margin:4px;border:1px solid #eee;vertical-align:top}
table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ddd;padding:2px 6px}
th{cursor:pointer;background:#f4f4f4}
.ctx{font-family:ui-monospace,monospace;white-space:pre-wrap;font-size:12px}
mark{background:#ffd54f;font-weight:bold}
.feature{border-top:1px solid #ccc;margin-top:1em}
.tok{font-family:ui-monospace,monospace;background:#eef;padding:0 3px;margin:1px;display:inline-block}
#features-wrap{max-height:480px;overflow:auto}
.def{font-size:10px;text-decoration:none}
.part{background:#ef9a9a;font-weight:bold}
.after{color:#999}
.empty{font-style:italic}
"""

JS = """
function sortTable(th){const t=th.closest('table'),i=[...th.parentNode.children].indexOf(th),
 asc=th.dataset.asc!=='1';th.dataset.asc=asc?'1':'0';const b=t.tBodies[0];
 [...b.rows].sort((a,c)=>{const x=a.cells[i].dataset.v??a.cells[i].textContent,
 y=c.cells[i].dataset.v??c.cells[i].textContent;
 const nx=parseFloat(x),ny=parseFloat(y);const r=(isNaN(nx)||isNaN(ny))?x.localeCompare(y):nx-ny;return asc?r:-r})
 .forEach(r=>b.appendChild(r))}
function filterTable(){const q=document.getElementById('q').value.toLowerCase(),
 hide=document.getElementById('hide-ultra').checked;
 for(const r of document.getElementById('features').tBodies[0].rows){
  const ok=r.textContent.toLowerCase().includes(q)&&!(hide&&r.dataset.ultra==='1');r.style.display=ok?'':'none'}}
window.addEventListener('load',()=>{const imgs=[...document.images];
 document.body.dataset.imagesTotal=imgs.length;
 document.body.dataset.imagesLoaded=imgs.filter(i=>i.complete&&i.naturalWidth>0).length});
"""

e = html.escape


def _visible_char(c: str) -> str:
    """Newline and tab as arrows, other C0 controls as their Unicode control pictures (NUL -> ␀,
    ESC -> ␛), DEL as ␡ and C1 controls as ``\\x..``: corpus text never reaches the page raw."""
    o = ord(c)
    if c == "\n":
        return "⏎"
    if c == "\t":
        return "→"
    if o < 0x20:
        return chr(0x2400 + o)
    if o == 0x7F:
        return "␡"
    if 0x80 <= o < 0xA0:
        return f"\\x{o:02x}"
    return c


def _visible(s: str) -> str:
    """Escape, and render line breaks, tabs and control characters visibly, one readable line per context."""
    return e("".join(_visible_char(c) for c in s))


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{e(path.stem)}" title="{e(path.stem)}" src="data:image/png;base64,{data}">'


def context_html(left: str, token: str, right: str) -> str:
    return f'<span class="ctx">{_visible(left)}<mark>{_visible(token)}</mark>{_visible(right)}</span>'


def _metrics_table(title: str, metrics: dict) -> str:
    """One metrics file as a table (science only: timings live in timings/, so the page is identical across reruns)."""
    rows = "".join(
        f"<tr><td>{e(k)}</td><td>{e(f'{v:.4g}' if isinstance(v, float) else str(v))}</td></tr>"
        for k, v in sorted(metrics.items())
    )
    return f"<h3>{e(title)}</h3><table>{rows}</table>"


def _fmt(v) -> str:
    return "" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.4g}"


# Every field the page shows, by what it is, each linked to its definition (docs/metrics.md, "Browser fields"):
# field -> (label, anchor). DOCS is the link from reports/index.html; a page elsewhere passes its own ``docs`` down.
DOCS = "../docs/metrics.md"
FIELDS = {
    "frequency": ("firing frequency", "firing-frequency"),
    "ultra_low": ("ultra-low", "ultra-low"),
    "enc_dec_cos": ("encoder-decoder cosine", "encoder-decoder-cosine"),
    "kurtosis": ("neuron kurtosis of W_dec", "neuron-kurtosis"),
    "fve_top_1": ("top-neuron share of W_dec (fve_top_1)", "top-neuron-share"),
    "sparsity_class": ("neuron-basis class of W_dec", "neuron-basis-class"),
    "top_promoted": ("top promoted tokens (logit lens)", "top-logit-tokens"),
    "top_suppressed": ("top suppressed tokens (logit lens)", "top-logit-tokens"),
    "examples": ("top activations in context", "activation-examples"),
    "continuations": ("continuations, clean and spliced", "continuations"),
    "worst_tokens": ("worst tokens: CE with the reconstruction minus clean", "worst-tokens"),
    "cofire": ("where the most ultra-low features fire together", "co-firing-contexts"),
}


def label(field: str, docs: str = DOCS) -> str:
    """The field's name, linked to its definition in ``docs`` (docs/metrics.md from where the page is written)."""
    name, anchor = FIELDS[field]
    return f'<a href="{docs}#{anchor}" title="definition">{e(name)}</a>'


def th_label(field: str, docs: str = DOCS) -> str:
    """A table header: the field's name, and a link to its definition that does not take the sorting click."""
    name, anchor = FIELDS[field]
    return f'{e(name)} <a class="def" href="{docs}#{anchor}" title="definition" onclick="event.stopPropagation()">?</a>'


def _frequency(v, n_tokens: int | None) -> str:
    """The firing frequency, with the token count it stands for when the sample size is known."""
    if n_tokens is None or v is None or not np.isfinite(v):
        return _fmt(v)
    return f"{_fmt(v)} ({round(v * n_tokens):,} of {n_tokens:,} tokens)"


def feature_table(feats: list[dict], docs: str = DOCS) -> str:
    fields = ("frequency", "ultra_low", "enc_dec_cos", "kurtosis", "fve_top_1", "top_promoted")
    head = ["id", *(th_label(k, docs) for k in fields)]
    body = []
    for f in feats:
        toks = "".join(f'<span class="tok">{_visible(t)}</span>' for t in (f.get("top_promoted") or [])[:5])
        i = f["feature"]
        body.append(
            f'<tr data-ultra="{int(f["ultra_low"])}"><td data-v="{i}"><a href="#f{i}">{i}</a></td>'
            f'<td data-v="{f["frequency"]}">{_fmt(f["frequency"])}</td><td>{"yes" if f["ultra_low"] else ""}</td>'
            f"<td>{_fmt(f['enc_dec_cos'])}</td><td>{_fmt(f['kurtosis'])}</td><td>{_fmt(f['fve_top_1'])}</td>"
            f"<td>{toks}</td></tr>"
        )
    ths = "".join(f'<th onclick="sortTable(this)">{h}</th>' for h in head)  # labels are built HTML
    return (
        '<p><input id="q" placeholder="filter (id, token, ...)" oninput="filterTable()"> '
        '<label><input type="checkbox" id="hide-ultra" onchange="filterTable()"> hide ultra-low</label></p>'
        f'<div id="features-wrap"><table id="features"><thead><tr>{ths}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def feature_header(f: dict, n_tokens: int | None = None, docs: str = DOCS) -> str:
    """One feature's fields, each named by what it is (the neuron-basis class describes W_dec, not firing)."""
    parts = [
        f"{label('frequency', docs)} {_frequency(f['frequency'], n_tokens)}",
        f"{label('enc_dec_cos', docs)} {_fmt(f['enc_dec_cos'])}",
        f"{label('kurtosis', docs)} {_fmt(f['kurtosis'])}",
        f"{label('fve_top_1', docs)} {_fmt(f['fve_top_1'])}",
        f"{label('sparsity_class', docs)}: {e(str(f['sparsity_class']))}",
    ]
    return "<p>" + " · ".join(parts) + "</p>"


def feature_sections(
    feats: list[dict], examples: dict[int, list[dict]], n_tokens: int | None = None, docs: str = DOCS
) -> str:
    out = []
    for f in feats:
        ex = examples.get(f["feature"])
        if not ex:
            continue
        promoted = "".join(f'<span class="tok">{_visible(t)}</span>' for t in f.get("top_promoted") or [])
        suppressed = "".join(f'<span class="tok">{_visible(t)}</span>' for t in f.get("top_suppressed") or [])
        lines = "".join(
            f"<li>{r['activation']:.3g}: {context_html(r['left'], r['token'], r['right'])}</li>" for r in ex
        )
        out.append(
            f'<section class="feature" id="f{f["feature"]}"><h3>Feature {f["feature"]}</h3>'
            f"{feature_header(f, n_tokens, docs)}"
            f"<p>{label('top_promoted', docs)}: {promoted}</p><p>{label('top_suppressed', docs)}: {suppressed}</p>"
            f"<p>{label('examples', docs)}:</p><ol>{lines}</ol></section>"
        )
    return "".join(out)


def _context_list(field: str, table_path: Path, value: str, docs: str = DOCS) -> str:
    """A section of the analysis table's contexts, each with its value, under the field's linked label."""
    head = f"<h2>{label(field, docs)}</h2>"
    if not table_path.exists():
        return head + "<p>(not computed)</p>"
    rows = pq.read_table(table_path).to_pylist()
    return (
        head
        + "<ol>"
        + "".join(f"<li>{r[value]:.3g}: {context_html(r['left'], r['token'], r['right'])}</li>" for r in rows)
        + "</ol>"
    )


def _pieces(g: dict, side: str) -> str:
    """One continuation token by token: what both models generated plain, the first token where they part
    marked, the rest dimmed. A file written before the pieces were kept shows its text unmarked."""
    pieces, first = g.get(f"{side}_pieces"), g["first_divergence"]
    if pieces is None:
        return f'<span class="ctx">{_visible(g[side])}</span>'
    spans = (_visible(t) if first is None or i < first else f'<span class="{"part" if i == first else "after"}">'
             f"{_piece(t)}</span>" for i, t in enumerate(pieces))  # fmt: skip
    return f'<span class="ctx">{"".join(spans)}</span>'


def _piece(t: str) -> str:
    """A marked or dimmed token: one that decodes to nothing shows as ∅, so its mark is never an empty span."""
    return _visible(t) if t else '<span class="empty" title="token decodes to the empty string">∅</span>'


def _share(v) -> str:
    return "n/a" if v is None else f"{v:.1%}"


def generations_section(gens: dict | None, splice: dict | None = None, docs: str = DOCS) -> str:
    """Talking to the spliced model (stage splice, first seed): every prompt's greedy and sampled continuation
    from the clean model beside the one with every SAE and transcoder spliced, where they part marked; and the share of
    eval predictions whose top token the splice changes."""
    if not gens:
        return ""
    if not gens["prompts"]:
        return "<h2>Talking to the spliced model</h2><p>No continuations: splice.n_prompts is 0.</p>"
    s = gens["summary"]
    facts = [f"{s['n_prompts']} prompts of {s['prompt_tokens']} tokens (BOS included), {s['new_tokens']} new each"]
    for mode in ("greedy", "sampled"):
        share, median = s.get(f"{mode}_diverged_share"), s.get(f"{mode}_first_divergence_median")
        where = "none part" if median is None else f"first at new token {_fmt(median)} (median of those that part)"
        facts.append(f"{mode}: n/a" if share is None else f"{mode}: {_share(share)} of prompts part, {where}")
    if splice and "argmax_changed" in splice.get("all", {}):
        facts.append(f"top token changed on {_share(splice['all']['argmax_changed'])} of the eval predictions")
    rows = "".join(
        f"<tr><td>{e(str(r['row']))}</td><td>{mode}</td><td><span class='ctx'>{_visible(r['prompt'])}</span></td>"
        f"<td>{_pieces(r[mode], 'clean')}</td><td>{_pieces(r[mode], 'spliced')}</td>"
        f"<td>{_fmt(r[mode]['first_divergence'])}</td></tr>"
        for r in gens["prompts"]
        for mode in ("greedy", "sampled")
    )
    return (
        f"<h2>Talking to the spliced model</h2><p>{label('continuations', docs)}: "
        + "; ".join(e(f) for f in facts)
        + "</p>"
        "<table id='generations'><thead><tr><th>eval row</th><th>mode</th><th>prompt</th><th>clean model</th>"
        "<th>every SAE and transcoder spliced</th><th>first divergence (0 = the first new token)</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )


def _freq_tokens(metrics: dict[str, dict]) -> int | None:
    """The number of eval tokens the frequencies were measured on (analysis metrics), if given."""
    found = [m["freq_eval_tokens"] for m in metrics.values() if isinstance(m.get("freq_eval_tokens"), int)]
    return found[0] if found else None


def build(
    analysis_dir: Path,
    figure_dirs: list[Path],
    metrics: dict[str, dict],
    title: str = "saelab feature browser",
    generations: dict | None = None,
    splice: dict | None = None,
    docs: str = DOCS,
) -> str:
    """The page. ``docs``: the link to docs/metrics.md from where the page is written (DOCS for reports/)."""
    feats = pq.read_table(analysis_dir / "features.parquet").to_pylist()
    examples: dict[int, list[dict]] = {}
    for r in pq.read_table(analysis_dir / "examples.parquet").to_pylist():
        examples.setdefault(r["feature"], []).append(r)
    figures = "".join(_img(p) for d in figure_dirs for p in sorted(d.glob("*.png")))
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{CSS}</style>"
        f"<script>{JS}</script></head><body><h1>{e(title)}</h1>"
        f"<h2>Metrics</h2><details><summary>all metrics (definitions: <a href='{docs}'>docs/metrics.md</a>)</summary>"
        f"{''.join(_metrics_table(k, v) for k, v in metrics.items())}</details>"
        f"<h2>Figures</h2><div id='figures'>{figures}</div>"
        f"<h2>Features</h2>{feature_table(feats, docs)}"
        f"{_context_list('worst_tokens', analysis_dir / 'worst_tokens.parquet', 'ce_diff', docs)}"
        f"{_context_list('cofire', analysis_dir / 'cofire.parquet', 'share', docs)}"
        f"{generations_section(generations, splice, docs)}"
        f"<h2>Features that fire</h2>{feature_sections(feats, examples, _freq_tokens(metrics), docs)}"
        f"<script type='application/json' id='meta'>{e(json.dumps({'n_features': len(feats)}))}</script>"
        "</body></html>"
    )
    return page
