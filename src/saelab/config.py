"""Typed, frozen params sections, validated once at load.

Each stage reads its own section(s) of ``params.yaml`` through :func:`load_params`.
Errors name the key, the value and what is allowed, e.g.
``sae.l1_coeff: -1 must be > 0``. Unknown keys are rejected so that a typo
cannot silently fall back to a default.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import ConfigDict, Field, ValidationError, field_validator, model_serializer, model_validator
from pydantic_core import InitErrorDetails

from saelab import registry
from saelab.section import ConfigError, Section, format_errors


class TextConfig(Section):
    source: str = "python-stdlib"
    """``python-stdlib``, ``dir:<path>`` or ``hf:<dataset>[:<config>]``."""
    eval_fraction: float = Field(0.1, gt=0, lt=1)
    """Share of documents (by hash of their id) held out for evaluation."""
    max_docs: int | None = Field(None, gt=0)
    """Cap on documents for ``hf:`` sources (streamed); ``None`` = all."""
    text_column: str = "text"
    """Column / JSON field holding the text for jsonl, parquet and hf sources."""

    @field_validator("source")
    @classmethod
    def _source_form(cls, v: str) -> str:
        if v == "python-stdlib" or re.fullmatch(r"(dir|hf):.+", v):
            return v
        raise ValueError("must be 'python-stdlib', 'dir:<path>' or 'hf:<dataset>'")


class LMConfig(Section):
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
    def _heads_divide(self) -> LMConfig:
        if self.d_model % self.n_heads:
            raise ValueError(f"lm.d_model ({self.d_model}) must be divisible by lm.n_heads ({self.n_heads})")
        return self


class TokensConfig(Section):
    n_ctx: int = Field(128, gt=1)
    """Tokens per row, BOS included; must not exceed the LM's context."""


# The hook points an SAE can read (TransformerLens names, ``blocks.<layer>.<suffix>``), in the order a block's
# forward pass reaches them (a transcoder reads an earlier one and writes a later one); data/hooks.py checks a
# name against a loaded LM, this module checks its form at params load, before any work.
HOOK_SUFFIXES = (
    "hook_resid_pre",
    "ln1.hook_normalized",
    "hook_attn_out",
    "ln2.hook_normalized",
    "mlp.hook_pre",
    "mlp.hook_post",
    "hook_mlp_out",
    "hook_resid_post",
)
HOOK_NAME = re.compile(r"blocks\.(0|[1-9]\d*)\.(" + "|".join(re.escape(s) for s in HOOK_SUFFIXES) + ")")
# hooks an SAE cannot be spliced at, and why (each refused by name wherever a hook is checked)
UNSPLICEABLE = {
    "hook_resid_mid": "TransformerLens 4's bridge aliases it to ln2.hook_in, so a splice there changes only the "
    "MLP's input and the residual stream carries the clean value on; use hook_resid_pre, hook_resid_post, "
    "hook_attn_out or mlp.hook_pre instead",
}


# hooks a transcoder may read but no SAE is spliced at (an SAE site or a transcoder's target), and why
INPUT_ONLY = {
    suffix: "TransformerLens 4's bridge hooks the LayerNorm's output before its scale and bias and, when the value "
    "is edited, applies them on a fallback path of its own, so a splice there is not the clean computation; it "
    "serves as a transcoder's input only (activations.transcoders: {<target>: <this hook>})"
    for suffix in ("ln1.hook_normalized", "ln2.hook_normalized")
}


def unspliceable(name: str) -> str | None:
    """Why an SAE cannot be spliced at hook ``name`` (None when it can)."""
    return next((why for suffix, why in UNSPLICEABLE.items() if str(name).endswith(suffix)), None)


def site_layer(name: str) -> int:
    """:func:`hook_layer` of a hook an SAE is spliced at (a site, a transcoder's target): input-only hooks refused."""
    layer = hook_layer(name)
    if (why := next((w for suffix, w in INPUT_ONLY.items() if name.endswith(suffix)), None)) is not None:
        raise ValueError(f"{name!r} cannot be a site: {why}")
    return layer


