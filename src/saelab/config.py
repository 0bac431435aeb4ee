"""Typed, frozen params sections, validated once at load.

Each stage reads its own section(s) of ``params.yaml`` through :func:`load_params`.
Errors name the key, the value and what is allowed, e.g.
``sae.l1_coeff: -1 must be > 0``. Unknown keys are rejected so that a typo
cannot silently fall back to a default.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer, model_validator

from saelab.errors import InputError


class ConfigError(InputError):
    """A params value is invalid; the message says which key and what is allowed."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TextConfig(_Section):
    source: str = "python-stdlib"
    """``python-stdlib``, ``dir:<path>`` or ``hf:<dataset>[:<config>]``."""
    eval_fraction: float = Field(0.1, gt=0, lt=1)
    """Share of documents (by hash of their id) held out for evaluation."""
    max_docs: Optional[int] = Field(None, gt=0)
    """Cap on documents for ``hf:`` sources (streamed); ``None`` = all."""
    text_column: str = "text"
    """Column / JSON field holding the text for jsonl, parquet and hf sources."""

    @field_validator("source")
    @classmethod
    def _source_form(cls, v: str) -> str:
        if v == "python-stdlib" or re.fullmatch(r"(dir|hf):.+", v):
            return v
        raise ValueError("must be 'python-stdlib', 'dir:<path>' or 'hf:<dataset>'")


class LMConfig(_Section):
    source: Literal["embedded", "pretrained"] = "embedded"
    """``embedded``: train tokenizer + 1-layer GELU LM here; ``pretrained``: load ``name``."""
    name: str = "gelu-1l"
    """TransformerLens model name used when ``source: pretrained``."""
    vocab_size: int = Field(4096, ge=260)
    d_model: int = Field(128, gt=0)
    d_mlp: int = Field(512, gt=0)
    n_heads: int = Field(4, gt=0)
    n_layers: int = Field(1, gt=0)
    n_ctx: int = Field(128, gt=1)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    batch_size: int = Field(32, gt=0)
    n_steps: int = Field(800, gt=0)
    warmup_steps: int = Field(50, ge=0)
    eval_rows: int = Field(256, gt=0)
    """Rows of the eval split used for the LM's own eval CE."""
    seed: int = 0

    @model_validator(mode="after")
    def _heads_divide(self) -> "LMConfig":
        if self.d_model % self.n_heads:
            raise ValueError(f"lm.d_model ({self.d_model}) must be divisible by lm.n_heads ({self.n_heads})")
        return self


class TokensConfig(_Section):
    n_ctx: int = Field(128, gt=1)
    """Tokens per row, BOS included; must not exceed the LM's context."""


class ActivationsConfig(_Section):
    hook: str = "blocks.0.mlp.hook_post"
    n_tokens: int = Field(2_000_000, gt=0)
    """Activations to cache (capped by the train split)."""
    dtype: Literal["fp16", "bf16", "fp32"] = "fp16"
    batch_rows: int = Field(64, gt=0)
    shard_tokens: int = Field(262_144, gt=0)
    row_group_tokens: int = Field(16_384, gt=0)
    seed: int = 0
    allow_nonfinite: bool = False
    device: str = "auto"
    bos: Literal["exclude", "include"] = "exclude"
    """BOS policy (docs/metrics.md, "BOS policy"): ``exclude`` leaves every BOS token out of the cache,
    training, statistics and the mean, and keeps it clean in every CE splice; ``include`` treats it
    like any other token."""


class AprilParams(_Section):
    """``sae.standard_april``: Anthropic's April 2024 recipe (docs/metrics.md, "Architectures")."""
    dec_init_norm: float = Field(0.1, gt=0)
    """Norm of every decoder row at initialisation (random directions; W_enc = W_dec^T)."""
    l1_warmup_frac: float = Field(0.05, ge=0, le=1)
    """The L1 coefficient rises linearly from 0 over this first fraction of training."""
    grad_clip: float = Field(1.0, ge=0)
    """Gradient-norm clipping before each step (0 = off)."""


