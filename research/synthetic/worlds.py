"""Synthetic worlds with known features: params, the seeded generator, and its activation cache.

A world is a dictionary of F unit directions d_i in R^d and a law for the codes c (n, F) >= 0;
an "activation" is x = c @ D + noise. Definitions of every option and of the recovery metrics:
docs/synthetic.md. The pipeline that uses this module is research/synthetic/dvc.yaml.

Feature index layout (``World.layout``), in this order:

* ``independent``: ``n_features`` features, feature i firing alone with probability p_i
  (``firing``: Zipf p_i ∝ (i+1)^-a, or constant), scaled so Σ p_i = ``l0``;
* ``children``: ``children`` per parent for each of the first ``n_parents`` independent features;
  a child fires only when its parent does, then with probability ``child_prob``;
* ``tasks``: ``n_tasks`` blocks of ``task_size`` features; a task fires with probability
  ``task_prob`` and then every one of its features fires, each with its own random magnitude.

``correlation``: the independent features form consecutive groups of ``correlation_group``; when
a group's first feature fires, each other member also fires with probability ``correlation``.
Magnitudes are |N(magnitude_mean, magnitude_std)|, independent per token and feature.

The cache is the ordinary activation-cache format (src/saelab/data/cache.py), so the SAE trainer reads
it unchanged; the true dictionary goes next to it (``dictionary.safetensors``, ``world.json``).
Samples are drawn chunk by chunk, each chunk from its own seed (world seed, stream, chunk index),
so a world of any size is written in bounded memory and any chunk can be redrawn alone.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import yaml
from pydantic import Field, ValidationError, model_validator
from tqdm.auto import tqdm

from saelab.config import SAEConfig
from saelab.data.cache import MANIFEST, bytes_rows, fixed_binary
from saelab.io import load_weights, read_json, save_weights, write_json
from saelab.section import ConfigError, Section, format_errors, merge

DICTIONARY = "dictionary.safetensors"
WORLD = "world.json"
TRAIN, EVAL = 0, 1  # sample streams: the cache, and the held-out sample the recovery metrics use


class WorldConfig(Section):
    """One synthetic world (``worlds.<name>`` in research/synthetic/params.yaml; docs/synthetic.md)."""

    d: int = Field(64, gt=0)
    """Width of an activation."""
    n_features: int = Field(256, ge=0)
    """Independent features."""
    firing: Literal["zipf", "constant"] = "zipf"
    l0: float = Field(4.0, gt=0)
    """Expected number of independent features firing per token (Σ p_i)."""
    zipf_exponent: float = Field(1.0, ge=0)
    magnitude_mean: float = Field(1.0, gt=0)
    magnitude_std: float = Field(0.25, ge=0)
    geometry: Literal["orthogonal", "random", "overlap"] = "random"
    """``orthogonal`` (needs every feature to fit: F <= d), ``random`` unit directions, or ``overlap``:
    consecutive groups of ``overlap_group`` share a direction, pairwise cosine ≈ ``overlap``."""
    overlap: float = Field(0.0, ge=0, lt=1)
    overlap_group: int = Field(2, ge=2)
    correlation: float = Field(0.0, ge=0, le=1)
    correlation_group: int = Field(2, ge=2)
    n_parents: int = Field(0, ge=0)
    children: int = Field(0, ge=0)
    """Children per parent."""
    child_prob: float = Field(0.5, gt=0, le=1)
    n_tasks: int = Field(0, ge=0)
    task_size: int = Field(0, ge=0)
    """m: features that fire together whenever their task does."""
    task_prob: float = Field(0.05, gt=0, le=1)
    noise: float = Field(0.0, ge=0)
    """Standard deviation of isotropic Gaussian noise added to every coordinate."""
    n_tokens: int = Field(1_048_576, gt=0)
    """Tokens in the training cache."""
    eval_tokens: int = Field(65_536, gt=0)
    """Tokens of the held-out sample (drawn from its own stream) the recovery metrics use."""
    chunk_tokens: int = Field(65_536, gt=0)
    """Tokens generated at once (one cache shard; each chunk has its own seed): bounds memory, and is part
    of the world's definition: another chunk size draws other tokens."""
    seed: int = Field(0, ge=0)

    @property
    def n_total(self) -> int:
        return self.n_features + self.n_parents * self.children + self.n_tasks * self.task_size

    @model_validator(mode="after")
    def _check(self) -> WorldConfig:
        if self.n_total == 0:
            raise ValueError("the world has no features: set n_features, or n_tasks and task_size")
        if self.geometry == "orthogonal" and self.n_total > self.d:
            raise ValueError(
                f"geometry orthogonal needs every feature to fit: {self.n_total} features > d = {self.d}; "
                "use geometry: random (superposition) or raise d"
            )
        if self.geometry == "overlap" and self.overlap <= 0:
            raise ValueError("geometry overlap needs overlap > 0 (the within-group cosine)")
        if self.n_features and self.l0 > self.n_features:
            raise ValueError(f"l0 ({self.l0}) cannot exceed n_features ({self.n_features})")
        if self.n_parents > self.n_features:
            raise ValueError(f"n_parents ({self.n_parents}) must be <= n_features ({self.n_features})")
        if bool(self.n_parents) != bool(self.children):
            raise ValueError("hierarchies need both n_parents and children > 0 (or both 0)")
        if bool(self.n_tasks) != bool(self.task_size):
            raise ValueError("compositional tasks need both n_tasks and task_size > 0 (or both 0)")
        return self