def hook_layer(name: str) -> int:
    """The block index of a hook name of the supported form; ValueError naming the form otherwise."""
    if (why := unspliceable(name)) is not None:
        raise ValueError(f"{name!r} is not supported: {why}")
    m = HOOK_NAME.fullmatch(name) if isinstance(name, str) else None
    if m is None:
        raise ValueError(f"{name!r} is not a hook name of the form blocks.<layer>.<suffix>, suffix one of: "
                         + ", ".join(HOOK_SUFFIXES))  # fmt: skip
    return int(m.group(1))


def hook_position(name: str) -> tuple[int, int]:
    """(block, place in the block's forward pass) of a hook name: which of two hooks the LM reaches first."""
    return hook_layer(name), HOOK_SUFFIXES.index(name.split(".", 2)[2])


class ActivationsConfig(Section):
    hook: str = "blocks.0.mlp.hook_post"
    """The site of the root pipeline's SAEs (train, evaluate, analyze, browser, finetune, compare)."""
    extra_hooks: tuple[str, ...] = ()
    """Further sites, cached in the same LM pass as ``hook`` (one cache each, ``data/sites/<hook>/``), each with
    SAEs of its own (stages ``train_site``, ``evaluate_site``; docs/usage.md, "Many sites"). Empty: one site."""
    transcoders: dict[str, str] = {}
    """Transcoders, ``{target hook: input hook}``: an SAE reading the input hook and reconstructing the target
    (of the same width, reached later in the pass), e.g. ``{blocks.0.hook_mlp_out: blocks.0.ln2.hook_normalized}``
    (the MLP). Both are cached in the same LM pass (``data/sites/transcoders/<target>/``); stages
    ``train_transcoder``, ``evaluate_transcoder`` (docs/metrics.md, "Transcoders"). Empty: none."""
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

    @field_validator("hook")
    @classmethod
    def _site(cls, v):
        site_layer(v)
        return v

    @field_validator("extra_hooks", mode="before")
    @classmethod
    def _hook_list(cls, v):
        if isinstance(v, str) or not isinstance(v, list | tuple):
            raise ValueError(f"must be a list of hook names, e.g. [blocks.1.mlp.hook_post], not {v!r}")
        for name in v:
            site_layer(name)
        if len(set(v)) != len(v):
            twice = sorted(h for h in set(v) if list(v).count(h) > 1)
            raise ValueError(f"lists a hook twice: {twice}; list each site once")
        return tuple(v)

    @field_validator("transcoders", mode="before")
    @classmethod
    def _pairs(cls, v):
        if not isinstance(v, dict):
            raise ValueError("must be a mapping {target hook: input hook}, e.g. "
                             "{blocks.0.hook_mlp_out: blocks.0.ln2.hook_normalized}")  # fmt: skip
        for target, source in v.items():
            hook_layer(target), hook_layer(source)  # the forms first: the order check below reads them
            if source == target:
                raise ValueError(f"{target}: a transcoder from a hook to itself is an SAE; list it in "
                                 "activations.extra_hooks instead")  # fmt: skip
            if hook_position(source) > hook_position(target):
                raise ValueError(
                    f"{target}: its input {source} comes after it in the forward pass; a transcoder maps an earlier "
                    f"hook to a later one, written {{target: input}}: {{{source}: {target}}}"
                )
            site_layer(target)
            if (".mlp.hook_" in source) != (".mlp.hook_" in target):
                raise ValueError(
                    f"{target}: {source} and {target} differ in width (d_mlp vs d_model): a transcoder here "
                    "reconstructs a target as wide as its input; pair ln2.hook_normalized -> hook_mlp_out or "
                    "mlp.hook_pre -> mlp.hook_post"
                )
        return v

    @model_validator(mode="after")
    def _primary_apart(self) -> ActivationsConfig:
        if self.hook in self.extra_hooks:
            raise ValueError(f"activations.extra_hooks lists {self.hook}, which is activations.hook already: "
                             "drop it from extra_hooks")  # fmt: skip
        return self

    @property
    def hooks(self) -> tuple[str, ...]:
        """Every site, ``hook`` first."""
        return (self.hook, *self.extra_hooks)

    @property
    def cached_hooks(self) -> tuple[str, ...]:
        """Every hook the activations stage caches: the sites, then the transcoders' hooks not among them."""
        extra = [h for pair in self.transcoders.items() for h in pair]
        return tuple(dict.fromkeys((*self.hooks, *extra)))


