"""SAE training loop, for every architecture (docs/metrics.md, "Training algorithm", "Architectures").

Per step: Adam on the architecture's loss (for the standard one, the reference algorithm with
its bug fixed: mse_loss + l1_coeff * l1_loss, both means over the batch; before the step the
component of W_dec.grad along each row is removed, after it the rows are renormalised to
exactly unit norm, which the reference forgot). Every ``resample_every`` tokens, features that
fired on less than ``resample_threshold`` of the last ``resample_window`` tokens are
re-initialised (``sae.resample``; see :func:`saelab.training.resample.resample_`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from saelab.config import EvaluateConfig, SAEConfig
from saelab.errors import InputError, NonFinite
from saelab.saes.base import SAE
from saelab.training.checkpoint import generator_state, set_generator_state
from saelab.training.resample import resample_


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
    def from_config(cls, cfg: SAEConfig) -> Schedule:
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


@dataclass
class TrainState:
    """Everything besides weights and Adam that a run needs to continue exactly."""

    step: int = 0
    window_tokens: int = 0
    n_resampled: int = 0
    resample_events: list = field(default_factory=list)
    log_rows: list = field(default_factory=list)  # [(step, row)], replayed into DVCLive on resume
    steps_in_sums: int = 0  # steps accumulated in the logged sums since the last log row
    seconds: float = 0.0
    input_scale: float = 1.0  # sae.normalize_activations: x is multiplied by this while training
    tokens: int = 0  # tokens the SAE has seen (step x batch_size, except under a functional loss: covered positions)


def train_step(
    sae: SAE,
    opt: torch.optim.Adam,
    x: torch.Tensor,
    autocast: bool = False,
    step: int = 0,
    forward=None,
    check: bool = True,
    progress: float = 0.0,
    probes: tuple = (),
    objective=None,
    target: torch.Tensor | None = None,
) -> tuple:
    """One optimiser step: (loss, mse, terms, fired, l0, bad). ``forward`` is the DDP wrapper of ``sae``
    (or its compiled form); the architecture supplies the loss and the gradient surgery around the step.

    With ``check`` the loss is tested for NaN/inf before the weights move (a host sync: free on
    CPU). Without it the caller accumulates the returned ``bad`` flag on the device and reads it
    every ``log_every`` steps, so an accelerator never waits on the host in the hot loop.
    ``probes`` (objects with the Probe interface, e.g. research.questions.probes) may add loss terms and act
    around the step; none by default. ``objective(out) -> (loss, extra terms)`` replaces the architecture's loss
    (a functional loss, saelab.training.objective); its terms follow the architecture's in the returned ``terms``.
    ``target``: what a transcoder reconstructs from ``x`` (None: x itself).
    """
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
        out = (sae if forward is None else forward)(x, train=True, progress=progress, target=target)
    loss, own = (out.loss, []) if objective is None else objective(out)
    terms = [*out.terms, *own]
    bad = ~torch.isfinite(loss)
    if check and bad:
        names = (*sae.TERMS, *getattr(objective, "TERMS", ()))
        raise NonFinite(
            f"non-finite SAE loss at step {step} (mse={out.mse.item()}, "
            + ", ".join(f"{n}={t.item()}" for n, t in zip(names, terms))
            + "); training stopped before updating the weights, the last checkpoint is kept. "
            "Lower sae.lr or check the activation cache"
        )
    total = loss
    for p in probes:
        if (extra := p.loss(sae)) is not None:
            total = total + extra
    total.backward()
    for p in probes:
        p.before_step(sae)
    sae.before_step()
    opt.step()
    opt.zero_grad(set_to_none=True)
    sae.after_step()
    for p in probes:
        p.after_step(sae)
    return (
        loss.detach(),
        out.mse.detach(),
        [t.detach() for t in terms],
        out.fired.detach(),
        out.l0.detach(),
        bad,
    )


class Trainer:
    """Owns the SAE, Adam, the resampling RNG and the counters; can checkpoint and resume.

    Under ``torchrun`` (an initialised process group of W ranks) every rank reads the same
    global batch, trains on its 1/W slice through DistributedDataParallel (gradients are
    averaged, so the step equals the single-process step on the global batch), and
    resampling decisions use fire counts and inputs gathered from all ranks, so every
    rank applies the same re-initialisation.
    """

    def __init__(
        self,
        sae: SAE,
        cfg: SAEConfig,
        device: torch.device,
        ultra_low_threshold: float = EvaluateConfig().ultra_low_threshold,
        probes: tuple = (),
        objective=None,
        from_trained: bool = False,
    ):
        if sae.architecture != cfg.architecture or sae.arch_params() != cfg.arch_params():
            raise InputError(
                f"the SAE ({sae.architecture}, {sae.arch_params()}) is not the one sae params describe "
                f"({cfg.architecture}, {cfg.arch_params()}); build it with saelab.registry.build(cfg, d_in)"
            )
        self.sae, self.cfg, self.device = sae, cfg, device
        self.probes = tuple(probes)  # research.questions.probes; state not checkpointed (question runs restart)
        if self.probes and (cfg.checkpoint_every or dist.is_initialized()):
            raise InputError(
                "training probes (questions/) keep state that checkpoints and DDP do not carry; "
                "set sae.checkpoint_every: 0 and train in one process"
            )
        self.from_trained = from_trained  # a fine-tune: no data-dependent initialisation at step 0
        self.objective = objective  # saelab.training.objective.Functional: batches are prompts, not activations
        if (cfg.loss != "mse") != (objective is not None):
            raise InputError(
                f"sae.loss: {cfg.loss} needs {'a' if cfg.loss != 'mse' else 'no'} functional objective; build the "
                "training data with saelab.data.stream.open_data, which gives the objective the loss needs"
            )
        if sae.transcoder and (objective is not None or self.probes):
            raise InputError(
                "a transcoder trains on the MSE to its target from cached activations, without probes: set "
                "sae.loss: mse and sae.source: cache"
            )
        if objective is not None and (self.probes or dist.is_initialized()):
            raise InputError(
                f"sae.loss: {cfg.loss} trains in one process without probes (its LM passes are not split across "
                "ranks); run it without torchrun, or set sae.loss: mse"
            )
        self.terms = (*sae.TERMS, *(objective.TERMS if objective is not None else ()))
        self.resample_mode = cfg.resample_mode()
        self.ultra_low = ultra_low_threshold  # evaluate.ultra_low_threshold, for the training curve only
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        if cfg.batch_size % self.world:
            raise InputError(f"sae.batch_size: {cfg.batch_size} must be divisible by the {self.world} processes")
        # broadcast_buffers off: training buffers are either identical on every rank by construction
        # (TopK's dead counters, from fire counts summed over ranks) or per-rank sums averaged at the end
        # (BatchTopK's threshold), which rank 0's copy must not overwrite every step
        self.forward = (
            torch.nn.parallel.DistributedDataParallel(sae, broadcast_buffers=False) if self.world > 1 else None
        )
        self.sched = Schedule.from_config(cfg)
        # Fused Adam (one kernel for all parameters) where the device has it; same maths as the loop version.
        self.opt = torch.optim.Adam(
            sae.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type in ("cuda", "cpu")
        )
        model = sae if self.forward is None else self.forward
        self.call = torch.compile(model) if cfg.compile else model
        self.check_each_step = device.type == "cpu"  # a host sync costs nothing on CPU
        self.bad = torch.zeros((), dtype=torch.bool, device=device)  # NaN/inf seen since the last check
        self.checked = 0  # steps done at the last check
        self.gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.state = TrainState()
        self.fired = torch.zeros(sae.d_sae, device=device)  # fires since the window opened
        self.sums = torch.zeros(3 + len(self.terms), device=device)  # loss, mse, l0, *TERMS since the last log

    # ------------------------------------------------------------ across ranks

    def _sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return t
        t = t.clone()
        dist.all_reduce(t)
        return t

    def _gather(self, x: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return x
        parts = [torch.empty_like(x) for _ in range(self.world)]
        dist.all_gather(parts, x)
        return torch.cat(parts)

    # ------------------------------------------------------------ checkpoints

    def snapshot(self) -> tuple[dict, dict]:
        """Tensors and state of the whole run (fire counts summed, log sums averaged over ranks)."""
        tensors = {f"sae.{k}": v for k, v in self.sae.state_dict().items()}
        tensors |= {"fired": self._sum(self.fired), "sums": self._sum(self.sums) / self.world}
        for name in self.sae.TRAIN_BUFFERS:  # identical on every rank, or per-rank sums kept as their mean
            t = getattr(self.sae, name)
            tensors[f"train.{name}"] = self._sum(t) / self.world if t.is_floating_point() else t
        names = {id(p): n for n, p in self.sae.named_parameters()}
        for p, st in self.opt.state.items():
            for k, v in st.items():
                tensors[f"adam.{names[id(p)]}.{k}"] = v
        state = {**self.state.__dict__, "generator": generator_state(self.gen)}
        return tensors, state

    def restore(self, tensors: dict, state: dict) -> None:
        self.sae.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("sae.")})
        self.fired.copy_(
            tensors["fired"] if self.rank == 0 else torch.zeros_like(self.fired)
        )  # summed over ranks later
        self.sums.copy_(tensors["sums"])
        for name in self.sae.TRAIN_BUFFERS:
            getattr(self.sae, name).copy_(tensors[f"train.{name}"])
        for name, p in self.sae.named_parameters():
            keys = {k.rsplit(".", 1)[1]: v for k, v in tensors.items() if k.startswith(f"adam.{name}.")}
            if keys:
                self.opt.state[p] = {k: v.to(self.device) if k != "step" else v for k, v in keys.items()}
        set_generator_state(self.gen, state.pop("generator"))
        self.state = TrainState(**{k: v for k, v in state.items() if k in TrainState.__dataclass_fields__})

    # ------------------------------------------------------------ loop

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(input, target) of a batch: a transcoder's batches hold its input and target side by side (B, 2 d_in)."""
        if not self.sae.transcoder:
            return x, None
        if x.shape[-1] != 2 * self.sae.d_in:
            raise InputError(f"a transcoder of width {self.sae.d_in} needs (input | target) batches of width "
                             f"{2 * self.sae.d_in}, got {x.shape[-1]}; open its data with --transcoder")  # fmt: skip
        return x[:, : self.sae.d_in], x[:, self.sae.d_in :]

    def run(self, make_batches, log=None, checkpointer=None) -> TrainState:
        """Train to the end from the current step; ``make_batches(skip_tokens)`` gives the data stream
        (for a transcoder, batches of its input and target side by side, one scale ``input_scale`` for both)."""
        cfg, sched, st = self.cfg, self.sched, self.state
        batches = make_batches(st.step * cfg.batch_size)
        start = time.perf_counter() - st.seconds
        bar = tqdm(
            total=sched.n_steps * cfg.batch_size,
            initial=st.step * cfg.batch_size,
            desc="sae train",
            unit="tok",
            unit_scale=True,
            disable=self.rank != 0,
        )
        local = cfg.batch_size // self.world
        self.checked = st.step
        for step in range(st.step, sched.n_steps):
            x, ctx = next(batches), None
            if self.objective is not None:  # a batch of prompts: the clean LM pass gives the SAE's inputs
                x, ctx = self.objective.prepare(x.to(self.device))
            n_batch = cfg.batch_size if ctx is None else len(x)  # tokens the SAE sees this step (all ranks)
            if self.check_each_step and not torch.isfinite(x).all():
                lo = step * cfg.batch_size
                raise NonFinite(f"non-finite activations in cache tokens [{lo}, {lo + len(x)}) at step {step}")
            if cfg.normalize_activations == "mean_norm" and step == 0:  # global batch: every rank gets the same s
                st.input_scale = float((x.shape[-1] / x.float().pow(2).sum(-1).mean()).sqrt())
            if step == 0:  # the global batch, so every rank initialises alike
                if not self.from_trained:
                    x0, y0 = self._split(x.to(self.device).float() * st.input_scale)
                    self.sae.init_from_data_(x0 if y0 is None else y0)  # what the SAE reconstructs
                for p in self.probes:
                    p.start(self.sae)
            x = x[self.rank * local : (self.rank + 1) * local].to(self.device, non_blocking=True).float()
            if st.input_scale != 1.0:
                x = x * st.input_scale
            if not self.check_each_step:
                self.bad |= ~torch.isfinite(x).all()
            for group in self.opt.param_groups:
                group["lr"] = cfg.lr * sched.lr_scale(step)
            x_in, target = self._split(x)
            loss, mse, terms, fired, l0, bad = train_step(
                self.sae,
                self.opt,
                x_in,
                cfg.dtype == "bf16",
                step,
                self.call,
                self.check_each_step,
                step / sched.n_steps,
                self.probes,
                None if ctx is None else self._objective(ctx),
                target,
            )
            self.bad |= bad
            fired = self._sum(fired)
            self.sae.observe_(fired, n_batch)
            for p in self.probes:
                p.observe(fired, cfg.batch_size, (step + 1) * cfg.batch_size)
            self.fired += fired if self.rank == 0 else 0  # summed over ranks when read
            st.window_tokens += n_batch
            st.tokens += n_batch
            self.sums += torch.stack([loss, mse, l0, *terms])
            st.steps_in_sums += 1
            done = st.step = step + 1
            if not self.check_each_step and (
                done % cfg.log_every == 0
                or done == sched.n_steps
                or (checkpointer is not None and checkpointer.due(done))
            ):
                self._raise_if_bad(done)
            if self.resample_mode != "none" and sched.resamples(done):
                dead = self._sum(self.fired) / st.window_tokens < cfg.resample_threshold
                for p in self.probes:
                    dead = p.keep(dead)
                n = resample_(self.sae, self.opt, dead, self._gather(x), self.gen, self.resample_mode)
                for p in self.probes:
                    p.after_resample(self.sae, dead.nonzero().squeeze(-1), done * cfg.batch_size)
                st.n_resampled += n
                st.resample_events.append({"step": done, "n": n})
            if done % cfg.log_every == 0 or done == sched.n_steps:  # before a window reset, so it sees a full window
                row = self._log_row(done)
                st.log_rows.append((done, row))
                bar.set_postfix(mse=f"{row['mse']:.2f}", l0=f"{row['l0']:.1f}", dead=f"{row['frac_dead_window']:.3f}")
                if log is not None and self.rank == 0:
                    log(done, row)
            if sched.opens_window(done):
                self.fired.zero_()
                st.window_tokens = 0
            bar.update(len(x))
            st.seconds = time.perf_counter() - start
            if checkpointer is not None and checkpointer.due(done) and done < sched.n_steps:
                snap = self.snapshot()  # collective: every rank takes part, rank 0 writes
                if self.rank == 0:
                    checkpointer.save(*snap)
        bar.close()
        self.sae.finish_training_(lambda t: self._sum(t) / self.world)
        if st.input_scale != 1.0:
            self.sae.fold_input_scale_(st.input_scale)  # the saved SAE reads raw activations
        return st

    def _objective(self, ctx):
        """train_step's ``objective`` for this step's prompts: the functional loss of the SAE's output."""
        fn = partial(self.objective.loss, batch=ctx, input_scale=self.state.input_scale)
        fn.TERMS = self.objective.TERMS  # names of its terms, for the NaN message
        return fn

    def _raise_if_bad(self, done: int) -> None:
        """Read the device-side NaN/inf flag (one host sync every ``log_every`` steps)."""
        if self._sum(self.bad.int()).item():
            lo, hi = self.checked * self.cfg.batch_size, done * self.cfg.batch_size
            raise NonFinite(
                f"non-finite activations or SAE loss between steps {self.checked} and {done} "
                f"(cache tokens [{lo}, {hi})); "
                "training stopped before writing a checkpoint or the SAE, the last checkpoint is kept. "
                "Lower sae.lr or check the activation cache"
            )
        self.checked = done

    def _log_row(self, done: int) -> dict:
        n_logged = max(
            1, self.state.steps_in_sums
        )  # not derived from log_every: a resumed run may log at another cadence
        loss_m, mse_m, l0_m, *terms = (self._sum(self.sums) / (n_logged * self.world)).tolist()
        self.sums.zero_()
        self.state.steps_in_sums = 0
        fired = self._sum(self.fired)
        freq = fired / max(1, self.state.window_tokens)
        return {
            "loss": loss_m,
            "mse": mse_m,
            **dict(zip(self.terms, terms)),
            "l0": l0_m,
            "lr": self.opt.param_groups[0]["lr"],
            "frac_dead_window": (fired == 0).float().mean().item(),
            "frac_ultra_low_window": (freq < self.ultra_low).float().mean().item(),
            "window_tokens": self.state.window_tokens,
        }


def train_sae(sae: SAE, batches, cfg: SAEConfig, device: torch.device, log=None) -> TrainState:
    """Train ``sae`` on an endless iterator of (B, d_in) batches (no checkpoints); ``log(step, row)``."""
    return Trainer(sae, cfg, device).run(lambda skip: batches, log)