class RunConfig(Section):
    """One SAE trained on a world (``runs.<name>``): the shared ``sae`` section with these overrides."""

    world: str
    sae: dict = {}
    """Overrides of the ``sae`` section (nested: ``{architecture: topk, topk: {k: 8}}``)."""
    dict_ratio: float | None = Field(None, gt=0)
    """d_sae = round(dict_ratio x the world's feature count F); otherwise sae.expansion / sae.d_sae."""


class RecoverConfig(Section):
    cos_thresholds: tuple[float, ...] = (0.9, 0.7)
    """A true feature is recovered at t when some decoder row has cos >= t with it."""
    pair_cos: float = Field(0.7, gt=0, le=1)
    """Hungarian pairs at or above this cos enter precision, recall, shrinkage and absorption."""
    task_latent_span: float = Field(0.5, gt=0, le=1)
    """A latent counts toward a task when this share of its decoder row's norm lies in the task's span."""
    verdict_align: float = Field(0.8, gt=0, le=1)
    """Compositional verdict: directions if the task latents' mean best single-direction cos >= this;
    otherwise merged / combinations (n_eff per direction below / at least 1) if their span alignment is >= it."""
    batch_tokens: int = Field(8192, gt=0)


class SynthParams(Section):
    sae: dict = {}
    """The base ``sae`` section (as params.yaml's), shared by every run."""
    worlds: dict[str, WorldConfig]
    runs: dict[str, RunConfig]
    recover: RecoverConfig = RecoverConfig()

    @model_validator(mode="after")
    def _check(self) -> SynthParams:
        for name, run in self.runs.items():
            if run.world not in self.worlds:
                raise ValueError(f"runs.{name}.world: {run.world!r} is not one of worlds {sorted(self.worlds)}")
            self.sae_config(name)  # every run's SAE params are valid before anything trains
        return self

    def sae_config(self, run: str, seed: int = 0) -> SAEConfig:
        r = self.runs[run]
        raw = merge(self.sae, r.sae)
        if r.dict_ratio is not None:
            raw = {**raw, "d_sae": max(1, round(r.dict_ratio * self.worlds[r.world].n_total)), "expansion": None}
        try:
            return SAEConfig.model_validate({**raw, "seed": seed})
        except ValidationError as err:
            raise ValueError(f"runs.{run}.sae: " + format_errors(err).removeprefix("invalid params:\n  ")) from None


def load_synth_params(path: str | Path = "params.yaml") -> SynthParams:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: params file not found (run `dvc repro` inside synthetic/ or pass --params)")
    try:
        return SynthParams.model_validate(yaml.safe_load(path.read_text()) or {})
    except ValidationError as err:
        raise ConfigError(format_errors(err)) from None


