"""Every site's SAE spliced into one forward pass (stage ``splice``; docs/metrics.md, "Splicing every site").

On evaluate's CE rows (the same seeded sample: ``evaluate.seed``, min(max_tokens, ce_max_tokens)), with the root
site's and every further site's SAE of one seed:

* per-token CE of the clean model, of each SAE **alone**, of **all** together, of all but one (**without**), and
  of zero ablation at each site alone and at all sites together (for CE recovered);
* a spliced SAE reconstructs the activation it receives, so in ``all`` a later SAE reads what the earlier
  splices made of its input (the spliced model as one would run it); covered positions only (BOS positions are
  never spliced under ``activations.bos: exclude``, as in every splice, though later sites' BOS activations can
  still move through attention);
* each site's reconstruction statistics on the clean activations (:class:`ReconSums`, evaluate's definitions)
  and its mean activation norm;
* **propagation**: with one SAE spliced alone, the relative error it causes at every later site,
  Σ‖a_j − a_j^clean‖² / Σ‖a_j^clean‖² over covered tokens, beside that later site's own SAE's relative error
  Σ‖x̂_j − x_j‖² / Σ‖x_j‖² on clean inputs.

A member is a hook (an SAE reconstructing it) or ``<input hook>-><target hook>`` (a transcoder: it reads the
input hook's activation as the spliced pass computes it and replaces the target's); its site, for order,
statistics and propagation, is its target.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from saelab.config import hook_position
from saelab.data.hooks import covered_positions, grab_into
from saelab.eval.evaluate import EvalSample, token_ce
from saelab.eval.metrics import ReconSums, ce_recovered, frequency_fractions
from saelab.saes.base import SAE


def live_splice(sae: SAE, covered: torch.Tensor, read: dict | None = None):
    """A hook replacing the activation it receives by ``sae``'s output at ``covered`` (B, T) positions: its
    reconstruction of that activation (after an earlier splice, of what that splice made of it), or, with ``read``,
    its output on ``read["x"]``, the input an earlier hook of the same pass grabbed (a transcoder)."""

    def hook(x, hook):  # noqa: ARG001 - TL passes the HookPoint by keyword
        x_in = x if read is None else read["x"]
        x_hat = sae(x_in.reshape(-1, x_in.shape[-1]).float())[0].reshape(x.shape).to(x.dtype)
        return torch.where(covered[..., None], x_hat, x)

    return hook


def member_name(input_hook: str, target_hook: str) -> str:
    """A transcoder's member name, ``input->target`` (an SAE's is its hook)."""
    return f"{input_hook}->{target_hook}"


def source(member: str) -> str:
    """The hook a member reads: its own for an SAE, the input hook of a transcoder ``input->target``."""
    return member.split("->")[0]


def target(member: str) -> str:
    """The hook a member replaces: its own for an SAE, the target of a transcoder ``input->target``."""
    return member.split("->")[-1]


def member_hooks(member: str, sae: SAE, covered: torch.Tensor) -> list:
    """The hooks that splice one member: an SAE's live splice; for a transcoder, a grab of its input as the pass
    computes it and, at its target, its output in place of the target's activation at ``covered`` positions."""
    if source(member) == target(member):
        return [(member, live_splice(sae, covered))]
    seen: dict = {}
    return [(source(member), grab_into(seen, "x")), (target(member), live_splice(sae, covered, read=seen))]


def splice_hooks(saes: dict[str, SAE], members, covered: torch.Tensor) -> list:
    """Every member's hooks for one pass, in one order whatever order ``members`` come in: SAE splices first, then
    transcoders by the position of their target, so a transcoder reads its input after an SAE spliced at that hook
    and after an earlier transcoder that replaced it (TransformerLens runs a hook point's hooks in the order
    given)."""
    ordered = sorted(members, key=lambda m: (source(m) != target(m), hook_position(target(m))))
    return [pair for m in ordered for pair in member_hooks(m, saes[m], covered)]


def zero_splice(covered: torch.Tensor):
    def hook(x, hook):  # noqa: ARG001
        return torch.where(covered[..., None], torch.zeros_like(x), x)

    return hook


