"""The reference post's open questions as experiments (research/questions/dvc.yaml, docs/questions.md).

Every run starts from the default pipeline's params (``base``: ../../params.yaml): its ``sae``
section, its activation cache and LM, with the run's overrides, a hook (question 7), a seed
(question 12) and training probes (research.questions.probes). ``research/questions/params.yaml`` holds the runs
and the knobs of the answers; ``python -m research.questions.stages.answer`` (the ``answer`` stage) turns
the trained runs into one JSON per question, tables and figures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml
from pydantic import ConfigDict, Field, ValidationError, model_validator

from research.questions import registry
from research.questions.probes import DensityHistory, EncoderPenalty, GradientSum, Holdout, Orthogonalize, Tie
from saelab.config import Params, SAEConfig, load_params
from saelab.data.hooks import covered_positions
from saelab.eval.evaluate import EvalSample, clean_pass, spliced_ce
from saelab.eval.metrics import ReconSums, ce_recovered
from saelab.section import ConfigError, Section, format_errors, merge


class ProbeConfig(Section):
    density: bool = False
    """Record every feature's firing per ``density_every`` tokens and every resampling (Parquet)."""
    grad_sum: bool = False
    """Sum each feature's encoder gradient over training (question 1)."""
    holdout: float | None = Field(None, gt=0, lt=1)
    """This share of features (seeded) is never resampled (question 4)."""
    orthogonalize: str | None = None
    """A run name: keep encoder columns orthogonal to that run's training-time ultra-low direction (question 2)."""
    enc_l1: float | None = Field(None, gt=0)
    """Add enc_l1 x sum |W_enc| to the loss (question 8)."""
    enc_l2: float | None = Field(None, gt=0)
    """Add enc_l2 x sum W_enc² to the loss (question 8)."""
    tie: bool = False
    """W_enc = W_decᵀ throughout (question 8)."""


class QRun(Section):
    """One SAE: the default ``sae`` section with these overrides."""

    sae: dict = {}
    """Overrides of ../../params.yaml's ``sae`` section (nested dicts merge)."""
    seed: int = 0
    """The SAE's seed: initialisation and data order (the default pipeline's train@<seed> for seed 0 and 1)."""
    hook: str | None = None
    """Train on this hook's activations (its own cache, stage ``activations``); None = the default cache."""
    probes: ProbeConfig = ProbeConfig()


class AnswerConfig(Section):
    """The answer stage's shared knobs; every other key is a registered question's own section (``answer.<key>``,
    research/questions/registry.py), checked by that question's params model once the answers are loaded."""

    model_config = ConfigDict(extra="allow", frozen=True)

    eval_tokens: int = Field(262_144, gt=0)
    """Eval tokens (a seeded sample of the eval split, evaluate.seed) for every run's frequencies, MSE, L0 and CE."""
    batch_rows: int = Field(64, gt=0)
    base: str = "base"
    """The default recipe with density history and gradient sums: the run most questions read."""

    def params(self, key: str) -> registry.QuestionParams:
        """Question ``key``'s validated params (the answers package must be imported)."""
        p = (self.__pydantic_extra__ or {}).get(key)
        if not isinstance(p, registry.QuestionParams):
            raise RuntimeError(f"answer.{key}: not validated; import research.questions.answers before loading params")
        return p