def _relocated(err: ValidationError, prefix: tuple) -> list:
    """``err``'s errors as InitErrorDetails under ``prefix`` (to raise them again from a wrap validator)."""
    return [
        InitErrorDetails(type=e["type"], loc=(*prefix, *e["loc"]), input=e["input"], ctx=e.get("ctx", {}))
        for e in err.errors()
    ]


def site_params(acts: ActivationsConfig, hook: str | None) -> ActivationsConfig:
    """``activations`` for one site: ``hook`` (None: ``activations.hook``) must be one of ``activations.hooks``."""
    if hook is None or hook == acts.hook:
        return acts
    if hook not in acts.extra_hooks:
        raise ConfigError(f"--hook {hook} is not a site of these params: activations.hooks are {list(acts.hooks)} "
                          "(add it to activations.extra_hooks)")  # fmt: skip
    return acts.model_copy(update={"hook": hook, "extra_hooks": tuple(h for h in acts.hooks if h != hook)})


def transcoder_input(acts: ActivationsConfig, target: str | None) -> str | None:
    """The input hook of the transcoder writing ``target`` (None for None: no transcoder)."""
    if target is None:
        return None
    if target not in acts.transcoders:
        raise ConfigError(f"--transcoder {target} is not a transcoder of these params: activations.transcoders has "
                          f"{sorted(acts.transcoders) or 'none'} (add {{{target}: <input hook>}} to it)")  # fmt: skip
    return acts.transcoders[target]


# _DEFERRED: the stages before train (text, lm, tokens, activations) import no architecture, so that
# dvc.yaml need not rerun them when an architecture's module changes; there the architecture name and
# sections are accepted unchecked, and every stage that builds or reads an SAE (it imports saelab.saes,
# which registers them all) checks them before any work. tests/test_config.py holds both sides.


class FunctionalParams(Section):
    """``sae.functional``: the weights of a functional loss (``sae.loss: kl | kl_ds``; docs/metrics.md,
    "Functional training"). The architecture's own sparsity terms keep their coefficients."""

    kl_coeff: float = Field(1.0, gt=0)
    """Multiplies KL(clean ‖ spliced), nats per covered token."""
    mse_coeff: float = Field(0.0, ge=0)
    """Multiplies the activation MSE at the SAE's own hook and TopK's AuxK (an activation MSE too); 0: KL alone,
    as Braun et al.'s e2e, and no AuxK."""
    ds_coeff: float = Field(1.0, ge=0)
    """``kl_ds``: multiplies the mean, over the downstream sites, of the MSE of the spliced run's residual
    stream against the clean run's (sum over dims, mean over covered tokens)."""