def splice_sets(sites: list[str]) -> dict[str, tuple[str, ...]]:
    """The sets of sites whose SAEs are spliced together: each alone, and with 2+ sites all and all but each one
    (one site: ``all`` is that site alone, not spliced twice)."""
    sets = {f"alone:{h}": (h,) for h in sites}
    if len(sites) > 1:
        sets |= {"all": tuple(sites)} | {f"without:{h}": tuple(s for s in sites if s != h) for h in sites}
    return sets


@dataclass
class SiteSums:
    """Running sums of :func:`evaluate_sites`: per-site reconstruction and propagation."""

    recon: dict = field(default_factory=dict)  # site -> ReconSums (clean inputs)
    norm_sum: dict = field(default_factory=dict)  # site -> Σ ‖x‖ over covered tokens
    prop_err: dict = field(default_factory=dict)  # (from, to) -> Σ ‖a_to − a_to^clean‖²


def _run(model, tokens, hooks, top: dict | None = None, name: str = "") -> torch.Tensor:
    """Per-token CE (B, T-1) of a pass with ``hooks``; with ``top``, its argmax predictions go to ``top[name]``."""
    logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
    if top is not None:
        top[name] = logits[:, :-1].argmax(-1)
    return token_ce(logits, tokens)


@torch.no_grad()
def evaluate_sites(model, saes: dict[str, SAE], rows: np.ndarray, cfg, device, exclude_token: int | None = None
                   ) -> tuple[dict, dict]:  # fmt: skip
    """Splice ``saes`` (member -> SAE: a hook, or ``input->target`` for a transcoder) alone, together and all but
    one into the LM on evaluate's CE rows of ``rows``.

    Returns (metrics, per-token arrays: ``ce:<set>`` per set and ``covered``, over every predicted position of
    the CE rows, in row order). Definitions: the module docstring and docs/metrics.md, "Splicing every site".
    """
    sites = sorted(saes, key=lambda m: hook_position(target(m)))
    hooks = sorted({h for m in sites for h in (source(m), target(m))}, key=hook_position)
    sets = splice_sets(sites)
    sample = EvalSample.draw(len(rows), rows.shape[1], cfg.ce_max_tokens, cfg)
    s = SiteSums()
    per_token: dict[str, list] = {"covered": []}
    for tokens, _, in_ce in sample.batches(rows, cfg.batch_rows, device):
        if not in_ce:
            break  # CE rows come first; the rest are not used here
        covered = covered_positions(tokens, exclude_token)
        # a prediction made from a covered position (one made from BOS under bos: exclude is never spliced)
        per_token["covered"].append(covered[:, :-1].reshape(-1).cpu().numpy())
        clean_acts, top = {}, {}
        ce = {"clean": _run(model, tokens, [(h, grab_into(clean_acts, h)) for h in hooks], top, "clean")}
        keep = covered.reshape(-1)
        flat = {h: a.float().reshape(-1, a.shape[-1])[keep] for h, a in clean_acts.items()}
        for h in sites:
            x = flat[target(h)]
            x_hat, f = saes[h](flat[source(h)])
            s.recon.setdefault(h, ReconSums()).add(x, x_hat, f)
            s.norm_sum[h] = s.norm_sum.get(h, 0.0) + x.double().norm(dim=-1).sum().item()
        for name, members in sets.items():
            later = {}
            grabs = []
            if name.startswith("alone:"):  # the error this SAE alone causes downstream, from the same pass
                at = hook_position(target(members[0]))
                grabs = [(target(h), grab_into(later, h)) for h in sites if hook_position(target(h)) > at]
            # TransformerLens fires each hook when the pass reaches its point; at one point, in the list's order
            ce[name] = _run(model, tokens, splice_hooks(saes, members, covered) + grabs, top, name)
            for h, a in later.items():
                d = (a.float() - clean_acts[target(h)].float()).reshape(-1, a.shape[-1])[keep]
                key = (members[0], h)
                s.prop_err[key] = s.prop_err.get(key, 0.0) + d.double().pow(2).sum().item()
        if len(sites) == 1:
            ce["all"], top["all"] = ce[f"alone:{sites[0]}"], top[f"alone:{sites[0]}"]
        ce["zero:all"] = _run(
            model, tokens, [(h, zero_splice(covered)) for h in sorted({target(m) for m in sites}, key=hook_position)]
        )
        for h in sites:
            ce[f"zero:{h}"] = (
                _run(model, tokens, [(target(h), zero_splice(covered))]) if len(sites) > 1 else ce["zero:all"]
            )
        for name, v in ce.items():
            per_token.setdefault(f"ce:{name}", []).append(v.reshape(-1).double().cpu().numpy())
        for name, v in top.items():  # does the spliced model still predict the clean model's top token?
            per_token.setdefault(f"argmax:{name}", []).append(v.reshape(-1).int().cpu().numpy())
    arrays = {k: np.concatenate(v) for k, v in per_token.items()}
    return summarize_sites(sites, arrays, s, cfg), arrays