# ---------------------------------------------------------------- the world


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def firing_probs(cfg: WorldConfig) -> np.ndarray:
    """p_i of the independent features: Zipf ∝ (i+1)^-a or constant, min(1, c · r_i) with Σ = l0."""
    n = cfg.n_features
    if n == 0:
        return np.zeros(0)
    r = np.ones(n) if cfg.firing == "constant" else (np.arange(1, n + 1, dtype=np.float64) ** -cfg.zipf_exponent)
    lo, hi = 0.0, cfg.l0 / r.min()
    for _ in range(100):  # bisection on c: Σ min(1, c r_i) is increasing in c
        c = (lo + hi) / 2
        lo, hi = (c, hi) if np.minimum(1, c * r).sum() < cfg.l0 else (lo, c)
    return np.minimum(1.0, hi * r)


def directions(cfg: WorldConfig) -> torch.Tensor:
    """(F, d) unit rows, seeded by the world's seed."""
    g = torch.Generator().manual_seed(_seed(cfg.seed, 0))
    F, d = cfg.n_total, cfg.d
    if cfg.geometry == "orthogonal":
        q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
        return q[:, :F].T.float().contiguous()
    u = torch.randn(F, d, generator=g, dtype=torch.float64)
    u = u / u.norm(dim=-1, keepdim=True)
    if cfg.geometry == "overlap":
        groups = math.ceil(F / cfg.overlap_group)
        s = torch.randn(groups, d, generator=g, dtype=torch.float64)
        s = s / s.norm(dim=-1, keepdim=True)
        shared = s.repeat_interleave(cfg.overlap_group, 0)[:F]
        u = math.sqrt(cfg.overlap) * shared + math.sqrt(1 - cfg.overlap) * u
        u = u / u.norm(dim=-1, keepdim=True)
    return u.float().contiguous()


