"""Recovery metrics: how well an SAE's latents match a synthetic world's true features.

Each is a small pure function of the decoder rows W (d_sae, d), the true directions D (F, d),
and, where firing matters, activations f (n, d_sae) and true codes c (n, F) on the same held-out
tokens. Definitions: docs/synthetic.md, "Recovery metrics".
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from research.interpolate import at_l0
from saelab.eval.metrics import ReconSums


def pos_cos(W: torch.Tensor, D: torch.Tensor) -> np.ndarray:
    """(d_sae, F) max(cos, 0) between every decoder row and every true direction. Codes and activations
    are >= 0, so a row pointing against d_i can never reconstruct feature i: it scores 0, not |cos|."""
    Wn = W / W.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    Dn = D / D.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return (Wn.double() @ Dn.double().T).clamp_min(0).numpy()


def hungarian(cos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching maximising Σ cos: (true feature indices, their latents), min(d_sae, F) pairs."""
    feats, lats = linear_sum_assignment(-cos.T)
    return feats, lats


def mcc(cos: np.ndarray) -> float:
    """Mean over the F true features of the (positive) cos of their Hungarian-matched latent (0 for a
    feature left unmatched because d_sae < F). 1 for a perfect dictionary, whatever its order or scale."""
    feats, lats = hungarian(cos)
    return float(cos[lats, feats].sum() / cos.shape[1])


def chance_mcc(d_sae: int, D: torch.Tensor, seed: int = 0) -> float:
    """MCC of a random dictionary of the same size (Gaussian rows): the floor a trained SAE must clear.
    It rises with d_sae / F and with F / d."""
    g = torch.Generator().manual_seed(seed)
    return mcc(pos_cos(torch.randn(d_sae, D.shape[1], generator=g), D))


def recovered(cos: np.ndarray, threshold: float) -> np.ndarray:
    """(F,) bool: some latent has cos >= threshold with the feature (not necessarily one-to-one)."""
    return cos.max(0) >= threshold


def by_decile(values: np.ndarray, freq: np.ndarray, n: int = 10) -> list[float | None]:
    """Mean of ``values`` (F,) over the features of each firing-frequency decile, rarest first
    (None for an empty decile, when F < n)."""
    order = np.argsort(freq, kind="stable")
    return [float(values[part].mean()) if len(part) else None for part in np.array_split(order, n)]


