"""All twelve replication analyses of one SAE, as flat metrics, per-feature tables and figures (docs/metrics.md)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from saelab.analysis import plots
from saelab.analysis import weights as W
from saelab.analysis.contexts import context, token_pieces
from saelab.analysis.passes import PassResult, run_pass
from saelab.data.hooks import is_mlp_post
from saelab.eval.evaluate import EvalSample
from saelab.eval.metrics import ce_recovered, frequency_fractions
from saelab.io import save_weights


@dataclass
class Inputs:
    model: object  # TransformerBridge
    tokenizer: object
    sae: object  # SAE
    hook: str
    layer: int
    freq: np.ndarray  # (d_sae,) feature frequency on the evaluate stage's eval tokens
    freq_tokens: int
    rows: np.ndarray  # eval token rows
    ln_final_weight: torch.Tensor | None  # (d_model,) final LayerNorm scale, folded into W_U for the logit lens
    ultra_low_threshold: float  # evaluate.ultra_low_threshold
    dense_threshold: float  # evaluate.dense_threshold
    exclude_token: int | None  # BOS id under activations.bos: exclude


def _median(a) -> float:
    a = np.asarray(a, dtype=np.float64)
    a = a[np.isfinite(a)]
    return float(np.median(a)) if len(a) else float("nan")


@dataclass(frozen=True)
class WeightMetrics:
    """Items 1-9 (docs/metrics.md, "Weight analyses"); None where undefined for this hook."""

    frac_dead: float
    frac_ultra_low: float
    frac_dense: float
    n_ultra_low: int
    freq_eval_tokens: int
    ultra_low_enc_share_cos_above: float
    ultra_low_dec_share_cos_above: float
    ultra_low_enc_cos_median: float
    ultra_low_dec_cos_median: float
    enc_dec_cos_median: float
    enc_dec_cos_median_dense: float
    neuron_frac_dense: float
    neuron_frac_1_sparse: float
    neuron_frac_10_ish: float
    kurtosis_median: float
    kurtosis_gaussian_median: float
    kurtosis_median_dense: float
    de_projection_median_non_ultra_low: float
    de_projection_median_ultra_low: float
    frequent_cos_mean: float
    frequent_cos_var: float
    n_frequent: int
    frequent_cos_baseline_var: float
    null_share_enc_mean: float | None = None  # MLP-post hooks only
    null_share_dec_mean: float | None = None
    null_share_baseline: float | None = None
    logit_skew_median: float | None = None  # not for mlp.hook_pre
    logit_kurtosis_median: float | None = None

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class PassMetrics:
    """Items 2 (co-firing), 10 (top-k), 11 (per-token CE) and 12 (examples) from the eval pass."""

    ultra_low_cofire_max_share: float
    pass_eval_tokens: int
    ce_eval_tokens: int
    n_features_with_examples: int
    topk_ce_recovered_zero: dict  # k (or "all") -> CE recovered (zero)
    topk_mse: dict  # k (or "all") -> MSE
    ce_diff_quantiles: dict  # "mean", "p50", "p90", "p99", "max", "min" -> nats

    def as_dict(self) -> dict:
        flat = {k: v for k, v in asdict(self).items() if not isinstance(v, dict)}
        flat |= {f"topk_{k}_ce_recovered_zero": v for k, v in self.topk_ce_recovered_zero.items()}
        flat |= {f"topk_{k}_mse": v for k, v in self.topk_mse.items()}
        return flat | {f"ce_diff_{k}": v for k, v in self.ce_diff_quantiles.items()}


def weight_analyses(inp: Inputs, cfg) -> tuple[WeightMetrics, dict, dict]:
    """Items 1-9: returns (metrics, per-feature columns, extra arrays for figures)."""
    sae = inp.sae
    W_enc, W_dec, b_enc = sae.W_enc.detach().cpu(), sae.W_dec.detach().cpu(), sae.b_enc.detach().cpu()
    ultra = inp.freq < inp.ultra_low_threshold
    normal, dense = ~ultra, inp.freq > inp.dense_threshold
    cols: dict = {"frequency": inp.freq, "ultra_low": ultra, "b_enc": b_enc.numpy()}
    # 2. ultra-low cluster: encoder sameness vs decoder sameness
    u = torch.from_numpy(ultra)
    enc_mean, enc_cos, enc_share = W.cluster_sameness(W_enc.T[u], cfg.cluster_cos)
    dec_mean, dec_cos, dec_share = W.cluster_sameness(W_dec[u], cfg.cluster_cos)
    extra: dict = {
        "enc_mean": enc_mean,
        "dec_mean": dec_mean,
        "cluster_enc_cos": enc_cos.numpy(),
        "cluster_dec_cos": dec_cos.numpy(),
    }
    # 3. encoder/decoder cosine (also over dense features only: a cluster centred near the
    # ultra-low threshold spills into "non-ultra-low")
    cols["enc_dec_cos"] = W.enc_dec_cosine(W_enc, W_dec).numpy()
    # 4. neuron sparsity, 5. kurtosis (over non-ultra-low features)
    top1, next9 = W.neuron_sparsity(W_dec)
    cols["fve_top_1"], cols["fve_next_9"] = top1.numpy(), next9.numpy()
    cols["sparsity_class"] = W.sparsity_class(top1, next9)
    share = {
        c: float((cols["sparsity_class"][normal] == c).mean()) if normal.any() else 0.0
        for c in ("dense", "1-sparse", "10-ish")
    }
    cols["kurtosis"] = W.excess_kurtosis(W_dec)
    extra["gauss_kurtosis"] = W.gaussian_kurtosis_baseline(tuple(W_dec.shape), cfg.seed)
    # 6. W_out null space (MLP-post hooks only: the SAE lives in the neuron basis W_out reads)
    W_out = inp.model.W_out[inp.layer].detach().cpu().float() if is_mlp_post(inp.hook) else None
    null = {}
    if W_out is not None:
        cols["null_share_enc"] = W.null_space_share(W_enc.T, W_out).numpy()
        cols["null_share_dec"] = W.null_space_share(W_dec, W_out).numpy()
        null = {
            "null_share_enc_mean": float(cols["null_share_enc"][normal].mean()),
            "null_share_dec_mean": float(cols["null_share_dec"][normal].mean()),
            "null_share_baseline": 1 - W_out.shape[1] / W_out.shape[0],
        }
    # 7. D/E projection
    cols["de_projection"] = W.de_projection(W_enc, W_dec).numpy()
    # 8. pairwise cosines of frequent features
    frequent = torch.from_numpy(inp.freq > inp.ultra_low_threshold)
    cos_mean, cos_var, n_frequent = W.pairwise_cosine_stats(W_dec[frequent])
    # 9. logit lens (not through a nonlinearity: skipped for mlp.hook_pre)
    logit = {}
    if not inp.hook.endswith("mlp.hook_pre"):
        ln_w = inp.ln_final_weight.cpu().float() if inp.ln_final_weight is not None else None
        eff = W.logit_effects(W_dec, inp.model.W_U.detach().cpu().float(), W_out, ln_w)
        mom = W.moments(eff)
        cols |= mom
        logit = {
            "logit_skew_median": _median(mom["logit_skew"]),
            "logit_kurtosis_median": _median(mom["logit_kurtosis"]),
        }
        k = cfg.n_logit_tokens
        extra["promoted"], extra["suppressed"] = (
            eff.topk(k, dim=1).indices.numpy(),
            (-eff).topk(k, dim=1).indices.numpy(),
        )
    metrics = WeightMetrics(
        **frequency_fractions(inp.freq, inp.ultra_low_threshold, inp.dense_threshold),  # 1. frequency
        n_ultra_low=int(ultra.sum()),
        freq_eval_tokens=inp.freq_tokens,
        ultra_low_enc_share_cos_above=enc_share,
        ultra_low_dec_share_cos_above=dec_share,
        ultra_low_enc_cos_median=_median(enc_cos),
        ultra_low_dec_cos_median=_median(dec_cos),
        enc_dec_cos_median=_median(cols["enc_dec_cos"][normal]),
        enc_dec_cos_median_dense=_median(cols["enc_dec_cos"][dense]),
        neuron_frac_dense=share["dense"],
        neuron_frac_1_sparse=share["1-sparse"],
        neuron_frac_10_ish=share["10-ish"],
        kurtosis_median=_median(cols["kurtosis"][normal]),
        kurtosis_gaussian_median=_median(extra["gauss_kurtosis"]),
        kurtosis_median_dense=_median(cols["kurtosis"][dense]),
        de_projection_median_non_ultra_low=_median(cols["de_projection"][normal]),
        de_projection_median_ultra_low=_median(cols["de_projection"][ultra]),
        frequent_cos_mean=cos_mean,
        frequent_cos_var=cos_var,
        n_frequent=n_frequent,
        frequent_cos_baseline_var=1 / W_dec.shape[1],
        **null,
        **logit,
    )
    return metrics, cols, extra


def pass_analyses(inp: Inputs, cfg, sample: EvalSample, device, progress=None) -> tuple[PassMetrics, PassResult]:
    """Items 2 (co-firing), 10 (top-k), 11 (per-token CE) and 12 (max-activating examples)."""
    ultra = torch.from_numpy(inp.freq < inp.ultra_low_threshold)
    res = run_pass(inp.model, inp.sae, inp.rows, inp.hook, ultra, cfg, sample, device, inp.exclude_token, progress)
    d = res.ce_diff
    quantiles = (
        {}
        if d is None
        else {
            "mean": float(d.mean()),
            "p50": float(np.quantile(d, 0.5)),
            "p90": float(np.quantile(d, 0.9)),
            "p99": float(np.quantile(d, 0.99)),
            "max": float(d.max()),
            "min": float(d.min()),
        }
    )
    return PassMetrics(
        ultra_low_cofire_max_share=res.cofire_max_share,
        pass_eval_tokens=res.n_tokens,
        ce_eval_tokens=res.ce_tokens,
        n_features_with_examples=int((res.top_values[:, 0] > 0).sum()),
        topk_ce_recovered_zero={k: ce_recovered(res.ce_clean, v["ce"], res.ce_zero) for k, v in res.topk.items()},
        topk_mse={k: v["mse"] for k, v in res.topk.items()},
        ce_diff_quantiles=quantiles,
    ), res


def _context_table(inp: Inputs, cfg, pieces, indices, **columns) -> pa.Table:
    ctx = [context(inp.rows, i, pieces, cfg.context_left, cfg.context_right) for i in indices]
    n_ctx = inp.rows.shape[1]
    return pa.table(
        {
            **columns,
            "row": pa.array([int(i) // n_ctx for i in indices], pa.int32()),
            "pos": pa.array([int(i) % n_ctx for i in indices], pa.int16()),
            "left": [c[0] for c in ctx],
            "token": [c[1] for c in ctx],
            "right": [c[2] for c in ctx],
        }
    )


def write_tables(out: Path, inp: Inputs, cfg, cols: dict, extra: dict, res) -> None:
    """Per-feature table, max-activating examples, worst-CE tokens and co-firing contexts as Parquet."""
    pieces = token_pieces(inp.tokenizer)
    table = {"feature": np.arange(inp.sae.d_sae, dtype=np.int32), **cols}
    if "promoted" in extra:
        table["top_promoted"] = [[pieces[t] for t in r] for r in extra["promoted"]]
        table["top_suppressed"] = [[pieces[t] for t in r] for r in extra["suppressed"]]
    pq.write_table(pa.table(table), out / "features.parquet")
    vals, idx = res.top_values.numpy(), res.top_tokens.numpy()
    feat, rank = np.nonzero(vals > 0)
    pq.write_table(
        _context_table(
            inp,
            cfg,
            pieces,
            idx[feat, rank],
            feature=feat.astype(np.int32),
            rank=rank.astype(np.int16),
            activation=vals[feat, rank],
        ),
        out / "examples.parquet",
    )
    if res.ce_diff is not None:
        worst = np.argsort(-res.ce_diff, kind="stable")[: cfg.n_worst]
        pq.write_table(
            _context_table(
                inp, cfg, pieces, res.ce_diff_index[worst], rank=np.arange(len(worst)), ce_diff=res.ce_diff[worst]
            ),
            out / "worst_tokens.parquet",
        )
    pq.write_table(
        _context_table(inp, cfg, pieces, [i for _, i in res.cofire_top], share=[s for s, _ in res.cofire_top]),
        out / "cofire.parquet",
    )
    save_weights(
        out / "ultra_low_directions.safetensors", {"encoder_mean": extra["enc_mean"], "decoder_mean": extra["dec_mean"]}
    )


def write_figures(out: Path, csv_dir: Path, cols: dict, extra: dict, res, metrics: dict, cfg) -> None:
    """PNGs into ``out`` (DVC-cached), the plot data DVC renders (topk.csv) into ``csv_dir`` (git)."""
    normal = ~cols["ultra_low"]
    plots.hist(
        out / "cluster_cosines.png",
        {"encoder": extra["cluster_enc_cos"], "decoder": extra["cluster_dec_cos"]},
        "cosine with the ultra-low cluster's mean vector",
        "Ultra-low cluster: one encoder direction?",
    )
    plots.hist(
        out / "enc_dec_cosine.png",
        {"non-ultra-low": cols["enc_dec_cos"][normal]},
        "cos(W_enc[:, i], W_dec[i])",
        f"Encoder/decoder cosine (median {metrics['enc_dec_cos_median']:.2f})",
    )
    plots.scatter(
        out / "neuron_sparsity.png",
        cols["fve_top_1"][normal],
        cols["fve_next_9"][normal],
        "fve_top_1",
        "fve_next_9",
        "Neuron sparsity of decoder rows (non-ultra-low)",
    )
    plots.hist(
        out / "kurtosis.png",
        {"SAE decoder rows": cols["kurtosis"][normal], "Gaussian baseline": extra["gauss_kurtosis"]},
        "excess kurtosis over neurons",
        "Neuron kurtosis vs a Gaussian matrix of the same shape",
        log_y=True,
    )
    if "null_share_enc" in cols:
        plots.hist(
            out / "null_space.png",
            {"encoder": cols["null_share_enc"][normal], "decoder": cols["null_share_dec"][normal]},
            f"share of norm² in W_out's null space (random: {metrics['null_share_baseline']:.2f})",
            "W_out null space",
        )
    logf = np.log10(np.maximum(cols["frequency"], 1e-8))
    plots.scatter(
        out / "de_projection.png",
        logf,
        cols["de_projection"],
        "log10 frequency (dead at -8)",
        "W_enc[:, i] · W_dec[i] (un-normalised)",
        "D/E projection",
        c=cols["b_enc"],
        clabel="b_enc",
    )
    if "logit_skew" in cols:
        plots.scatter(
            out / "logit_lens.png",
            cols["logit_skew"],
            cols["logit_kurtosis"],
            "skewness over vocabulary",
            "excess kurtosis over vocabulary",
            "Logit-lens statistics per feature",
        )
    if res.topk:
        table = [
            {"k": str(k), "ce_recovered_zero": metrics[f"topk_{k}_ce_recovered_zero"], "mse": metrics[f"topk_{k}_mse"]}
            for k in [*cfg.topk, "all"]
        ]
        plots.topk_curve(out / "topk.png", csv_dir / "topk.csv", table)
    if res.ce_diff is not None:
        plots.hist(
            out / "ce_diff.png",
            {"tokens": res.ce_diff},
            "CE(reconstruction) - CE(clean), nats",
            "Per-token CE difference",
            bins=80,
            log_y=True,
        )