class DecoderParams(_Section):
    """How the decoder rows are kept (topk, batchtopk, jumprelu; docs/metrics.md, "Architectures")."""
    decoder: Literal["unit", "free"] = "free"
    """``unit``: rows renormalised to norm 1 after every step, the gradient along each row removed (Gao et
    al. 2024, sparsify). ``free``: rows of any norm, initialised at ``dec_init_norm``, gradients clipped at
    ``grad_clip`` (SAELens's recipe); TopK and BatchTopK then select and decode with pre-activations scaled
    by the row norms (SAELens's ``rescale_acts_by_decoder_norm``). Either way the saved SAE has unit rows:
    at the end of training the norms are folded into the encoder (and JumpReLU's thresholds)."""
    dec_init_norm: float = Field(0.1, gt=0)
    """``free`` only: norm of every decoder row at initialisation (W_enc = W_dec^T)."""
    grad_clip: float = Field(1.0, ge=0)
    """``free`` only: gradient-norm clipping before each step (0 = off)."""


K_ANNEAL_FRAC = 0.8  # k_anneal_frac's default


def anneal_problem(k: int, start: int | None, frac: float, threshold_frac: float | None = None,
                   d_sae: int | None = None) -> str | None:
    """What is wrong with a k-annealing setting, or None. One check for the params (TopKParams,
    BatchTopKParams) and the classes (TopK, BatchTopK), which can also be built without params;
    ``threshold_frac``: BatchTopK's; ``d_sae``: known to the classes only."""
    if not 0 < frac < 1:  # the params' Field says so too; the classes can be built without them
        return f"k_anneal_frac ({frac}) must lie in (0, 1): the last steps train at k"
    if start is None:
        if frac != K_ANNEAL_FRAC:
            return (f"k_anneal_frac ({frac}) has no effect without k_anneal_start: set k_anneal_start (the k training "
                    f"starts at) or leave k_anneal_frac at {K_ANNEAL_FRAC}")
        return None
    if start < k:
        return f"k_anneal_start ({start}) must be >= k ({k}): the schedule falls to k; null turns it off"
    if d_sae is not None and start > d_sae:
        return f"k_anneal_start ({start}) must be <= d_sae ({d_sae}); null turns the schedule off"
    if threshold_frac is not None and frac > 1 - threshold_frac:
        return (f"k_anneal_frac ({frac}) must end before the inference threshold's window, the last threshold_frac "
                f"({threshold_frac}) of training: lower one of them")
    return None


class TopKParams(DecoderParams):
    """``sae.topk``: TopK with the AuxK dead-latent loss (Gao et al. 2024)."""
    k: int = Field(32, gt=0)
    """Active latents per token."""
    k_aux: Optional[int] = Field(None, ge=0)
    """Dead latents the AuxK loss reconstructs the residual with (null = d_in / 2)."""
    aux_coeff: float = Field(1.0, ge=0)
    """Weight of the AuxK loss (0 = off); un-normalised like the mse term. 1 is SAELens's coefficient, without
    its min(n_dead / k_aux, 1) factor (docs/metrics.md, "Architectures")."""
    dead_tokens: int = Field(200_000, gt=0)
    """A latent that has not fired for this many training tokens is dead (for AuxK)."""
    k_anneal_start: Optional[int] = Field(None, gt=0)
    """null: k from the first step. Else training starts at this many active latents per token and k falls
    geometrically to ``k`` over the first ``k_anneal_frac`` of training (docs/metrics.md, "k annealing");
    fewer dead latents at small k, measured in benchmarks/results/frontier_cpu."""
    k_anneal_frac: float = Field(K_ANNEAL_FRAC, gt=0, lt=1)
    """Fraction of training over which k anneals (only with ``k_anneal_start``; another value without it is
    refused); below 1, so the last steps train at k."""

    @model_validator(mode="after")
    def _anneal_checks(self) -> "TopKParams":
        problem = anneal_problem(self.k, self.k_anneal_start, self.k_anneal_frac, getattr(self, "threshold_frac", None))
        if problem:
            raise ValueError(problem)
        return self

    @model_serializer(mode="wrap")
    def _omit_anneal_when_off(self, handler):
        """Saved configs carry the schedule only when it is on, so SAEs saved before it existed keep their files."""
        out = handler(self)
        if self.k_anneal_start is None:
            out.pop("k_anneal_start", None)
            out.pop("k_anneal_frac", None)
        return out


