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
"""

JS = """
function sortTable(th){const t=th.closest('table'),i=[...th.parentNode.children].indexOf(th),
 asc=th.dataset.asc!=='1';th.dataset.asc=asc?'1':'0';const b=t.tBodies[0];
 [...b.rows].sort((a,c)=>{const x=a.cells[i].dataset.v??a.cells[i].textContent,y=c.cells[i].dataset.v??c.cells[i].textContent;
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


def _ctx(left: str, token: str, right: str) -> str:
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


def feature_table(feats: list[dict]) -> str:
    head = ["id", "frequency", "ultra-low", "enc/dec cos", "kurtosis", "fve_top_1", "top logit tokens"]
    body = []
    for f in feats:
        toks = "".join(f'<span class="tok">{_visible(t)}</span>' for t in (f.get("top_promoted") or [])[:5])
        body.append(
            f'<tr data-ultra="{int(f["ultra_low"])}"><td data-v="{f["feature"]}"><a href="#f{f["feature"]}">{f["feature"]}</a></td>'
            f'<td data-v="{f["frequency"]}">{_fmt(f["frequency"])}</td><td>{"yes" if f["ultra_low"] else ""}</td>'
            f"<td>{_fmt(f['enc_dec_cos'])}</td><td>{_fmt(f['kurtosis'])}</td><td>{_fmt(f['fve_top_1'])}</td><td>{toks}</td></tr>"
        )
    ths = "".join(f'<th onclick="sortTable(this)">{e(h)}</th>' for h in head)
    return (
        '<p><input id="q" placeholder="filter (id, token, ...)" oninput="filterTable()"> '
        '<label><input type="checkbox" id="hide-ultra" onchange="filterTable()"> hide ultra-low</label></p>'
        f'<div id="features-wrap"><table id="features"><thead><tr>{ths}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'
    )


def feature_sections(feats: list[dict], examples: dict[int, list[dict]]) -> str:
    out = []
    for f in feats:
        ex = examples.get(f["feature"])
        if not ex:
            continue
        promoted = "".join(f'<span class="tok">{_visible(t)}</span>' for t in f.get("top_promoted") or [])
        suppressed = "".join(f'<span class="tok">{_visible(t)}</span>' for t in f.get("top_suppressed") or [])
        lines = "".join(f"<li>{r['activation']:.3g}: {_ctx(r['left'], r['token'], r['right'])}</li>" for r in ex)
        out.append(
            f'<section class="feature" id="f{f["feature"]}"><h3>Feature {f["feature"]}</h3>'
            f"<p>frequency {_fmt(f['frequency'])} · enc/dec cos {_fmt(f['enc_dec_cos'])} · kurtosis {_fmt(f['kurtosis'])}"
            f" · fve_top_1 {_fmt(f['fve_top_1'])} · {e(str(f['sparsity_class']))}</p>"
            f"<p>promotes: {promoted}</p><p>suppresses: {suppressed}</p><ol>{lines}</ol></section>"
        )
    return "".join(out)


def _context_list(table_path: Path, value: str) -> str:
    if not table_path.exists():
        return "<p>(not computed)</p>"
    rows = pq.read_table(table_path).to_pylist()
    return (
        "<ol>" + "".join(f"<li>{r[value]:.3g}: {_ctx(r['left'], r['token'], r['right'])}</li>" for r in rows) + "</ol>"
    )


def build(
    analysis_dir: Path, figure_dirs: list[Path], metrics: dict[str, dict], title: str = "saelab feature browser"
) -> str:
    feats = pq.read_table(analysis_dir / "features.parquet").to_pylist()
    examples: dict[int, list[dict]] = {}
    for r in pq.read_table(analysis_dir / "examples.parquet").to_pylist():
        examples.setdefault(r["feature"], []).append(r)
    figures = "".join(_img(p) for d in figure_dirs for p in sorted(d.glob("*.png")))
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{CSS}</style>"
        f"<script>{JS}</script></head><body><h1>{e(title)}</h1>"
        f"<h2>Metrics</h2><details><summary>all metrics (definitions: docs/metrics.md)</summary>"
        f"{''.join(_metrics_table(k, v) for k, v in metrics.items())}</details>"
        f"<h2>Figures</h2><div id='figures'>{figures}</div>"
        f"<h2>Features</h2>{feature_table(feats)}"
        f"<h2>Worst tokens (CE with reconstruction minus clean)</h2>{_context_list(analysis_dir / 'worst_tokens.parquet', 'ce_diff')}"
        f"<h2>Where the most ultra-low features fire together</h2>{_context_list(analysis_dir / 'cofire.parquet', 'share')}"
        f"<h2>Features that fire</h2>{feature_sections(feats, examples)}"
        f"<script type='application/json' id='meta'>{e(json.dumps({'n_features': len(feats)}))}</script>"
        "</body></html>"
    )
