"""SAE training loop: the seed's algorithm with its bug fixed (DESIGN.md).

Per step: Adam on  loss = mse_loss + l1_coeff * l1_loss  (both means over the batch,
so l1_coeff does not depend on batch size); before the step the component of
W_dec.grad along each row is removed, after it the rows are renormalised to exactly
unit norm (the seed forgot this). Every ``resample_every`` tokens, features that
fired on less than ``resample_threshold`` of the last ``resample_window`` tokens
are re-initialised the Anthropic way (see :func:`resample_`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from saelab.config import SAEConfig
from saelab.sae import SAE, l0, l1_loss, mse_loss


@dataclass
class Schedule:
    """Step arithmetic of a run, derived once from the config (all in steps)."""

    n_steps: int
    every: int
    window: int
    stop: int
    warmup: int
    decay_start: int

    @classmethod
    def from_config(cls, cfg: SAEConfig) -> "Schedule":
        b = cfg.batch_size
        n_steps = max(1, cfg.n_tokens // b)
        return cls(
            n_steps=n_steps,
            every=max(1, cfg.resample_every // b),
            window=max(1, cfg.resample_window // b),
            stop=int(cfg.resample_stop * n_steps),
            warmup=cfg.lr_warmup_tokens // b,
            decay_start=int((1 - cfg.lr_decay_frac) * n_steps),
        )

    def lr_scale(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if step >= self.decay_start:
            return max(0.0, (self.n_steps - step) / max(1, self.n_steps - self.decay_start))
        return 1.0

    def opens_window(self, step: int) -> bool:
        """After ``step`` (1-based count of steps done), start counting fires afresh."""
        return step % self.every == (self.every - self.window) % self.every

    def resamples(self, step: int) -> bool:
        return step % self.every == 0 and step <= self.stop


@torch.no_grad()
def resample_(sae: SAE, opt: torch.optim.Adam, dead: torch.Tensor, x: torch.Tensor, gen: torch.Generator) -> int:
    """Re-initialise ``dead`` features from badly reconstructed inputs (Anthropic, Towards Monosemanticity).

    1. Score each input of ``x`` (B, d_in) by its squared reconstruction loss, squared.
    2. Sample one input per dead feature with probability proportional to that score.
    3. Decoder row = unit vector of (input - b_dec); encoder column = that vector
       times 0.2 x the mean norm of the alive encoder columns; encoder bias = 0.
    4. Zero Adam's moments for the touched slices so stale momentum does not undo it.
    """
    idx = dead.nonzero().squeeze(-1)
    if idx.numel() == 0:
        return 0
    loss = (sae(x).x_hat - x).pow(2).sum(-1)  # (B,)
    weights = loss.pow(2).float().cpu() + 1e-12
    picks = torch.multinomial(weights, idx.numel(), replacement=idx.numel() > len(x), generator=gen)
    dirs = x[picks.to(x.device)].float() - sae.b_dec
    dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # (n_dead, d_in)
    alive = ~dead
    enc_norm = sae.W_enc[:, alive].norm(dim=0).mean() if alive.any() else torch.tensor(1.0)
    sae.W_dec[idx] = dirs
    sae.W_enc[:, idx] = dirs.T * 0.2 * enc_norm
    sae.b_enc[idx] = 0.0
    for p, sl in ((sae.W_dec, (idx,)), (sae.W_enc, (slice(None), idx)), (sae.b_enc, (idx,))):
        state = opt.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key][sl] = 0.0
    return idx.numel()


@dataclass
class TrainState:
    """Everything a run needs to continue: counters, fire counts and the running log sums."""

    step: int = 0
    fired: torch.Tensor | None = None  # (d_sae,) fires since the window opened
    window_tokens: int = 0
    n_resampled: int = 0
    resample_events: list = field(default_factory=list)
    seconds: float = 0.0


def train_step(sae: SAE, opt: torch.optim.Adam, x: torch.Tensor, l1_coeff: float, autocast: bool) -> tuple:
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
        x_hat, f = sae(x)
        mse = mse_loss(x_hat.float(), x)
        l1 = l1_loss(f.float())
        loss = mse + l1_coeff * l1
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"non-finite SAE loss (mse={mse.item()}, l1={l1.item()}); "
            "check the activation cache for inf/NaN or lower sae.lr"
        )
    loss.backward()
    sae.remove_parallel_grad_()
    opt.step()
    opt.zero_grad(set_to_none=True)
    sae.normalize_decoder_()
    return loss.detach(), mse.detach(), l1.detach(), f.detach()


def train_sae(sae: SAE, batches, cfg: SAEConfig, device: torch.device, log=None, state: TrainState | None = None) -> TrainState:
    """Train ``sae`` on an endless iterator of (B, d_in) batches; ``log(step, dict)`` receives metrics."""
    sched = Schedule.from_config(cfg)
    opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    state = state or TrainState()
    state.fired = torch.zeros(sae.d_sae, device=device)
    sums = torch.zeros(4, device=device)  # loss, mse, l1, l0 since the last log
    start = time.perf_counter()
    bar = tqdm(total=sched.n_steps * cfg.batch_size, desc="sae train", unit="tok", unit_scale=True)
    for step in range(sched.n_steps):
        x = next(batches).to(device, non_blocking=True).float()
        for group in opt.param_groups:
            group["lr"] = cfg.lr * sched.lr_scale(step)
        loss, mse, l1, f = train_step(sae, opt, x, cfg.l1_coeff, cfg.dtype == "bf16")
        fires = f > 0
        state.fired += fires.sum(0)
        state.window_tokens += len(x)
        sums += torch.stack([loss, mse, l1, fires.float().sum(-1).mean()])
        done = step + 1
        if sched.resamples(done):
            dead = state.fired / state.window_tokens < cfg.resample_threshold
            n = resample_(sae, opt, dead, x, gen)
            state.n_resampled += n
            state.resample_events.append({"step": done, "n": n})
        if sched.opens_window(done):
            state.fired.zero_()
            state.window_tokens = 0
        if done % cfg.log_every == 0 or done == sched.n_steps:
            n_logged = (done - 1) % cfg.log_every + 1
            loss_m, mse_m, l1_m, l0_m = (sums / n_logged).tolist()
            sums.zero_()
            freq = state.fired / max(1, state.window_tokens)
            row = {
                "loss": loss_m,
                "mse": mse_m,
                "l1": l1_m,
                "l0": l0_m,
                "lr": opt.param_groups[0]["lr"],
                "frac_dead_window": (state.fired == 0).float().mean().item(),
                "frac_ultra_low_window": (freq < 1e-4).float().mean().item(),
                "window_tokens": state.window_tokens,
            }
            bar.set_postfix(mse=f"{mse_m:.2f}", l0=f"{l0_m:.1f}", dead=f"{row['frac_dead_window']:.3f}")
            if log is not None:
                log(done, row)
        bar.update(len(x))
        state.step = done
    bar.close()
    state.seconds = time.perf_counter() - start
    return state