def correlation(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson correlation of two series; None when either is constant."""
    if a.std() == 0 or b.std() == 0:
        return None  # a constant series has no correlation (e.g. a perfect splice)
    return float(np.corrcoef(a, b)[0, 1])


def worst_overlap(a: np.ndarray, b: np.ndarray, share: float) -> float | None:
    """Jaccard overlap of the ``share`` of tokens with the largest values of ``a`` and of ``b``; None when either
    is constant (no worst tokens to speak of, e.g. a perfect splice)."""
    if a.std() == 0 or b.std() == 0:
        return None
    n = max(1, int(round(share * len(a))))
    top_a, top_b = set(np.argsort(-a, kind="stable")[:n]), set(np.argsort(-b, kind="stable")[:n])
    return len(top_a & top_b) / len(top_a | top_b)


def summarize_sites(sites: list[str], arrays: dict, s: SiteSums, cfg, worst_share: float = 0.01) -> dict:
    ce = {k.removeprefix("ce:"): v for k, v in arrays.items() if k.startswith("ce:")}
    mean = {k: float(v.mean()) for k, v in ce.items()}
    clean = mean["clean"]
    out: dict = {
        "sites": sites,
        "ce_eval_tokens": int(len(ce["clean"])),
        "ce_clean": clean,
        "all": {
            "ce": mean["all"],
            "ce_increase": mean["all"] - clean,
            "ce_zero_ablation": mean["zero:all"],
            "ce_recovered_zero": ce_recovered(clean, mean["all"], mean["zero:all"]),
        },
    }
    alone = {h: mean[f"alone:{h}"] - clean for h in sites}
    out["all"]["sum_of_alone_increases"] = sum(alone.values())
    total = out["all"]["sum_of_alone_increases"]
    # a ratio only when every SAE alone costs something: with a free (or helpful) one the ratio has no reading
    costly = all(v > 1e-9 for v in alone.values())
    out["all"]["additivity"] = out["all"]["ce_increase"] / total if costly else None
    covered = arrays["covered"].astype(bool)
    # per-token CE differences over the predictions made from a covered position
    diffs = {h: (ce[f"alone:{h}"] - ce["clean"])[covered] for h in sites}
    diffs["all"] = (ce["all"] - ce["clean"])[covered]
    per_site = {}
    for h in sites:
        recon = s.recon[h]
        row = {
            "ce_increase_alone": alone[h],
            "ce_recovered_zero_alone": ce_recovered(clean, mean[f"alone:{h}"], mean[f"zero:{h}"]),
            "ce_zero_ablation": mean[f"zero:{h}"],
            **recon.result(),
            **frequency_fractions(recon.freq(), cfg.ultra_low_threshold, cfg.dense_threshold),
            "mean_norm": s.norm_sum[h] / recon.n,
            "relative_error": recon.sse / recon.sum_sq if recon.sum_sq > 0 else None,  # Σ‖x̂-x‖² / Σ‖x‖²
            "ce_diff_corr_with_all": correlation(diffs[h], diffs["all"]),
        }
        if f"without:{h}" in mean:
            row["ce_increase_without"] = mean[f"without:{h}"] - clean  # every other SAE spliced
            row["marginal_ce_increase"] = mean["all"] - mean[f"without:{h}"]  # what adding this one last costs
        row["propagated_relative_error"] = {
            to: s.prop_err[(h, to)] / s.recon[to].sum_sq if s.recon[to].sum_sq > 0 else None
            for to in sites
            if (h, to) in s.prop_err
        }
        per_site[h] = row
    out["per_site"] = per_site
    clean_top = arrays["argmax:clean"][covered]
    out["all"]["argmax_changed"] = float((arrays["argmax:all"][covered] != clean_top).mean())
    for h in sites:
        per_site[h]["argmax_changed_alone"] = float((arrays[f"argmax:alone:{h}"][covered] != clean_top).mean())
    out["ce_diff_corr"] = {a: {b: correlation(diffs[a], diffs[b]) for b in sites} for a in sites}
    out["worst_token_overlap"] = {
        "share": worst_share,
        "jaccard": {a: {b: worst_overlap(diffs[a], diffs[b], worst_share) for b in sites} for a in sites},  # fmt: skip
    }
    return out


# ---------------------------------------------------------------- talking to the patched model


@torch.no_grad()
def continue_prompts(model, prompts: torch.Tensor, n_new: int, splices, exclude_token: int | None,
                     generator: torch.Generator | None = None) -> torch.Tensor:  # fmt: skip
    """``n_new`` tokens after each prompt (B, P): greedy, or sampled at temperature 1 from ``generator``.
    ``splices(covered)`` gives the pass's hooks for the sequence so far (covered: its non-BOS positions)."""
    seq = prompts
    for _ in range(n_new):
        logits = model.run_with_hooks(seq, fwd_hooks=splices(covered_positions(seq, exclude_token)))[:, -1].float()
        if generator is None:
            nxt = logits.argmax(-1)
        else:
            nxt = torch.multinomial(torch.softmax(logits, -1).cpu(), 1, generator=generator).squeeze(-1)
        seq = torch.cat([seq, nxt.to(seq.device)[:, None]], 1)
    return seq[:, prompts.shape[1] :]


def first_divergence(a: list[int], b: list[int]) -> int | None:
    """Index of the first position where two continuations differ; None when they agree throughout."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)


def generations(model, saes: dict[str, SAE], rows: np.ndarray, cfg, gen, device, exclude_token: int | None,
                decode) -> tuple[list[dict], dict]:  # fmt: skip
    """Greedy and sampled continuations of the first ``gen.n_prompts`` of evaluate's CE rows (their first
    ``gen.prompt_tokens``), from the clean model and with every SAE of ``saes`` spliced (live, as in ``all``).
    Sampling draws from a generator seeded with ``gen.seed`` afresh for the clean and the spliced batch, so the
    two share the random stream and part where the models' distributions do. Returns (one record per prompt,
    summary)."""
    sample = EvalSample.draw(len(rows), rows.shape[1], cfg.ce_max_tokens, cfg)
    ids = sample.ce[: gen.n_prompts]
    prompts = torch.from_numpy(rows[ids, : gen.prompt_tokens].astype(np.int64)).to(device)

    def spliced(covered):
        return splice_hooks(saes, saes, covered)

    records = [{"row": int(r), "prompt": decode(p.tolist())} for r, p in zip(ids, prompts)]
    firsts: dict[str, list] = {}
    for mode in ("greedy", "sampled"):
        outs = {}
        for name, hooks in (("clean", lambda covered: []), ("spliced", spliced)):
            gen_rng = None if mode == "greedy" else torch.Generator().manual_seed(gen.seed)
            outs[name] = continue_prompts(model, prompts, gen.new_tokens, hooks, exclude_token, gen_rng).tolist()
        for rec, clean, patched in zip(records, outs["clean"], outs["spliced"]):
            first = first_divergence(clean, patched)
            firsts.setdefault(mode, []).append(first)
            agreed = clean if first is None else clean[:first]
            rec[mode] = {"first_divergence": first, "agreed": decode(agreed), "clean": decode(clean),
                         "spliced": decode(patched), "clean_ids": clean, "spliced_ids": patched,
                         "clean_pieces": [decode([t]) for t in clean],  # token by token, for the browser
                         "spliced_pieces": [decode([t]) for t in patched]}  # fmt: skip
    summary = {"n_prompts": len(records), "prompt_tokens": gen.prompt_tokens, "new_tokens": gen.new_tokens}
    for mode, fs in firsts.items():
        diverged = [f for f in fs if f is not None]
        summary[f"{mode}_diverged_share"] = len(diverged) / len(fs) if fs else None
        summary[f"{mode}_first_divergence_median"] = float(np.median(diverged)) if diverged else None
    return records, summary