class QParams(Section):
    base: str = "../../params.yaml"
    """The default pipeline's params file (relative to questions/)."""
    density_every: int = Field(100_000, gt=0)
    """Training tokens per density-history interval."""
    hooks: tuple[str, ...] = ()
    """Hooks cached by stage ``activations`` (data/<hook>) for ``hook_runs``."""
    runs: dict[str, QRun]
    """Runs on the default activation cache (stage ``train``)."""
    hook_runs: dict[str, QRun] = {}
    """Runs on another hook's cache (stage ``train_hook``); each sets ``hook``, one of ``hooks``."""
    derived_runs: dict[str, QRun] = {}
    """Runs that read another run's output (stage ``train_derived``): ``probes.orthogonalize``."""
    answer: AnswerConfig = AnswerConfig()
    default: Params | None = None  # filled from ``base`` on load

    @property
    def every(self) -> dict[str, QRun]:
        """All runs, whatever their stage."""
        return {**self.runs, **self.hook_runs, **self.derived_runs}

    @model_validator(mode="after")
    def _check(self) -> QParams:
        groups = (self.runs, self.hook_runs, self.derived_runs)
        if len(self.every) != sum(map(len, groups)):
            raise ValueError("runs, hook_runs and derived_runs must not share a name")
        for name, run in self.every.items():
            if (run.hook is not None) != (name in self.hook_runs) or (
                run.hook is not None and run.hook not in self.hooks
            ):
                raise ValueError(
                    f"{name}: a run sets `hook` (one of hooks {list(self.hooks)}) exactly when it is in hook_runs"
                )
            if (run.probes.orthogonalize is not None) != (name in self.derived_runs):
                raise ValueError(f"{name}: a run sets probes.orthogonalize exactly when it is in derived_runs")
        for name, run in self.derived_runs.items():
            o = run.probes.orthogonalize
            if o not in self.runs or not self.runs[o].probes.density:
                raise ValueError(
                    f"runs.{name}.probes.orthogonalize: {o!r} must name a run with probes.density: true "
                    "(its training-time ultra-low direction is read from its density history)"
                )
        a = self.answer
        if a.base not in self.every:
            raise ValueError(f"answer.base: {a.base!r} is not a run (runs: {sorted(self.every)})")
        if not self.every[a.base].probes.density or not self.every[a.base].probes.grad_sum:
            raise ValueError(
                f"runs.{a.base}.probes: the base run needs density: true and grad_sum: true (questions 1 and 4)"
            )
        if registry.loaded():  # each question's own section, checked by its own model (registry.validate)
            a.__pydantic_extra__.update(registry.validate(a.__pydantic_extra__, self.every))
        return self

    def sae_config(self, run: str) -> SAEConfig:
        r = self.every[run]
        raw = merge(self.default.sae.model_dump(), r.sae) | {"seed": r.seed, "checkpoint_every": 0}
        try:
            return SAEConfig.model_validate(raw)
        except ValidationError as err:
            raise ConfigError(f"runs.{run}.sae: " + format_errors(err).removeprefix("invalid params:\n  ")) from None

    def hook(self, run: str) -> str:
        return self.every[run].hook or self.default.activations.hook


def load_question_params(path: str | Path = "params.yaml") -> QParams:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: params file not found (run `dvc repro` inside questions/ or pass --params)")
    try:
        q = QParams.model_validate(yaml.safe_load(path.read_text()) or {})
    except ValidationError as err:
        raise ConfigError(format_errors(err)) from None
    q = q.model_copy(update={"default": load_params(path.parent / q.base)})
    for name in q.every:
        q.sae_config(name)  # every run's SAE params are valid before anything trains
    return q


def probes_for(q: QParams, run: str, sae, direction: torch.Tensor | None = None) -> list:
    """The training probes of ``run`` (``direction``: the orthogonalize run's unit vector)."""
    p, out = q.every[run].probes, []
    if p.density:
        out.append(DensityHistory(q.density_every))
    if p.grad_sum:
        out.append(GradientSum())
    if p.holdout is not None:
        out.append(Holdout(sae.d_sae, p.holdout, q.every[run].seed + 12345))
    if p.orthogonalize is not None and direction is not None:
        out.append(Orthogonalize(direction))
    if p.enc_l1 is not None:
        out.append(EncoderPenalty("l1", p.enc_l1))
    if p.enc_l2 is not None:
        out.append(EncoderPenalty("l2", p.enc_l2))
    if p.tie:
        out.append(Tie(sae))
    return out


# ------------------------------------------------------------------ training-time density


