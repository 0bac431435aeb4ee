"""Streaming activations: train straight from the LM through an on-device shuffle buffer.

The reference's design (docs/metrics.md, "Training algorithm"): a buffer of many prompts' activations is shuffled, the
first half is handed out as training batches, the unused half is kept and the buffer is
topped up with fresh prompts and reshuffled. A batch therefore rarely holds two tokens
of one prompt, and a run of any length needs no disk for activations.

Every token the LM produces is handed out exactly once (tokens of the final, partial
refill are never reached). Prompts are visited in a seeded random order, a new one each
pass over the train split. The stream is a pure function of (LM, rows, params, seed), so
a resumed run replays it to the same position (the skipped part costs LM time, not disk).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from saelab.errors import InputError
from saelab.data.cache import DTYPES, MANIFEST, PAIR, ActivationCache, check_bos_policy, open_pair, paired_batches
from saelab.training.checkpoint import fingerprint
from saelab.config import ActivationsConfig, SAEConfig
from saelab.data.hooks import activation, check_hook


class ActivationStream:
    """Endless (batch_size, d) batches of ``hook`` activations of ``model`` over ``rows`` (n_rows, n_ctx)."""

    def __init__(self, model, rows: np.ndarray, hook: str, d: int, *, buffer_tokens: int,
                 batch_rows: int, dtype: str, seed: int, device: torch.device, exclude_token: int | None = None):
        n_ctx = rows.shape[1]
        if buffer_tokens < 2 * n_ctx:
            raise InputError(f"sae.stream_buffer_tokens: {buffer_tokens} must hold at least two prompts of {n_ctx} tokens")
        self.model, self.rows, self.hook, self.d = model, rows, hook, d
        self.buffer_tokens, self.batch_rows, self.seed, self.device = buffer_tokens, batch_rows, seed, device
        self.dtype = DTYPES[dtype]
        self.exclude_token = exclude_token
        kept = rows != exclude_token if exclude_token is not None else np.ones(rows.shape, dtype=bool)
        self.n_tokens = int(kept.sum())  # one pass over the prompts, BOS left out under activations.bos: exclude

    def _prompts(self) -> Iterator[torch.Tensor]:
        """Activations of ``batch_rows`` prompts at a time, (batch_rows * n_ctx, d), passes in fresh seeded orders."""
        epoch = 0
        while True:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.rows))
            for i in range(0, len(order), self.batch_rows):
                batch = torch.from_numpy(self.rows[np.sort(order[i : i + self.batch_rows])].astype(np.int64))
                acts = activation(self.model, batch.to(self.device), self.hook).reshape(-1, self.d)
                if self.exclude_token is not None:
                    acts = acts[(batch != self.exclude_token).reshape(-1).to(acts.device)]
                yield acts.to(self.dtype)
            epoch += 1

    def batches(self, batch_size: int, skip_tokens: int = 0) -> Iterator[torch.Tensor]:
        """Batches of the stream from token ``skip_tokens`` on (a multiple of ``batch_size`` when resuming)."""
        if self.buffer_tokens < 2 * batch_size:
            raise InputError(f"sae.stream_buffer_tokens: {self.buffer_tokens} must be at least 2 x sae.batch_size ({batch_size})")
        prompts = self._prompts()
        gen = torch.Generator(device=self.device).manual_seed(self.seed)
        buf = torch.empty(0, self.d, dtype=self.dtype, device=self.device)
        skip = skip_tokens // batch_size
        while True:
            parts = [buf]
            have = len(buf)
            while have < self.buffer_tokens:
                parts.append(next(prompts))
                have += len(parts[-1])
            buf = torch.cat(parts)
            buf = buf[torch.randperm(len(buf), generator=gen, device=self.device)]
            n_out = (len(buf) // 2) // batch_size
            for k in range(n_out):
                if skip:
                    skip -= 1
                    continue
                yield buf[k * batch_size : (k + 1) * batch_size]
            buf = buf[n_out * batch_size :]


@dataclass
class TrainData:
    batches: Callable[[int, int], Iterator[torch.Tensor]]  # (batch_size, skip_tokens) -> endless batches
    d: int
    hook: str
    dtype: str
    n_ctx: int
    n_tokens: int  # tokens in one epoch
    fingerprint: str
    objective: object = None  # saelab.training.objective.Functional under sae.loss: kl | kl_ds (batches are prompts)
    input_hook: str | None = None  # a transcoder's input (``hook`` is its target); batches hold both side by side


def open_data(cfg: SAEConfig, acts_cfg: ActivationsConfig, device: torch.device, activations: Path,
              lm_dir: Path | None, tokens: Path | None, transcoder: bool = False) -> TrainData:
    """The Parquet cache, or (``sae.source: stream``) the LM through a shuffle buffer; checked before training.
    ``transcoder``: ``activations`` is a pair of caches (input, target; saelab.data.cache.open_pair), read whatever
    ``sae.source`` says (it is the root SAEs' choice)."""
    if transcoder:
        if cfg.loss != "mse":  # params load refuses it first (saelab.config.Params)
            raise InputError(f"a transcoder trains on the MSE to its target: set sae.loss: mse (got {cfg.loss})")
        inp, tgt = open_pair(activations)
        check_bos_policy(inp, acts_cfg.bos)
        pin = device.type == "cuda"
        return TrainData(lambda b, skip: paired_batches(inp, tgt, b, skip, pin=pin, seed=cfg.seed), inp.d,
                         tgt.manifest["hook"], inp.dtype, inp.manifest["n_ctx"], inp.n_tokens,
                         fingerprint(cfg.model_dump(), *(Path(activations) / side / MANIFEST for side in PAIR)),
                         input_hook=inp.manifest["hook"])  # fmt: skip
    if cfg.source == "cache":
        cache = ActivationCache(activations)
        check_bos_policy(cache, acts_cfg.bos)
        pin = device.type == "cuda"  # page-locked batches: the host-to-device copy overlaps compute
        # Each SAE seed reads the cache in its own order (docs/metrics.md, "Data order").
        return TrainData(lambda b, skip: cache.batches(b, skip, pin=pin, seed=cfg.seed), cache.d, cache.manifest["hook"],
                         cache.dtype, cache.manifest["n_ctx"], cache.n_tokens, fingerprint(cfg.model_dump(), Path(activations) / MANIFEST))
    if lm_dir is None or tokens is None:
        raise InputError("sae.source: stream needs --lm and --tokens (dvc.yaml passes models/lm and data/tokens)")
    from saelab.data.lm import excluded_token, load_lm  # TransformerLens: imported only when streaming
    from saelab.data.tokens import read_rows

    rows = read_rows(Path(tokens) / "train.parquet")
    n_ctx = rows.shape[1]
    if cfg.loss != "mse" and cfg.batch_size % n_ctx:
        raise InputError(
            f"sae.batch_size: {cfg.batch_size} must be a multiple of the prompts' {n_ctx} tokens under sae.loss: "
            f"{cfg.loss} (a step splices the SAE into whole prompts); e.g. {max(1, cfg.batch_size // n_ctx) * n_ctx}"
        )
    lm = load_lm(lm_dir, device)
    layer, d = check_hook(acts_cfg.hook, lm.config["tl_config"])
    run = {**cfg.model_dump(), "hook": acts_cfg.hook, "dtype": acts_cfg.dtype, "bos": acts_cfg.bos}
    print_ = fingerprint(run, Path(lm_dir) / "model.safetensors", Path(tokens) / "train.parquet")
    if cfg.loss != "mse":  # the LM in the loop: batches of whole prompts, the objective splices the SAE in
        from saelab.training.objective import Functional, prompt_batches

        exclude = excluded_token(lm, acts_cfg.bos)
        objective = Functional(lm.model, acts_cfg.hook, layer, lm.config["tl_config"]["n_layers"], cfg.loss,
                               cfg.functional, exclude)  # fmt: skip
        covered = int((rows != exclude).sum()) if exclude is not None else rows.size
        return TrainData(lambda b, skip: prompt_batches(rows, b // n_ctx, cfg.seed, skip // b), d, acts_cfg.hook,
                         "fp32", n_ctx, covered, print_, objective)  # fmt: skip
    stream = ActivationStream(lm.model, rows, acts_cfg.hook, d, buffer_tokens=cfg.stream_buffer_tokens,
                              batch_rows=cfg.stream_batch_rows, dtype=acts_cfg.dtype, seed=cfg.seed, device=device,
                              exclude_token=excluded_token(lm, acts_cfg.bos))
    return TrainData(stream.batches, d, acts_cfg.hook, acts_cfg.dtype, n_ctx, stream.n_tokens, print_)