class SAEConfig(Section):
    """``sae``: the SAE and its training. Besides the keys below it holds one section per registered
    architecture (``sae.topk``, ...: its class's ``Params``, saelab.registry), validated here with the
    rest and dumped after them in registration order, so a new architecture needs no edit of this class."""

    model_config = ConfigDict(extra="allow", frozen=True)  # the architecture sections; _sections refuses the rest

    architecture: str = "standard"
    """Registered SAE architecture (src/saelab/saes/); ``standard`` is the reference recipe."""
    expansion: int | None = Field(4, gt=0)
    """d_sae = expansion * d_in, unless ``d_sae`` is given."""
    d_sae: int | None = Field(None, gt=0)
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
    initialisation, what the reference did), ``none``; ``auto`` = anthropic for standard, none for the others."""
    normalize_activations: Literal["none", "mean_norm"] = "none"
    """``mean_norm``: train on x · s with E‖s·x‖² = d_in (s from the first batch), folded into the saved weights."""
    loss: Literal["mse", "kl", "kl_ds"] = "mse"
    """What the SAE is trained to preserve (docs/metrics.md, "Functional training"): ``mse`` the activations;
    ``kl`` the LM's next-token distribution, KL(clean ‖ SAE spliced in), plus the architecture's sparsity terms;
    ``kl_ds`` adds the MSE of the residual stream after the hook's block and every later one (a ``hook_resid_post``
    hook: after every later block; the last block's resid_post has nothing downstream and is refused). ``kl`` and
    ``kl_ds`` run the LM in the training loop: they need ``source: stream``."""
    functional: FunctionalParams = FunctionalParams()
    """Weights of ``kl`` / ``kl_ds``."""

    @model_serializer(mode="wrap")
    def _omit_mse_defaults(self, handler):
        out = handler(self)
        if self.loss == "mse" and self.functional == FunctionalParams():  # SAEs saved before the keys existed
            out.pop("loss", None)  # keep their train_params (and checkpoints their fingerprints)
            out.pop("functional", None)
        return out

    @model_validator(mode="wrap")
    @classmethod
    def _sections(cls, data, handler):
        """Validate the keys above with ``handler`` and each architecture's section with its own model;
        every error of both, with its key path, is raised together (an unknown key is one of them)."""
        if not isinstance(data, dict):
            return handler(data)
        known, strict = registry.sections(), registry.builtins_loaded()
        errors, found = [], {}
        for key in data:
            if key in cls.model_fields or key in known:
                continue
            if strict or not isinstance(data[key], dict):
                errors.append(InitErrorDetails(type="extra_forbidden", loc=(key,), input=data[key]))
            else:  # an architecture section, checked by the stages that import saelab.saes (_DEFERRED)
                found[key] = data[key]
        for name, model in known.items():
            try:
                found[name] = model.model_validate(data.get(name, {}))
            except ValidationError as err:
                errors += _relocated(err, (name,))
        try:
            out = handler({k: v for k, v in data.items() if k in cls.model_fields})
        except ValidationError as err:
            errors = _relocated(err, ()) + errors
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        out.__pydantic_extra__.update(found)
        out._check_sections()
        return out

    @field_validator("architecture")
    @classmethod
    def _registered(cls, v: str) -> str:
        if registry.builtins_loaded() and v not in registry.REGISTRY:
            raise ValueError(f"must be a registered architecture: {', '.join(registry.REGISTRY)}")
        return v

    def section(self, name: str | None = None):
        """The params section of architecture ``name`` (default: the chosen one), or None if it has none."""
        return (self.__pydantic_extra__ or {}).get(name or self.architecture)

    def _check_sections(self) -> None:
        """The chosen architecture's own checks against the rest of the section (``check_with``)."""
        own = self.section()
        if own is not None and hasattr(own, "check_with"):
            own.check_with(self)

    @model_validator(mode="after")
    def _width(self) -> SAEConfig:
        if self.expansion is None and self.d_sae is None:
            raise ValueError("set sae.expansion or sae.d_sae")
        if self.source == "stream" and self.stream_buffer_tokens < 2 * self.batch_size:
            raise ValueError(
                f"sae.stream_buffer_tokens ({self.stream_buffer_tokens}) must be at least 2 x sae.batch_size "
                f"({self.batch_size}): half the buffer is handed out per refill"
            )
        if self.loss != "mse" and self.source != "stream":
            raise ValueError(
                f"sae.loss: {self.loss} runs the LM in the training loop, which the activation cache cannot: "
                "set sae.source: stream (or sae.loss: mse)"
            )
        if self.resample_window > self.resample_every:
            raise ValueError(
                f"sae.resample_window ({self.resample_window}) must be <= sae.resample_every ({self.resample_every})"
            )
        return self

    def width(self, d_in: int) -> int:
        return self.d_sae if self.d_sae is not None else self.expansion * d_in

    def arch_params(self) -> dict:
        """Constructor arguments of the chosen architecture: its COMMON_PARAMS (l1_coeff for the L1 ones),
        then its section."""
        cls, own = registry.get(self.architecture), self.section()
        return {k: getattr(self, k) for k in cls.COMMON_PARAMS} | (own.model_dump() if own is not None else {})

    def resample_mode(self) -> str:
        if self.resample != "auto":
            return self.resample
        return "anthropic" if self.architecture == "standard" else "none"