class BatchTopKParams(TopKParams):
    """``sae.batchtopk``: k x batch latents per batch (Bussmann et al. 2024), JumpReLU at inference."""
    threshold_frac: float = Field(0.1, gt=0, le=1)
    """The inference threshold is the mean smallest selected activation over this last fraction of training;
    k annealing must end before it (TopKParams' check)."""


class JumpReLUParams(DecoderParams):
    """``sae.jumprelu``: learned per-feature thresholds, straight-through estimators (Rajamanoharan et al. 2024)."""
    l0_coeff: float = Field(1.0, gt=0)
    """Weight of the sparsity penalty."""
    bandwidth: float = Field(0.05, gt=0)
    """Width ε of the straight-through estimators' rectangle kernel (SAELens's default)."""
    threshold_init: float = Field(0.01, gt=0)
    sparsity: Literal["step", "tanh"] = "tanh"
    """``tanh``: Σ tanh(tanh_scale · f · ‖W_dec[i]‖) (Anthropic, January 2025); ``step``: L0 = Σ H(pre − θ)
    (the paper's; in the CPU frontier's 150-step runs its L0 responded to l0_coeff only from ``b_dec_init: zero``:
    benchmarks/results/frontier_cpu)."""
    tanh_scale: float = Field(4.0, gt=0)
    b_dec_init: Literal["mean", "zero"] = "mean"
    """b_dec at the start: the first batch's mean, or 0 as SAELens's trainer starts it. With ``step`` the start
    decides the L0 of short runs (docs/metrics.md, "b_dec's start"). Saved configs carry it only when ``zero``."""

    @model_serializer(mode="wrap")
    def _omit_default_start(self, handler):
        out = handler(self)
        if self.b_dec_init == "mean":  # as TopKParams: SAEs saved before the key existed keep their files
            out.pop("b_dec_init", None)
        return out


ARCHITECTURES = ("standard", "standard_april", "topk", "batchtopk", "jumprelu")


