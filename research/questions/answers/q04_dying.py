"""Question 4 of the reference post: dying features and the phase transition.

Its computation (density_curve, watch, held_dying and ``answer``), registered by name; the answer stage runs
every registered question in order and writes ``results/answers.json`` (docs/questions.md, question 4;
verdicts in research/questions/FINDINGS.md)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from scipy import stats

from research.questions.answers.base import Context, QuestionParams, question
from research.questions.experiment import density_grid
from saelab.training.trainer import Schedule


def density_curve(density: pa.Table, threshold: float) -> list[dict]:
    """Per interval: tokens seen, share of features below ``threshold`` (ultra-low) and at 0 fires."""
    t, f, n = (np.asarray(density[c]) for c in ("tokens", "fires", "interval_tokens"))
    out = []
    for tok in np.unique(t):
        sel = t == tok
        rate = f[sel] / n[sel]
        out.append(
            {
                "tokens": int(tok),
                "frac_ultra_low": float((rate < threshold).mean()),
                "frac_zero_fires": float((f[sel] == 0).mean()),
                "interval_tokens": int(n[sel][0]),
            }
        )
    return out


def watch(times: np.ndarray, fires: np.ndarray, width: np.ndarray, since: dict[int, int], ultra_low: float) -> dict:
    """Each feature i watched over the density intervals that end after ``since[i]``: its fires in
    the first and the second half of them (equal halves: the middle interval of an odd count is left
    out), the Spearman correlation of fires with time, whether any of them reaches ``ultra_low``
    (revived) and whether all are silent."""
    per = []
    for i, c in since.items():
        later = times > c
        if later.sum() < 2:
            continue
        fi, wi = fires[i, later], width[later]
        half = len(fi) // 2
        rho = stats.spearmanr(np.arange(len(fi)), fi).statistic if len(fi) >= 3 and fi.std() > 0 else np.nan
        per.append(
            (
                fi[:half].sum(),
                fi[len(fi) - half :].sum(),
                rho,
                (fi / wi).max() >= ultra_low,
                fi.sum() == 0,
                fi[:half].mean(),
                fi[len(fi) - half :].mean(),
            )
        )
    if not per:
        return {"n_watched": 0}
    first, second, rho, revived, silent, mean1, mean2 = map(np.array, zip(*per))
    return {
        "n_watched": len(per),
        "share_fewer_fires_second_half": float((second < first).mean()),
        "share_more_fires_second_half": float((second > first).mean()),
        "share_silent_throughout": float(silent.mean()),
        "spearman_time_fires_median": float(np.nanmedian(rho)) if np.isfinite(rho).any() else None,
        "share_negative_trend": float((rho < 0).mean()),
        "share_revived_above_ultra_low": float(revived.mean()),
        "fires_first_half_total": int(first.sum()),
        "fires_second_half_total": int(second.sum()),
        "median_fires_per_interval_first_half": float(np.median(mean1)),
        "median_fires_per_interval_second_half": float(np.median(mean2)),
    }


def held_dying(
    density: pa.Table, held: np.ndarray, checks: list[int], window: int, threshold: float, ultra_low: float
) -> tuple[dict, list[dict]]:
    """The held-out (never resampled) features that a resampling check would have resampled: at
    some check (training token in ``checks``) their rate over the density intervals ending in the
    ``window`` tokens before it was below ``threshold``. Each is watched from its first such check
    on (``watch``). ``control``: the same measures for the held features never found dying, each
    watched from the check that found the most dying features."""
    times, fires, width = density_grid(density)
    since = {}
    for c in checks:
        inside = (times > c - window) & (times <= c)
        if not inside.any():
            continue
        rate = fires[:, inside].sum(1) / width[inside].sum()
        for i in held:
            if i not in since and rate[i] < threshold:
                since[int(i)] = c
    m = {"n_held": int(len(held)), "n_held_dying": len(since), "checks": [int(c) for c in checks]}
    m |= watch(times, fires, width, since, ultra_low)
    if since:
        busiest = max(set(since.values()), key=list(since.values()).count)
        m["control"] = {
            "watched_from": int(busiest),
            **watch(times, fires, width, {int(i): busiest for i in held if int(i) not in since}, ultra_low),
        }
    rows = [
        {"feature": i, "dying_since": c, "fires_later": " ".join(map(str, fires[i, times > c].tolist()))}
        for i, c in since.items()
        if (times > c).sum() >= 2
    ]
    return m, rows


class Params(QuestionParams):
    RUN_FIELDS = ("holdout", "unresampled")
    holdout: str = "holdout"
    """The run whose held-out features (probes.holdout) are never resampled."""
    unresampled: str | None = "resample-none"
    """A run that never resamples, watched the same way over every feature (None: skip)."""

    def check(self, every) -> None:
        if not every[self.holdout].probes.density or every[self.holdout].probes.holdout is None:
            raise ValueError(f"runs.{self.holdout}.probes: the holdout run needs density: true and a holdout share")
        if self.unresampled and not every[self.unresampled].probes.density:
            raise ValueError(f"runs.{self.unresampled}.probes: the unresampled run is watched through density: true")


@question("q4_dying", Params)
def answer(c: Context, p: Params) -> None:
    """Question 4: dying features and the phase transition (docs/questions.md, question 4)."""
    args, q, thr, runs, base, res, figs, tables = c.args, c.q, c.thr, c.runs, c.base, c.res, c.figs, c.tables
    density = {n: pq.read_table(args.models / n / "density.parquet") for n in q.every if q.every[n].probes.density}
    curves = {n: density_curve(t, thr) for n, t in density.items()}
    for n, c in curves.items():
        tables[f"q4_density_{n}"] = c
    figs["q4_ultra_low_share"] = [
        {n: ([r["tokens"] for r in c], [r["frac_ultra_low"] for r in c]) for n, c in curves.items()},
        "training tokens seen",
        "share of features below 1e-4 in the interval",
        "Ultra-low share during training (density history)",
    ]
    h = p.holdout
    held = pq.read_table(args.models / h / "holdout.parquet")["feature"].to_numpy()
    hcfg = q.sae_config(h)
    sched = Schedule.from_config(hcfg)
    checks = [s * hcfg.batch_size for s in range(sched.every, sched.stop + 1, sched.every)]
    m4, held_curve = held_dying(density[h], held, checks, hcfg.resample_window, hcfg.resample_threshold, thr)
    tables["q4_held_dying"] = held_curve
    res["q4_dying"] = m4 | {
        "resampled_total_base": int(pq.read_table(args.models / base / "resamples.parquet").num_rows),
        "ultra_low_share_by_run": {n: runs[n]["frac_ultra_low"] for n in (base, h)},
        "ce_recovered_by_run": {n: runs[n]["ce_recovered_zero"] for n in (base, h)},
    }
    none = p.unresampled
    if none in density:  # the same watch over every feature of a run that never resamples: no mass resampling nearby
        res["q4_dying_unresampled"], tables["q4_dying_unresampled"] = held_dying(
            density[none],
            np.unique(np.asarray(density[none]["feature"])),
            checks,
            hcfg.resample_window,
            hcfg.resample_threshold,
            thr,
        )
        res["q4_dying_unresampled"]["run"] = none