class EvaluateConfig(Section):
    max_tokens: int | None = Field(None, gt=0)
    """Eval tokens for feature statistics (frequency, L0, MSE, ...); ``None`` = the whole eval split."""
    ce_max_tokens: int | None = Field(131_072, gt=0)
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


class AnalysisConfig(Section):
    max_tokens: int | None = Field(None, gt=0)
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


class CompareConfig(Section):
    max_tokens: int | None = Field(None, gt=0)
    """Eval tokens (a prefix of evaluate's seeded sample) for each seed's frequencies and baselines; ``None`` =
    the whole eval split, the rows on which evaluate measures frequencies, so both stages find the same ultra-low
    set."""
    hungarian_max: int = Field(8192, gt=0)
    """Largest d_sae matched exactly (Hungarian); wider SAEs get a greedy one-to-one matching."""
    n_components: int = Field(5, gt=0)
    """Principal components of the activations compared with the ultra-low direction (baseline)."""
    batch_rows: int = Field(64, gt=0)
    device: str = "auto"


class SpliceConfig(Section):
    """``splice``: talking to the patched model (docs/metrics.md, "Splicing every site"): continuations of the
    first ``n_prompts`` of evaluate's CE rows, clean and with every site's SAE spliced."""

    n_prompts: int = Field(8, ge=0)
    prompt_tokens: int = Field(24, gt=1)
    """Tokens of each row given as the prompt (BOS included)."""
    new_tokens: int = Field(24, gt=0)
    seed: int = 0
    """Seed of the sampled continuations (temperature 1); clean and spliced draw from the same random stream."""


class ReportConfig(Section):
    density_bins: int = Field(60, gt=0)


class FinetuneConfig(Section):
    """``finetune``: a short functional fine-tune of the first seed's SAE (Karvonen 2025; docs/metrics.md,
    "Functional training"). The SAE's architecture and knobs are ``sae``'s; the source SAE is left untouched."""

    loss: Literal["kl", "kl_ds"] = "kl"
    """The functional loss (``sae.loss``'s meanings), plus ``mse_coeff`` x the activation MSE."""
    frac_tokens: float = Field(0.05, gt=0, le=1)
    """Fine-tune tokens as a share of ``sae.n_tokens`` (prompts drawn by the stream's seeded order)."""
    lr: float = Field(3e-4, gt=0)
    """Adam's lr (fresh Adam state), constant, then a linear decay over ``lr_decay_frac``."""
    lr_decay_frac: float = Field(0.2, ge=0, le=1)
    mse_coeff: float | Literal["balanced"] = "balanced"
    """Weight of the activation MSE beside KL (weight ``kl_coeff``). ``balanced``: KL at kl_share · MSE₀ / KL₀ and
    MSE at 1 − kl_share (KL₀, MSE₀: the source SAE's on the first batch, at the fine-tune's sparsity), so the terms
    start in that ratio and together equal the MSE the sparsity term was trained against (default kl_share 1/2:
    equal); ``kl_coeff`` is then unused."""
    kl_coeff: float = Field(1.0, gt=0)
    """Weight of KL when ``mse_coeff`` is a number."""
    ds_coeff: float = Field(1.0, ge=0)
    """``kl_ds``: weight of the downstream MSE (``sae.functional.ds_coeff``'s meaning)."""
    kl_share: float = Field(0.5, gt=0, le=1)
    """Under ``mse_coeff: balanced``: KL's share of the first batch's loss (KL at kl_share · MSE₀ / KL₀, the MSE at
    1 − kl_share); 1/2 starts them equal, 1 is KL alone at the source's MSE scale."""

    @field_validator("mse_coeff")
    @classmethod
    def _nonnegative(cls, v):
        if v != "balanced" and v < 0:
            raise ValueError("must be >= 0 or balanced")
        return v


