"""Question 9 of the reference post: shrinkage and a decoder / scale fine-tune.

Its computation (finetune and ``answer``), registered by name; the answer stage runs
every registered question in order and writes ``results/answers.json`` (docs/questions.md, question 9;
verdicts in research/questions/FINDINGS.md)."""

from __future__ import annotations

import copy

import torch
from pydantic import Field

from research.questions.answers.base import Context, QuestionParams, question, summary


def finetune(sae, batches, n_tokens: int, lr: float, mode: str):
    """Freeze the encoder (so every feature's firing, hence L0, stays as it was) and fit, by MSE on
    training batches, either the decoder rows (``decoder``: W_dec, norms free; b_dec stays, since
    the encoder reads x - b_dec) or one scalar per feature (``scale``: x_hat = (f * s) W_dec + b_dec).
    Returns the fitted SAE (a copy)."""
    out = copy.deepcopy(sae).float()
    for p in out.parameters():
        p.requires_grad_(False)
    if mode == "decoder":
        params = [out.W_dec]
        for p in params:
            p.requires_grad_(True)
    elif mode == "scale":
        out.scale = torch.nn.Parameter(torch.ones(out.d_sae))
        params = [out.scale]
    else:
        raise ValueError(f"finetune mode {mode!r}: decoder | scale")
    opt = torch.optim.Adam(params, lr=lr)
    done = 0
    while done < n_tokens:
        x = next(batches).float()
        with torch.no_grad():
            f = out.encode(x)
        if mode == "scale":
            f = f * out.scale
        loss = (out.decode(f) - x).pow(2).sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        done += len(x)
    if mode == "scale":  # fold the scalars into the decoder rows: the same reconstructions, a plain SAE
        with torch.no_grad():
            out.W_dec.mul_(out.scale[:, None])
        del out.scale
    for p in out.parameters():
        p.requires_grad_(False)
    return out


class Params(QuestionParams):
    finetune_tokens: int = Field(500_000, gt=0)
    """Training tokens for the decoder / scale fine-tune with the encoder frozen."""
    finetune_lr: float = Field(1e-3, gt=0)


@question("q9_shrinkage", Params)
def answer(c: Context, p: Params) -> None:
    """Question 9: shrinkage and a decoder / scale fine-tune (docs/questions.md, question 9)."""
    q = c.q
    thr = c.thr
    device = c.device
    ev = c.ev
    scores = c.scores
    base = c.base
    B = c.B
    cache = c.cache
    res = c.res
    cfg = q.sae_config(base)
    res["q9_shrinkage"] = {"before": summary(scores[base], thr)}
    for mode in ("decoder", "scale"):
        tuned = finetune(B.cpu(), cache.batches(cfg.batch_size, seed=1000), p.finetune_tokens, p.finetune_lr, mode)
        res["q9_shrinkage"][f"after_{mode}"] = summary(ev(base).score(tuned.to(device)), thr)
    res["q9_shrinkage"]["finetune_tokens"] = p.finetune_tokens