def density_grid(density) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A density history (probes.DensityHistory: one row per feature per interval) as arrays:
    interval end tokens (T,), fires (d_sae, T) and interval widths in tokens (T,)."""
    t, feat, f, n = (np.asarray(density[c]) for c in ("tokens", "feature", "fires", "interval_tokens"))
    times = np.unique(t)
    d = int(feat.max()) + 1
    if len(t) != len(times) * d:
        raise ValueError(f"density history: {len(t)} rows, not one per feature ({d}) per interval ({len(times)})")
    order = np.lexsort((feat, t))
    return times, f[order].reshape(len(times), d).T, n[order].reshape(len(times), d)[:, 0]


def rates_after(density, start_tokens: int) -> np.ndarray:
    """Per-feature firing rate over the intervals that end after ``start_tokens`` (a density table)."""
    times, fires, width = density_grid(density)
    late = times > start_tokens
    return fires[:, late].sum(1) / max(int(width[late].sum()), 1)


def training_direction(W_enc: torch.Tensor, rates: np.ndarray, threshold: float) -> torch.Tensor | None:
    """The ultra-low direction (saelab.eval.compare.ultra_low_direction) of the features whose training
    rate is below ``threshold``; None when there are none (the orthogonal run then has nothing to avoid)."""
    from saelab.eval.compare import ultra_low_direction

    d = ultra_low_direction(W_enc, rates, threshold)
    return None if d is None else d.float()


# ------------------------------------------------------------------ evaluation on one fixed sample


class EvalSet:
    """A seeded sample of eval rows for one hook, its activations (covered positions) and the clean
    and zero-ablation CE, computed once; ``score`` then splices any SAE, optionally with its
    feature activations transformed (mask features, drop the smallest, ...)."""

    @torch.no_grad()
    def __init__(
        self,
        model,
        rows: np.ndarray,
        hook: str,
        ev,
        n_tokens: int,
        batch_rows: int,
        device,
        exclude_token: int | None = None,
    ):
        self.model, self.hook, self.device, self.batch_rows = model, hook, device, batch_rows
        sample = EvalSample.draw(len(rows), rows.shape[1], n_tokens, ev, seed=ev.seed)
        self.rows = rows[np.concatenate([sample.ce, sample.rest])]
        self.tokens, self.covered, self.x, self.ce_clean, self.ce_zero, self.n_ce = [], [], [], 0.0, 0.0, 0
        for i in range(0, len(self.rows), batch_rows):
            tokens = torch.from_numpy(self.rows[i : i + batch_rows].astype(np.int64)).to(device)
            covered = covered_positions(tokens, exclude_token)
            ce, x = clean_pass(model, tokens, hook)
            zero = spliced_ce(model, tokens, hook, torch.zeros_like(x), covered)
            self.tokens.append(tokens)
            self.covered.append(covered)
            self.x.append(x.float())
            self.ce_clean += ce.double().sum().item()
            self.ce_zero += zero.double().sum().item()
            self.n_ce += ce.numel()
        self.ce_clean /= self.n_ce
        self.ce_zero /= self.n_ce

    @property
    def n_tokens(self) -> int:
        return int(sum(c.sum().item() for c in self.covered))

    def activations(self):
        """(B*T covered, d) activation batches."""
        for x, c in zip(self.x, self.covered):
            yield x.reshape(-1, x.shape[-1])[c.reshape(-1)]

    @torch.no_grad()
    def score(self, sae, transform=None, ce: bool = True) -> dict:
        """CE recovered (zero ablation) and the reconstruction metrics (saelab.eval.metrics: MSE, EV, L0, L2 ratio,
        per-feature frequencies) of ``sae`` with ``transform(f) -> f`` applied before decoding (the features
        as read for L0 and frequencies)."""
        sums = ReconSums()
        ce_sae = 0.0
        for tokens, covered, x in zip(self.tokens, self.covered, self.x):
            flat = x.reshape(-1, x.shape[-1])
            f = sae.encode(flat)
            if transform is not None:
                f = transform(f)
            x_hat = sae.decode(f)
            keep = covered.reshape(-1)
            sums.add(flat[keep], x_hat[keep], f[keep])
            if ce:
                values = x_hat.reshape(x.shape)
                ce_sae += spliced_ce(self.model, tokens, self.hook, values, covered).double().sum().item()
        out = sums.result() | {"freq": sums.freq()}
        if ce:
            ce_sae /= self.n_ce
            out |= {
                "ce_sae": ce_sae,
                "ce_clean": self.ce_clean,
                "ce_zero": self.ce_zero,
                "ce_recovered_zero": ce_recovered(self.ce_clean, ce_sae, self.ce_zero),
                "ce_tokens": self.n_ce,
            }
        return out