class Params(Section):
    seeds: tuple[int, ...] = (0, 1)
    """One SAE per seed (the dvc.yaml matrix); the first is evaluated and analysed."""
    text: TextConfig = TextConfig()
    lm: LMConfig = LMConfig()
    tokens: TokensConfig = TokensConfig()
    activations: ActivationsConfig = ActivationsConfig()
    sae: SAEConfig = Field(default_factory=SAEConfig)  # built at validation: the registry is complete by then
    evaluate: EvaluateConfig = EvaluateConfig()
    analysis: AnalysisConfig = AnalysisConfig()
    compare: CompareConfig = CompareConfig()
    report: ReportConfig = ReportConfig()
    splice: SpliceConfig = SpliceConfig()
    finetune: FinetuneConfig = FinetuneConfig()

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or len(set(v)) != len(v) or any(s < 0 for s in v):
            raise ValueError("must be a non-empty list of distinct non-negative integers")
        return v

    @model_validator(mode="after")
    def _ctx(self) -> Params:
        if "seed" in self.sae.model_fields_set:
            raise ValueError("sae.seed: the SAE seeds come from the top-level `seeds` list (one SAE per seed)")
        if self.lm.source == "embedded" and self.tokens.n_ctx > self.lm.n_ctx:
            raise ValueError(f"tokens.n_ctx ({self.tokens.n_ctx}) must be <= lm.n_ctx ({self.lm.n_ctx})")
        gen = self.splice
        if gen.n_prompts and gen.prompt_tokens > self.tokens.n_ctx:
            raise ValueError(
                f"splice.prompt_tokens ({gen.prompt_tokens}) must be <= tokens.n_ctx ({self.tokens.n_ctx})"
            )
        if gen.n_prompts and self.lm.source == "embedded" and gen.prompt_tokens + gen.new_tokens > self.lm.n_ctx:
            total = gen.prompt_tokens + gen.new_tokens
            raise ValueError(
                f"splice.prompt_tokens + splice.new_tokens ({total}) must be <= lm.n_ctx ({self.lm.n_ctx}), the "
                "LM's context; shorten them or set splice.n_prompts: 0"
            )
        acts = self.activations
        if acts.transcoders and self.sae.loss != "mse":
            raise ValueError(
                f"activations.transcoders: a transcoder trains on the MSE to its target, but sae.loss is "
                f"{self.sae.loss}; set sae.loss: mse, or train the transcoders in a run without them"
            )
        if self.lm.source == "embedded" and len(acts.cached_hooks) > 1:  # the LM's depth is known here
            for name in acts.cached_hooks:
                if hook_layer(name) >= self.lm.n_layers:
                    key = (
                        "activations.hook"
                        if name == acts.hook
                        else "activations.extra_hooks"
                        if name in acts.extra_hooks
                        else "activations.transcoders"
                    )
                    raise ValueError(f"{key}: {name} is in block {hook_layer(name)}, but the embedded LM has "
                                     f"lm.n_layers: {self.lm.n_layers} (blocks 0..{self.lm.n_layers - 1}): raise "
                                     "lm.n_layers or pick an earlier block")  # fmt: skip
        return self


def parse_params(raw: dict) -> Params:
    """Validate a params mapping; raise ConfigError listing every bad key."""
    try:
        return Params.model_validate(raw or {})
    except ValidationError as err:
        raise ConfigError(format_errors(err)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: params file not found (run from the repository root or pass --params)")
    return parse_params(yaml.safe_load(path.read_text()))
