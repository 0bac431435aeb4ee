"""The interface every SAE architecture implements, its reference behaviour, and the pure losses.

Every architecture shares the affine maps of "Towards Monosemanticity" (Bricken et al. 2023)

    pre = (x - b_dec) @ W_enc + b_enc          # (B, d_sae) pre-activations
    f   = activate(pre)                        # (B, d_sae) feature activations, >= 0
    x̂  = f @ W_dec + b_dec                     # (B, d_in)

with W_enc [d_in, d_sae] and W_dec [d_sae, d_in] (untied), and differs only in
``activate``, in its training loss terms, in what happens around an optimiser step and
in how it is exported. :class:`SAE` is that interface and the standard architecture
(ReLU, L1, unit-norm decoder rows), registered as ``standard`` by :mod:`saelab.saes.standard`;
the others subclass it, one module each in :mod:`saelab.saes`, registered by name
(:mod:`saelab.registry`). Trainer, evaluate and analysis code call only this interface:

* ``sae(x)`` -> :class:`SAEOutput` (inference), ``sae.encode(x)``, ``sae.decode(f)``;
* ``sae(x, train=True, progress=p)`` -> :class:`TrainOutput` (loss and its named terms;
  through ``forward`` so that DistributedDataParallel sees the call);
* ``init_from_data_(x)`` once with the first batch; ``before_step()`` / ``after_step()`` around
  ``opt.step()``; ``observe_(fired, n_tokens)`` after it with the batch's fire counts;
  ``finish_training_(average)`` once at the end;
* ``resample_rows_(...)`` to re-initialise dead features; ``saelens()`` for the export.

A **transcoder** (``transcoder = True``; docs/metrics.md, "Transcoders") is the same architecture reading one
hook and reconstructing another of the same width: the encoder reads x raw (``pre = x @ W_enc + b_enc``, b_dec
is the output's bias only, as SAELens's transcoders) and every loss compares x̂ with ``target``, not with x.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import ClassVar, NamedTuple

import torch
from torch import nn

from saelab import registry
from saelab.errors import InputError
from saelab.io import load_weights, read_json, save_weights, write_json

WEIGHTS = "sae.safetensors"
CONFIG = "config.json"


class SAEOutput(NamedTuple):
    x_hat: torch.Tensor  # (B, d_in) reconstruction
    f: torch.Tensor  # (B, d_sae) feature activations, >= 0


class TrainOutput(NamedTuple):
    loss: torch.Tensor  # () what the optimiser minimises
    mse: torch.Tensor  # () mse_loss of the reconstruction
    terms: tuple  # () each, unscaled, in the order of the class's TERMS
    fired: torch.Tensor  # (d_sae,) float: tokens of the batch on which each feature was active
    l0: torch.Tensor  # () mean active features per token
    x_hat: torch.Tensor | None = None  # (B, d_in) the reconstruction, in the graph (functional losses splice it)
    aux_mse: torch.Tensor | None = None  # () the weighted activation-space terms inside loss (AuxK), or None


class SAE(nn.Module):
    """Standard architecture: untied ReLU SAE with a pre-encoder bias, unit-norm decoder rows and L1.

    Loss: mse_loss + l1_coeff * l1_loss. Before each step the component of W_dec.grad along
    each row is removed; after it the rows are renormalised to exactly unit norm, so
    activations carry the scale and the L1 penalty cannot be dodged by shrinking f.
    """

    architecture: ClassVar[str] = "standard"
    Params: ClassVar[type | None] = None  # its params section model (saelab.registry)
    COMMON_PARAMS: ClassVar[tuple[str, ...]] = ("l1_coeff",)  # keys of the sae section it takes
    KNOB: ClassVar[tuple[str | None, str]] = (None, "l1_coeff")  # the sparsity knob (section, key)
    TERMS: ClassVar[tuple[str, ...]] = ("l1",)  # names of the loss terms, logged with these keys
    unit_norm_decoder: ClassVar[bool] = True
    TRAIN_BUFFERS: ClassVar[tuple[str, ...]] = ()  # training-only state a checkpoint must carry
    FEATURE_AXIS: ClassVar[dict[str, int]] = {
        "W_enc": 1,
        "W_dec": 0,
        "b_enc": 0,
    }  # per-feature slices of each parameter

    def __init__(self, d_in: int, d_sae: int, seed: int | None = 0, l1_coeff: float = 1.0, **arch):
        super().__init__()
        if arch:
            raise InputError(f"architecture {self.architecture!r} takes no parameters {sorted(arch)}")
        self.d_in, self.d_sae = d_in, d_sae
        self.l1_coeff = l1_coeff
        self.W_enc = nn.Parameter(torch.empty(d_in, d_sae))
        self.W_dec = nn.Parameter(torch.empty(d_sae, d_in))
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.transcoder = False  # set by the train stage for a transcoder, by load from config.json's input_hook
        if seed is not None:
            self.init_weights_(torch.Generator().manual_seed(seed))

    @torch.no_grad()
    def init_weights_(self, gen: torch.Generator) -> None:
        # Kaiming-uniform as in the reference code: bound = sqrt(6 / fan_in), fan_in = size(1).
        self.W_enc.uniform_(-((6 / self.d_sae) ** 0.5), (6 / self.d_sae) ** 0.5, generator=gen)
        self.W_dec.uniform_(-((6 / self.d_in) ** 0.5), (6 / self.d_in) ** 0.5, generator=gen)
        self.b_enc.zero_()
        self.b_dec.zero_()
        self.normalize_decoder_()

    def arch_params(self) -> dict:
        """What, besides d_in and d_sae, rebuilds this SAE, loss coefficients included (stored in config.json)."""
        return {"l1_coeff": self.l1_coeff}

    # ------------------------------------------------------------ inference

    def input_bias(self) -> torch.Tensor:
        """What the encoder subtracts from x: b_dec for an SAE, nothing (zeros) for a transcoder."""
        return self.b_dec.new_zeros(self.d_in) if self.transcoder else self.b_dec

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.input_bias()) @ self.W_enc + self.b_enc

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        return torch.relu(pre)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.pre_acts(x))

    def train_activations(self, x: torch.Tensor) -> torch.Tensor:
        """f as training computes it (differs from ``encode`` only for BatchTopK)."""
        return self.encode(x)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor, train: bool = False, progress: float = 1.0, target: torch.Tensor | None = None):
        if train:
            # an architecture without transcoder support need not know the keyword (tests/test_toy_architecture.py)
            return self.train_forward(x, progress) if target is None else self.train_forward(x, progress, target=target)
        f = self.encode(x)
        return SAEOutput(self.decode(f), f)

    # ------------------------------------------------------------ training

    def train_forward(self, x: torch.Tensor, progress: float, target: torch.Tensor | None = None) -> TrainOutput:
        """Loss and its terms on a batch x, reconstructing ``target`` (None: x itself, an SAE); ``progress`` is the
        fraction of training done (0..1)."""
        target = x if target is None else target
        f = self.encode(x)
        x_hat = self.decode(f)
        mse = mse_loss(x_hat.float(), target)
        l1 = l1_loss(f.float())
        return TrainOutput(mse + self.l1_coeff * l1, mse, (l1,), fires(f), l0(f), x_hat)

    @torch.no_grad()
    def before_step(self) -> None:
        """Between backward and the optimiser step (gradient surgery)."""
        if self.unit_norm_decoder:
            self.remove_parallel_grad_()

    @torch.no_grad()
    def after_step(self) -> None:
        """After the optimiser step (constraints)."""
        if self.unit_norm_decoder:
            self.normalize_decoder_()

    @torch.no_grad()
    def init_from_data_(self, x: torch.Tensor) -> None:
        """Once, before the first step, with the first global batch of what the SAE reconstructs (its input, or a
        transcoder's target): data-dependent initialisation of the output side."""

    @torch.no_grad()
    def observe_(self, fired: torch.Tensor, n_tokens: int) -> None:
        """Per-step fire counts (d_sae,) over ``n_tokens`` tokens of the global batch (all ranks)."""

    @torch.no_grad()
    def finish_training_(self, average=lambda t: t) -> None:
        """Once at the end of training; ``average`` takes the mean of a tensor over DDP ranks."""

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        self.W_dec /= self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    @torch.no_grad()
    def remove_parallel_grad_(self) -> None:
        """Project out of W_dec.grad its component along each (unit) row, so Adam moves rows tangentially."""
        if self.W_dec.grad is None:
            return
        parallel = (self.W_dec.grad * self.W_dec).sum(-1, keepdim=True)  # (d_sae, 1)
        self.W_dec.grad -= parallel * self.W_dec

    @torch.no_grad()
    def fold_input_scale_(self, s: float) -> None:
        """Trained on s * x: make the SAE read raw x. Here f scales by 1/s (decoder rows stay unit)."""
        self.b_enc /= s
        self.b_dec /= s

    # ------------------------------------------------------------ resampling

    @torch.no_grad()
    def resample_rows_(self, idx: torch.Tensor, dirs: torch.Tensor, enc_norm: torch.Tensor) -> list[tuple]:
        """Anthropic resampling of features ``idx``: decoder row = unit ``dirs`` (n, d_in), encoder
        column = dirs x 0.2 x ``enc_norm``, encoder bias 0. Returns the (parameter, slice) pairs touched."""
        self.W_dec[idx] = dirs
        self.W_enc[:, idx] = dirs.T * 0.2 * enc_norm
        self.b_enc[idx] = 0.0
        return [(self.W_dec, (idx,)), (self.W_enc, (slice(None), idx)), (self.b_enc, (idx,))]

    @torch.no_grad()
    def reinit_rows_(self, idx: torch.Tensor, gen: torch.Generator) -> list[tuple]:
        """The reference's resampling: features ``idx`` get a fresh draw of this architecture's initialisation."""
        fresh = copy.deepcopy(self)
        fresh.init_weights_(gen)
        touched = []
        for name, axis in self.FEATURE_AXIS.items():
            p, sl = getattr(self, name), (slice(None),) * axis + (idx,)
            p[sl] = getattr(fresh, name)[sl]
            touched.append((p, sl))
        return touched

    # ------------------------------------------------------------ interchange

    def saelens(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """(architecture-specific cfg.json fields, weights) of SAELens's on-disk format."""
        return {"architecture": "standard"}, {
            k: getattr(self, k).detach().float() for k in ("W_enc", "W_dec", "b_enc", "b_dec")
        }

    # ------------------------------------------------------------ persistence

    def save(self, out: str | Path, meta: dict) -> None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        if self.transcoder != ("input_hook" in meta):
            raise ValueError("a transcoder's config.json names its input_hook, an SAE's does not")
        save_weights(out / WEIGHTS, dict(self.state_dict()))
        write_json(
            out / CONFIG,
            {
                "d_in": self.d_in,
                "d_sae": self.d_sae,
                "architecture": self.architecture,
                "arch_params": self.arch_params(),
                **meta,
            },
        )

    @staticmethod
    def load(path: str | Path, device: str | torch.device = "cpu") -> tuple[SAE, dict]:
        """Any registered architecture from ``path`` (config.json names it; absent = standard)."""
        path = Path(path)
        meta = read_json(path / CONFIG)
        name = meta.get("architecture", "standard")
        if name not in registry.REGISTRY:
            raise InputError(f"{path / CONFIG}: unknown architecture {name!r}; known: {sorted(registry.REGISTRY)}")
        sae = registry.REGISTRY[name](meta["d_in"], meta["d_sae"], seed=None, **meta.get("arch_params", {}))
        weights = load_weights(path / WEIGHTS)
        expected = {k: tuple(v.shape) for k, v in sae.state_dict().items()}
        for key, shape in expected.items():
            if key not in weights or tuple(weights[key].shape) != shape:
                got = tuple(weights[key].shape) if key in weights else "absent"
                raise InputError(f"{path / WEIGHTS}: {key} is {got}, config says {shape}; rerun `dvc repro train`")
        sae.load_state_dict(weights)
        sae.transcoder = "input_hook" in meta
        return sae.to(device), meta


# ---------------------------------------------------------------- losses (pure)


def mse_loss(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of the squared error summed over dims: (B, d) x2 -> ()."""
    return (x_hat - x).pow(2).sum(-1).mean()


def l1_loss(f: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of sum_i |f_i|: (B, d_sae) -> (). Independent of batch size."""
    return f.abs().sum(-1).mean()


def fires(f: torch.Tensor) -> torch.Tensor:
    """Per-feature count of tokens on which each feature is active: (B, d_sae) -> (d_sae,) float."""
    return (f > 0).sum(0).float()


def l0(f: torch.Tensor) -> torch.Tensor:
    """Mean number of nonzero features per token: (B, d_sae) -> ()."""
    return (f > 0).float().sum(-1).mean()
