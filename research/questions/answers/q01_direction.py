"""Question 1 of the reference post: the shared ultra-low direction: where it comes from.

Its computation (direction_origin, _without, top_projections and ``answer``), registered by name; the answer stage runs
every registered question in order and writes ``results/answers.json`` (docs/questions.md, question 1;
verdicts in research/questions/FINDINGS.md)."""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field

from research.questions.answers.base import Context, QuestionParams, question
from saelab.analysis.contexts import context, token_pieces
from saelab.analysis.weights import (
    null_space_share,
    unit,
)
from saelab.data.hooks import capture
from saelab.eval.compare import cosine, ultra_low_direction
from saelab.io import load_weights


@torch.no_grad()
def direction_origin(
    base,
    freq,
    ev,
    cache_mean: torch.Tensor,
    W_out: torch.Tensor | None,
    grad: dict | None,
    threshold: float,
    n_components: int = 5,
) -> tuple[dict, torch.Tensor]:
    """Cosines of the ultra-low direction u with candidate explanations. Returns (metrics, u)."""
    u = ultra_low_direction(base.W_enc.detach(), freq, threshold)
    if u is None:
        return {"n_ultra_low": 0}, None
    u = unit(u.double())
    d = u.numel()
    gram, total, n = torch.zeros(d, d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64), 0
    pos1, last = [], []
    for x, c in zip(ev.x, ev.covered):
        flat = x.reshape(-1, d)[c.reshape(-1)].double().cpu()
        gram += flat.T @ flat
        total += flat.sum(0)
        n += len(flat)
        pos1.append(x[:, 1].double().cpu())
        last.append(x[:, -1].double().cpu())
    mean = total / n
    top_sv = torch.linalg.eigh(gram / n).eigenvectors.flip(-1)[:, :n_components].T  # uncentred: singular vectors
    top_pc = torch.linalg.eigh(gram / n - torch.outer(mean, mean)).eigenvectors.flip(-1)[:, :n_components].T
    bos = capture(ev.model, ev.tokens[0][:1, :1], ev.hook)[1][0, 0].double().cpu()  # position 0 sees only BOS
    m = {
        "n_ultra_low": int((freq < threshold).sum()),
        "cos_mean_activation_eval": cosine(u, mean),
        "cos_mean_activation_cache": cosine(u, cache_mean),
        "cos_b_dec": cosine(u, base.b_dec.detach()),
        "cos_bos_activation": cosine(u, bos),
        "cos_position_1_mean": cosine(u, torch.cat(pos1).mean(0)),
        "cos_last_position_mean": cosine(u, torch.cat(last).mean(0)),
        "max_abs_cos_top_singular_vectors": float((top_sv @ u).abs().max()),
        "max_abs_cos_top_pcs": float((top_pc @ u).abs().max()),
        "abs_cos_top_singular_vectors": [float(v) for v in (top_sv @ u).abs()],
        "random_abs_cos_scale": float(1 / np.sqrt(d)),
        "share_in_span_mean_b_dec": float(1 - _without(u, [mean, base.b_dec.detach()]).pow(2).sum()),
    }
    if W_out is not None:
        m["null_space_share"] = float(null_space_share(u[None].float(), W_out)[0])
        m["null_space_share_random"] = 1 - W_out.shape[1] / W_out.shape[0]
    if grad is not None:
        ultra = torch.from_numpy(freq < threshold) & (grad["steps"] > 0)
        descent = -grad["grad_sum"].double()  # the direction gradient descent pushed each encoder column
        g_dir = unit(unit(descent.T[ultra]).mean(0))
        per = (unit(descent.T) * unit(base.W_enc.detach().T.double())).sum(-1)
        m |= {
            "cos_mean_descent_direction": float(g_dir @ u),
            "cos_mean_descent_direction_mean_activation": cosine(g_dir, mean),
            "descent_vs_own_encoder_cos_median_ultra_low": float(per[ultra].median()),
            "descent_vs_own_encoder_cos_median_other": float(per[~torch.from_numpy(freq < threshold)].median()),
        }
    return m, u


def _without(v: torch.Tensor, directions: list[torch.Tensor]) -> torch.Tensor:
    """``v`` with the span of ``directions`` removed (Gram-Schmidt)."""
    Q, _ = torch.linalg.qr(torch.stack([d.double() for d in directions], 1))
    v = v.double()
    return v - Q @ (Q.T @ v)


@torch.no_grad()
def top_projections(ev, u: torch.Tensor, k: int) -> list[tuple[float, int]]:
    """The ``k`` eval tokens with the largest x·u: [(projection, global index row * n_ctx + pos)]."""
    best: list[tuple[float, int]] = []
    offset = 0
    for x, c in zip(ev.x, ev.covered):
        p = (x.double().cpu() @ u).masked_fill(~c.cpu(), -np.inf)  # (B, T)
        vals, idx = p.reshape(-1).topk(min(k, p.numel()))
        best += [(float(v), offset * x.shape[1] + int(i)) for v, i in zip(vals, idx)]
        offset += x.shape[0]
    return sorted(best, reverse=True)[:k]


class Params(QuestionParams):
    n_contexts: int = Field(20, gt=0)
    """Eval tokens with the largest projection on the ultra-low direction, shown in context."""


@question("q1_direction", Params)
def answer(c: Context, p: Params) -> None:
    """Question 1: the shared ultra-low direction: where it comes from (docs/questions.md, question 1)."""
    args = c.args
    thr = c.thr
    lm = c.lm
    ev = c.ev
    freq = c.freq
    base = c.base
    B = c.B
    W_out = c.W_out
    cache_mean = c.cache_mean
    res = c.res
    tables = c.tables
    grad = load_weights(args.models / base / "grad_sum.safetensors")
    cache_mean = c.cache_mean
    m1, u = direction_origin(B, freq[base], ev(base), cache_mean, W_out, grad, thr)
    res["q1_direction"] = m1
    if u is not None:
        pieces = token_pieces(lm.tokenizer)
        top = top_projections(ev(base), u, p.n_contexts)
        tables["q1_top_contexts"] = [
            {"projection": v, "left": left, "token": t, "right": r}
            for v, i in top
            for left, t, r in [context(ev(base).rows, i, pieces, 16, 4)]
        ]
    c.shared["u"] = u