class SAEConfig(_Section):
    architecture: Literal[ARCHITECTURES] = "standard"
    """Registered SAE architecture (src/saelab/architectures.py); ``standard`` is the seed's recipe."""
    expansion: Optional[int] = Field(4, gt=0)
    """d_sae = expansion * d_in, unless ``d_sae`` is given."""
    d_sae: Optional[int] = Field(None, gt=0)
    l1_coeff: float = Field(1.0, gt=0)
    """Multiplies mean over the batch of sum over features of |f| (batch-size independent)."""
    lr: float = Field(3e-3, gt=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.99, ge=0, lt=1)
    batch_size: int = Field(2048, gt=0)
    n_tokens: int = Field(2_000_000, gt=0)
    seed: int = 0
    resample_every: int = Field(250_000, gt=0)
    """Tokens between resampling checks."""
    resample_window: int = Field(250_000, gt=0)
    """Tokens over which firing frequency is counted before each check."""
    resample_threshold: float = Field(1e-5, ge=0, lt=1)
    """Features firing on a smaller share of the window are re-initialised."""
    resample_stop: float = Field(0.7, ge=0, le=1)
    """No resampling after this fraction of training, so revived features can settle."""
    lr_warmup_tokens: int = Field(50_000, ge=0)
    lr_decay_frac: float = Field(0.2, ge=0, le=1)
    """Linear decay to zero over this final fraction of training (0 = constant lr)."""
    dtype: Literal["fp32", "bf16"] = "fp32"
    """bf16 = autocast with fp32 master weights."""
    device: str = "auto"
    source: Literal["cache", "stream"] = "cache"
    """``cache``: read the Parquet activation cache; ``stream``: run the LM during training
    through an on-device shuffle buffer (no disk for activations; hook and dtype from ``activations``)."""
    stream_buffer_tokens: int = Field(262_144, gt=0)
    """Shuffle-buffer size in tokens for ``source: stream``; half is handed out per refill."""
    stream_batch_rows: int = Field(32, gt=0)
    """Prompts per LM forward pass when refilling the stream buffer."""
    compile: bool = False
    """torch.compile the forward pass and losses (pays on GPUs; a first-step compile cost on CPU)."""
    log_every: int = Field(20, gt=0)
    """Steps between reading metrics off the device and logging them."""
    checkpoint_every: int = Field(200, ge=0)
    """Steps between resumable checkpoints (0 = never)."""
    resample: Literal["auto", "anthropic", "reinit", "none"] = "auto"
    """Dead-feature resampling: ``anthropic`` (Towards Monosemanticity), ``reinit`` (a fresh draw of the
    initialisation, what the seed did), ``none``; ``auto`` = anthropic for standard, none for the others."""
    normalize_activations: Literal["none", "mean_norm"] = "none"
    """``mean_norm``: train on x · s with E‖s·x‖² = d_in (s from the first batch), folded into the saved weights."""
    standard_april: AprilParams = AprilParams()
    topk: TopKParams = TopKParams()
    batchtopk: BatchTopKParams = BatchTopKParams()
    jumprelu: JumpReLUParams = JumpReLUParams()

    @model_validator(mode="after")
    def _width(self) -> "SAEConfig":
        if self.expansion is None and self.d_sae is None:
            raise ValueError("set sae.expansion or sae.d_sae")
        if self.source == "stream" and self.stream_buffer_tokens < 2 * self.batch_size:
            raise ValueError(
                f"sae.stream_buffer_tokens ({self.stream_buffer_tokens}) must be at least 2 x sae.batch_size "
                f"({self.batch_size}): half the buffer is handed out per refill"
            )
        steps = self.n_tokens // self.batch_size
        if self.architecture == "batchtopk" and steps - math.ceil(steps * (1 - self.batchtopk.threshold_frac)) < 1:
            raise ValueError(
                f"sae.batchtopk.threshold_frac ({self.batchtopk.threshold_frac}) x {steps} training steps leaves no "
                "step to estimate the inference threshold from; raise it or sae.n_tokens"
            )
        if self.resample_window > self.resample_every:
            raise ValueError(
                f"sae.resample_window ({self.resample_window}) must be <= sae.resample_every ({self.resample_every})"
            )
        return self

    def width(self, d_in: int) -> int:
        return self.d_sae if self.d_sae is not None else self.expansion * d_in

    def arch_params(self) -> dict:
        """Constructor arguments of the chosen architecture (its section; l1_coeff for the L1 ones)."""
        if self.architecture == "standard":
            return {"l1_coeff": self.l1_coeff}
        if self.architecture == "standard_april":
            return {"l1_coeff": self.l1_coeff, **self.standard_april.model_dump()}
        return getattr(self, self.architecture).model_dump()

    def resample_mode(self) -> str:
        if self.resample != "auto":
            return self.resample
        return "anthropic" if self.architecture == "standard" else "none"


class EvaluateConfig(_Section):
    max_tokens: Optional[int] = Field(None, gt=0)
    """Eval tokens for feature statistics (frequency, L0, MSE, ...); ``None`` = the whole eval split."""
    ce_max_tokens: Optional[int] = Field(131_072, gt=0)
    """Eval tokens for every CE metric (evaluate's 4 passes, analysis's top-k and per-token CE);
    ``None`` = same as max_tokens."""
    seed: int = 0
    """Seed of the eval sample: one permutation of the eval rows shared by evaluate, analyze and compare."""
    batch_rows: int = Field(64, gt=0)
    ultra_low_threshold: float = Field(1e-4, gt=0, lt=1)
    """Frequency below which a feature is ultra-low (dead included); the one threshold every stage uses."""
    dense_threshold: float = Field(1e-2, gt=0, lt=1)
    """Frequency above which a feature is dense."""
    device: str = "auto"


