"""Question 11 of the reference post: width and feature splitting.

Its computation (splitting and ``answer``), registered by name; the answer stage runs
every registered question in order and writes ``results/answers.json`` (docs/questions.md, question 11;
verdicts in research/questions/FINDINGS.md)."""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field

from research.questions.answers.base import Context, QuestionParams, question
from saelab.eval.compare import decoder_cosines


@torch.no_grad()
def splitting(
    narrow, wide, ev, split_cos: float, live_narrow: np.ndarray | None = None, live_wide: np.ndarray | None = None
) -> tuple[dict, list[dict]]:
    """Each live wide feature is a child of its best-matching live narrow feature (decoder cos) when
    that cos is >= ``split_cos`` (live: the masks, e.g. not ultra-low; all when None). For narrow
    features with >= 2 children, on the eval sample: coverage (share of the narrow feature's firings
    where some child fires), exclusivity (share of those where exactly one child fires; undefined
    without coverage) and spill (share of the children's firings where the narrow feature is
    silent). A partition is coverage and exclusivity high, spill low."""
    cos = decoder_cosines(wide.W_dec.detach(), narrow.W_dec.detach())  # (d_wide, d_narrow)
    if live_narrow is not None:
        cos[:, ~torch.from_numpy(live_narrow)] = -2.0
    best, parent = cos.max(1)
    child = best >= split_cos
    if live_wide is not None:
        child &= torch.from_numpy(live_wide)
    n_children = torch.bincount(parent[child], minlength=narrow.d_sae)
    kids = child.nonzero().squeeze(-1)
    fn_n = inter = union = one = torch.zeros(narrow.d_sae, dtype=torch.float64)
    for x in ev.activations():
        fn = narrow.encode(x) > 0
        fw = (wide.encode(x)[:, kids] > 0).float()
        c = torch.zeros(len(x), narrow.d_sae).index_add_(1, parent[kids], fw)  # children firing per narrow feature
        fn_n = fn_n + fn.sum(0).double()
        inter = inter + (fn & (c > 0)).sum(0).double()
        union = union + (c > 0).sum(0).double()
        one = one + (fn & (c == 1)).sum(0).double()
    split = (n_children >= 2) & (fn_n > 0)
    cov, spill = inter / fn_n.clamp_min(1), 1 - inter / union.clamp_min(1)
    excl = torch.where(inter > 0, one / inter.clamp_min(1), torch.full_like(one, float("nan")))
    pool = torch.from_numpy(live_narrow) if live_narrow is not None else torch.ones(narrow.d_sae, dtype=torch.bool)
    counts = {f"share_narrow_with_{k}_children": float((n_children[pool] == k).float().mean()) for k in (0, 1, 2)}
    counts["share_narrow_with_3plus_children"] = float((n_children[pool] >= 3).float().mean())
    counts["n_narrow_live"] = int(pool.sum())
    m = counts | {"n_split": int(split.sum()), "share_wide_children": float(child.float().mean())}
    if split.any():
        part = split & (cov >= 0.8) & (excl >= 0.8) & (spill <= 0.2)
        m |= {
            "split_coverage_median": float(cov[split].median()),
            "split_exclusivity_median": float(excl[split].nanmedian()) if (inter[split] > 0).any() else None,
            "split_spill_median": float(spill[split].median()),
            "share_split_partitions": float(part.sum() / split.sum()),
        }
    rows = [
        {
            "narrow": int(i),
            "n_children": int(n_children[i]),
            "fires": int(fn_n[i]),
            "coverage": float(cov[i]),
            "exclusivity": float(excl[i]),
            "spill": float(spill[i]),
            "children": " ".join(str(int(j)) for j in (parent == i).logical_and(child).nonzero().squeeze(-1)),
        }
        for i in split.nonzero().squeeze(-1).tolist()
    ]
    return m, rows


class Params(QuestionParams):
    RUN_FIELDS = ("widths",)
    widths: tuple[str, ...] = ("width-1", "width-2", "base", "width-8")
    """Runs of growing width, narrowest first."""
    split_cos: float = Field(0.7, gt=0, le=1)
    """A wide feature is a child of its best-matching narrow feature at decoder cos >= this."""


@question("q11_width", Params)
def answer(c: Context, p: Params) -> None:
    """Question 11: width and feature splitting (docs/questions.md, question 11)."""
    thr = c.thr
    ev = c.ev
    saes = c.saes
    scores = c.scores
    freq = c.freq
    runs = c.runs
    base = c.base
    res = c.res
    figs = c.figs
    tables = c.tables
    w = list(p.widths)
    res["q11_width"] = {"runs": {n: runs[n] | {"ce_gap": scores[n]["ce_sae"] - scores[n]["ce_clean"]} for n in w}}
    for narrow, wide in zip(w, w[1:]):
        m, split_rows = splitting(
            saes[narrow], saes[wide], ev(base), p.split_cos, freq[narrow] >= thr, freq[wide] >= thr
        )
        res["q11_width"][f"{narrow}_to_{wide}"] = m
        tables[f"q11_splits_{narrow}_to_{wide}"] = split_rows
    figs["q11_ce_gap"] = [
        {
            "CE gap": ([runs[n]["n_features"] for n in w], [res["q11_width"]["runs"][n]["ce_gap"] for n in w]),
            "ultra-low share": ([runs[n]["n_features"] for n in w], [runs[n]["frac_ultra_low"] for n in w]),
        },
        "features",
        "nats / share",
        "CE gap (CE_sae - CE_clean) and ultra-low share by width",
        True,
    ]