def firing_pr(f: torch.Tensor, c: torch.Tensor, feats: np.ndarray, lats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per matched pair: precision = P(feature fires | latent fires), recall = P(latent fires | feature fires)
    (NaN where the latent, or the feature, never fires on the sample)."""
    on_f, on_c = (f[:, lats] > 0), (c[:, feats] > 0)
    both = (on_f & on_c).sum(0).double()
    with np.errstate(invalid="ignore", divide="ignore"):
        prec = (both / on_f.sum(0).double()).numpy()
        rec = (both / on_c.sum(0).double()).numpy()
    return prec, rec


def shrinkage(
    f: torch.Tensor, c: torch.Tensor, W: torch.Tensor, D: torch.Tensor, feats: np.ndarray, lats: np.ndarray
) -> np.ndarray:
    """Per matched pair, over tokens where both fire: median of the latent's contribution along the
    true direction, f_j (W_j · d_i), over the true magnitude c_i (the lower middle value for an even count, as
    torch.median). 1 = no shrinkage; NaN if never co-active."""
    out = np.full(len(feats), np.nan)
    along = (W[lats] * D[feats]).sum(-1)  # W_j · d_i (d_i unit)
    for k, (i, j) in enumerate(zip(feats, lats)):
        both = (f[:, j] > 0) & (c[:, i] > 0)
        if both.any():
            out[k] = float(torch.median(f[both, j] * along[k] / c[both, i]))
    return out


def absorption(
    f: torch.Tensor, c: torch.Tensor, pairs: list[tuple[int, int]], latent_of: dict[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Per (parent, child) pair: on tokens where both true features fire, the share on which the child's
    matched latent fires and the parent's is silent (the child latent "absorbed" the parent); and, as the
    control, the share of tokens where the parent fires *without* the child on which the parent's latent
    is silent (its ordinary miss rate). NaN where a feature has no matched latent or a case never occurs."""
    out, control = np.full(len(pairs), np.nan), np.full(len(pairs), np.nan)
    for k, (p, ch) in enumerate(pairs):
        if p not in latent_of or ch not in latent_of:
            continue
        both = (c[:, p] > 0) & (c[:, ch] > 0)
        alone = (c[:, p] > 0) & ~(c[:, ch] > 0)
        if both.any():
            lp, lc = f[both, latent_of[p]] > 0, f[both, latent_of[ch]] > 0
            out[k] = float((lc & ~lp).double().mean())
        if alone.any():
            control[k] = float((f[alone, latent_of[p]] <= 0).double().mean())
    return out, control


def task_usage(f: torch.Tensor, W: torch.Tensor, D_task: torch.Tensor, on: torch.Tensor, min_span: float) -> dict:
    """How an SAE spends latents on one compositional task (true directions D_task (m, d); ``on``: (n,)
    tokens where the task fires).

    Task latents: those whose decoder row has at least ``min_span`` of its norm in span(D_task).
    Each gets a share q_j of the task's activation mass Σ_{t on} f_j ‖W_j‖. Reports
    ``n_latents`` (task latents with q_j >= 1%), ``n_eff`` = exp(entropy of q) (m for one latent per
    direction used evenly), ``dir_align`` = Σ q_j max_i max(cos(W_j, d_i), 0) (1 when each latent is one
    true direction), ``span_align`` = Σ q_j ‖P W_j‖/‖W_j‖ (1 when they lie in the task's span,
    directions or combinations alike), ``sum_align`` = Σ q_j max(cos(W_j, Σ_i d_i), 0) (1 when every
    latent is the task's sum direction: the merged code). A combination code has span_align high and
    dir_align low."""
    Q, _ = torch.linalg.qr(D_task.double().T)  # (d, m) orthonormal basis of the span
    Wd = W.double()
    norms = Wd.norm(dim=-1).clamp_min(1e-12)
    span = (Wd @ Q).norm(dim=-1) / norms
    cand = torch.nonzero(span >= min_span).squeeze(-1)
    m = len(D_task)
    empty = {
        "n_latents": 0,
        "n_eff": 0.0,
        "n_eff_per_direction": 0.0,
        "dir_align": None,
        "span_align": None,
        "sum_align": None,
        "m": m,
    }
    if len(cand) == 0 or not on.any():
        return empty
    mass = (f[on][:, cand].double() * norms[cand]).sum(0)
    if mass.sum() <= 0:
        return empty
    q = mass / mass.sum()
    cos = torch.from_numpy(pos_cos(W[cand], D_task)).max(1).values
    to_sum = torch.from_numpy(pos_cos(W[cand], D_task.sum(0, keepdim=True)))[:, 0]
    nz = q[q > 0]
    n_eff = float(torch.exp(-(nz * nz.log()).sum()))
    return {
        "n_latents": int((q >= 0.01).sum()),
        "n_eff": n_eff,
        "n_eff_per_direction": n_eff / m,
        "dir_align": float((q * cos).sum()),
        "span_align": float((q * span[cand]).sum()),
        "sum_align": float((q * to_sum).sum()),
        "m": m,
    }


def matched_l0(rows: list[dict]) -> list[dict]:
    """Per world, architecture and dictionary size: MCC interpolated (log L0) at the world's true L0,
    where bracketed. Runs of other dictionary sizes are never interpolated between (that would mix
    sparsity with width)."""
    out = []
    for world, arch, d_sae in sorted({(r["world"], r["architecture"], r["d_sae"]) for r in rows}):
        rs = [r for r in rows if (r["world"], r["architecture"], r["d_sae"]) == (world, arch, d_sae)]
        true_l0 = rs[0]["true_l0"]
        out.append(
            {
                "world": world,
                "architecture": arch,
                "d_sae": d_sae,
                "true_l0": true_l0,
                "n_runs": len(rs),
                "mcc_at_true_l0": at_l0([(r["l0"], r["mcc"]) for r in rs], true_l0),
                "best_mcc": max(r["mcc"] for r in rs),
            }
        )
    return out


def nan_mean(a) -> float | None:
    a = np.asarray(a, dtype=np.float64)
    return float(np.nanmean(a)) if a.size and not np.isnan(a).all() else None


@torch.no_grad()
def score(sae, world, x: torch.Tensor, c: torch.Tensor, cfg) -> dict:
    """Every recovery metric of ``sae`` on a world's held-out sample (x, c); ``cfg`` a RecoverConfig.

    Precision, recall and shrinkage are averaged over the Hungarian pairs whose |cos| >= 0.7 (a
    pair that is not the feature says nothing about how the feature fires)."""
    W = sae.W_dec.detach().float()
    D = world.D
    f = torch.cat([sae.encode(x[i : i + cfg.batch_tokens]) for i in range(0, len(x), cfg.batch_tokens)])
    x_hat = torch.cat([sae.decode(f[i : i + cfg.batch_tokens]) for i in range(0, len(x), cfg.batch_tokens)])
    cos = pos_cos(W, D)
    feats, lats = hungarian(cos)
    pair_cos = cos[lats, feats]
    good = pair_cos >= cfg.pair_cos
    freq = (c > 0).double().mean(0).numpy()
    prec, rec = firing_pr(f, c, feats[good], lats[good])
    recon = ReconSums().add(x, x_hat, f).result()  # the one definition (saelab.eval.metrics)
    out = {
        "l0": recon["l0"],
        "true_l0": float((c > 0).double().sum(-1).mean()),
        "mse": recon["mse"],
        "explained_variance": recon["explained_variance"],
        "l2_ratio": recon["l2_ratio"],
        "d_sae": int(W.shape[0]),
        "n_true": int(D.shape[0]),
        "mcc": mcc(cos),
        "mcc_chance": chance_mcc(int(W.shape[0]), D),
        "n_pairs": int(good.sum()),
        "precision": nan_mean(prec),
        "recall": nan_mean(rec),
        "shrinkage": nan_mean(shrinkage(f, c, W, D, feats[good], lats[good])),
    }
    out |= {k: v for k, v in recon.items() if k not in out and k != "eval_tokens"}  # metrics added there reach here
    for t in cfg.cos_thresholds:
        hit = recovered(cos, t)
        out[f"recovered_{t:g}"] = float(hit.mean())
        out[f"recovered_{t:g}_by_decile"] = by_decile(hit.astype(np.float64), freq)
    lay = world.layout()
    pairs = [(p, ch) for p, kids in zip(lay["parents"], lay["children"]) for ch in kids]
    if pairs:
        latent_of = {int(i): int(j) for i, j, ok in zip(feats, lats, good) if ok}
        absorbed, control = absorption(f, c, pairs, latent_of)
        out["absorption"] = nan_mean(absorbed)
        out["absorption_control"] = nan_mean(control)
        out["absorption_pairs"] = f"{int((~np.isnan(absorbed)).sum())}/{len(pairs)}"
    if lay["tasks"]:
        use = [task_usage(f, W, D[idx], c[:, idx[0]] > 0, cfg.task_latent_span) for idx in lay["tasks"]]
        for key in ("n_latents", "n_eff", "n_eff_per_direction", "dir_align", "span_align", "sum_align"):
            out[f"task_{key}"] = nan_mean([u[key] if u[key] is not None else np.nan for u in use])
        out["task_size"] = len(lay["tasks"][0])
        out["task_verdict"] = verdict(
            out["task_dir_align"], out["task_span_align"], out["task_n_eff_per_direction"], cfg.verdict_align
        )
    return out


def verdict(
    dir_align: float | None, span_align: float | None, n_eff_per_direction: float | None, threshold: float
) -> str:
    """``directions``: the task latents are single true directions (dir_align >= threshold). Otherwise, if
    they lie in the task's span (span_align >= threshold): ``merged`` when there are fewer effective
    latents than directions (n_eff / m < 1: the task compressed onto shared directions), ``combinations``
    when there are at least as many (n_eff / m >= 1: the critique's tiling by combinations). ``neither``:
    no latent lives in the task's span."""
    if dir_align is None or span_align is None:
        return "neither"
    if dir_align >= threshold:
        return "directions"
    if span_align < threshold:
        return "neither"
    return "merged" if (n_eff_per_direction or 0) < 1 else "combinations"