class AnalysisConfig(_Section):
    max_tokens: Optional[int] = Field(None, gt=0)
    """Eval tokens for max-activating examples and ultra-low co-firing; ``None`` = whole eval split."""
    topk: tuple[int, ...] = (1, 2, 5, 10, 20)
    """k values for top-k ablation; "all" (plain reconstruction) is always added."""
    n_examples: int = Field(10, gt=0)
    context_left: int = Field(16, ge=0)
    context_right: int = Field(4, ge=0)
    n_logit_tokens: int = Field(10, gt=0)
    n_worst: int = Field(20, gt=0)
    cluster_cos: float = Field(0.95, gt=-1, lt=1)
    batch_rows: int = Field(64, gt=0)
    seed: int = 0
    device: str = "auto"

    @field_validator("topk")
    @classmethod
    def _ks(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(k <= 0 for k in v):
            raise ValueError("must be a non-empty list of positive integers")
        return tuple(sorted(set(v)))


class CompareConfig(_Section):
    max_tokens: Optional[int] = Field(None, gt=0)
    """Eval tokens (a prefix of evaluate's seeded sample) for each seed's frequencies and baselines; ``None`` =
    the whole eval split, the rows on which evaluate measures frequencies, so both stages find the same ultra-low set."""
    hungarian_max: int = Field(8192, gt=0)
    """Largest d_sae matched exactly (Hungarian); wider SAEs get a greedy one-to-one matching."""
    n_components: int = Field(5, gt=0)
    """Principal components of the activations compared with the ultra-low direction (baseline)."""
    batch_rows: int = Field(64, gt=0)
    device: str = "auto"


class ReportConfig(_Section):
    density_bins: int = Field(60, gt=0)


class Params(_Section):
    seeds: tuple[int, ...] = (0, 1)
    """One SAE per seed (the dvc.yaml matrix); the first is evaluated and analysed."""
    text: TextConfig = TextConfig()
    lm: LMConfig = LMConfig()
    tokens: TokensConfig = TokensConfig()
    activations: ActivationsConfig = ActivationsConfig()
    sae: SAEConfig = SAEConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    analysis: AnalysisConfig = AnalysisConfig()
    compare: CompareConfig = CompareConfig()
    report: ReportConfig = ReportConfig()

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or len(set(v)) != len(v) or any(s < 0 for s in v):
            raise ValueError("must be a non-empty list of distinct non-negative integers")
        return v

    @model_validator(mode="after")
    def _ctx(self) -> "Params":
        if "seed" in self.sae.model_fields_set:
            raise ValueError("sae.seed: the SAE seeds come from the top-level `seeds` list (one SAE per seed)")
        if self.lm.source == "embedded" and self.tokens.n_ctx > self.lm.n_ctx:
            raise ValueError(f"tokens.n_ctx ({self.tokens.n_ctx}) must be <= lm.n_ctx ({self.lm.n_ctx})")
        return self


def _format(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        msg = msg.replace("Input should be", "must be").replace("Extra inputs are not permitted", "unknown key (typo?)")
        if key:  # the value when it is one; a section's check (a dict input) names its own keys in the message
            show = e["type"] != "extra_forbidden" and not isinstance(e["input"], dict)
            lines.append(f"{key}: {e['input']!r} {msg}" if show else f"{key}: {msg}")
        else:
            lines.append(msg)
    return "invalid params:\n  " + "\n  ".join(lines)


def parse_params(raw: dict) -> Params:
    """Validate a params mapping; raise ConfigError listing every bad key."""
    try:
        return Params.model_validate(raw or {})
    except ValidationError as err:
        raise ConfigError(_format(err)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: params file not found (run from the repository root or pass --params)")
    return parse_params(yaml.safe_load(path.read_text()))