class World:
    """A world's dictionary and code law; ``sample`` draws (x, codes) reproducibly."""

    def __init__(self, cfg: WorldConfig):
        self.cfg = cfg
        self.D = directions(cfg)
        self.p = torch.from_numpy(firing_probs(cfg)).float()
        n, P, C, T, m = cfg.n_features, cfg.n_parents, cfg.children, cfg.n_tasks, cfg.task_size
        self.parents = torch.arange(P)
        self.child_index = (n + torch.arange(P * C)).view(P, C)
        self.task_index = (n + P * C + torch.arange(T * m)).view(T, m)
        G = cfg.correlation_group
        self.corr_groups = (
            torch.arange((n // G) * G).view(-1, G) if cfg.correlation > 0 else torch.zeros(0, G, dtype=torch.long)
        )

    @property
    def F(self) -> int:
        return self.cfg.n_total

    def layout(self) -> dict:
        return {
            "independent": [0, self.cfg.n_features],
            "parents": self.parents.tolist(),
            "children": self.child_index.tolist(),
            "tasks": self.task_index.tolist(),
            "correlation_groups": self.corr_groups.tolist(),
        }

    def active(self, n: int, g: torch.Generator) -> torch.Tensor:
        """(n, F) bool: which features fire on each of n tokens."""
        cfg = self.cfg
        ind = torch.rand(n, cfg.n_features, generator=g) < self.p
        if len(self.corr_groups):
            lead, rest = self.corr_groups[:, 0], self.corr_groups[:, 1:]
            ind[:, rest] |= ind[:, lead, None] & (torch.rand(n, *rest.shape, generator=g) < cfg.correlation)
        parts = [ind]
        if cfg.n_parents:
            kids = ind[:, self.parents, None] & (
                torch.rand(n, cfg.n_parents, cfg.children, generator=g) < cfg.child_prob
            )
            parts.append(kids.reshape(n, -1))
        if cfg.n_tasks:
            on = torch.rand(n, cfg.n_tasks, generator=g) < cfg.task_prob
            parts.append(on[:, :, None].expand(n, cfg.n_tasks, cfg.task_size).reshape(n, -1))
        return torch.cat(parts, 1)

    def sample(self, n: int, stream: int = TRAIN, chunk: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(x (n, d), codes (n, F)) of one chunk, from the seed (world seed, stream, chunk)."""
        g = torch.Generator().manual_seed(_seed(self.cfg.seed, 1 + stream, chunk))
        act = self.active(n, g)
        mag = (self.cfg.magnitude_mean + self.cfg.magnitude_std * torch.randn(n, self.F, generator=g)).abs()
        codes = act * mag
        x = codes @ self.D
        if self.cfg.noise > 0:
            x += self.cfg.noise * torch.randn(n, self.cfg.d, generator=g)
        return x, codes

    def eval_sample(self, n: int | None = None, chunk_tokens: int | None = None):
        """The held-out sample: ``eval_tokens`` tokens of the EVAL stream, drawn in the cache's chunk size."""
        n = n or self.cfg.eval_tokens
        step = chunk_tokens or self.cfg.chunk_tokens
        parts = [self.sample(min(step, n - lo), EVAL, i) for i, lo in enumerate(range(0, n, step))]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def write_world(world: World, out: Path) -> dict:
    """The training cache (the ordinary Parquet format, fp32) and the true dictionary, into ``out``."""
    cfg = world.cfg
    total, norm_sum, fires, shards = (
        torch.zeros(cfg.d, dtype=torch.float64),
        0.0,
        torch.zeros(world.F, dtype=torch.float64),
        [],
    )
    for i, lo in enumerate(tqdm(range(0, cfg.n_tokens, cfg.chunk_tokens), desc="world", unit="chunk")):
        n = min(cfg.chunk_tokens, cfg.n_tokens - lo)
        x, codes = world.sample(n, TRAIN, i)
        total += x.double().sum(0)
        norm_sum += x.double().norm(dim=-1).sum().item()
        fires += (codes > 0).double().sum(0)
        idx = np.arange(lo, lo + n)
        table = pa.table(
            {
                "x": fixed_binary(bytes_rows(x)),
                "row": pa.array((idx // 1024).astype(np.int32)),
                "pos": pa.array((idx % 1024).astype(np.int16)),
                "token": pa.array(np.full(n, -1, np.int32)),
            }
        )
        name = f"shard-{i:05d}.parquet"
        pq.write_table(
            table, out / name, row_group_size=8192, compression="none", use_dictionary=False, write_statistics=False
        )
        shards.append({"file": name, "n_tokens": n})
    save_weights(out / DICTIONARY, {"directions": world.D, "probs": fires.float() / cfg.n_tokens})
    write_json(
        out / WORLD,
        {
            "config": cfg.model_dump(),
            "n_total": world.F,
            "layout": world.layout(),
            "true_l0": float(fires.sum() / cfg.n_tokens),
        },
    )
    manifest = {
        "format": "saelab-activations/2",
        "hook": "synthetic",
        "layer": 0,
        "d": cfg.d,
        "dtype": "fp32",
        "n_tokens": cfg.n_tokens,
        "n_ctx": 1024,
        "n_rows": math.ceil(cfg.n_tokens / 1024),
        "seed": cfg.seed,
        "excluded_token": None,
        "n_excluded": 0,
        "bos": "include",
        "shards": shards,
        "nonfinite": 0,
        "mean": (total / cfg.n_tokens).float().tolist(),
        "mean_excluded": None,
        "mean_norm": norm_sum / cfg.n_tokens,
        "synthetic": True,
    }
    write_json(out / MANIFEST, manifest)
    return manifest


def load_world(path: str | Path) -> tuple[World, dict]:
    """The world a generate stage wrote to ``path``: rebuilt from its config, checked against the saved dictionary."""
    path = Path(path)
    info = read_json(path / WORLD)
    world = World(WorldConfig.model_validate(info["config"]))
    saved = load_weights(path / DICTIONARY)["directions"]
    if saved.shape != world.D.shape or not torch.allclose(saved, world.D, atol=1e-5):
        raise ConfigError(
            f"{path / DICTIONARY}: differs from the dictionary its config rebuilds; rerun `dvc repro` in synthetic/"
        )
    return world, info
