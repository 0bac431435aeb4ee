"""The sparse autoencoder of "Towards Monosemanticity" (Bricken et al. 2023), as replicated on gelu-1l.

    f  = ReLU((x - b_dec) @ W_enc + b_enc)      # (B, d_sae)
    x̂ = f @ W_dec + b_dec                       # (B, d_in)

W_enc is [d_in, d_sae] and W_dec is [d_sae, d_in] (untied). Rows of W_dec are kept at
unit norm, so feature activations carry the scale and the L1 penalty cannot be
dodged by shrinking f and growing W_dec.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from saelab.errors import InputError
from saelab.io import load_weights, read_json, save_weights, write_json

WEIGHTS = "sae.safetensors"
CONFIG = "config.json"


class SAEOutput(NamedTuple):
    x_hat: torch.Tensor  # (B, d_in) reconstruction
    f: torch.Tensor  # (B, d_sae) feature activations, >= 0


class SAE(nn.Module):
    """Untied ReLU SAE with a pre-encoder bias (the decoder bias, subtracted before encoding)."""

    def __init__(self, d_in: int, d_sae: int, seed: int | None = 0):
        super().__init__()
        self.d_in, self.d_sae = d_in, d_sae
        self.W_enc = nn.Parameter(torch.empty(d_in, d_sae))
        self.W_dec = nn.Parameter(torch.empty(d_sae, d_in))
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        with torch.no_grad():
            # Kaiming-uniform as in the seed's code: bound = sqrt(6 / fan_in), fan_in = size(1).
            self.W_enc.uniform_(-(6 / d_sae) ** 0.5, (6 / d_sae) ** 0.5, generator=gen)
            self.W_dec.uniform_(-(6 / d_in) ** 0.5, (6 / d_in) ** 0.5, generator=gen)
        self.normalize_decoder_()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu((x - self.b_dec) @ self.W_enc + self.b_enc)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> SAEOutput:
        f = self.encode(x)
        return SAEOutput(self.decode(f), f)

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

    # ------------------------------------------------------------ persistence

    def save(self, out: str | Path, meta: dict) -> None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        save_weights(out / WEIGHTS, {k: v for k, v in self.state_dict().items()})
        write_json(out / CONFIG, {"d_in": self.d_in, "d_sae": self.d_sae, **meta})

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> tuple["SAE", dict]:
        path = Path(path)
        meta = read_json(path / CONFIG)
        weights = load_weights(path / WEIGHTS)
        sae = cls(meta["d_in"], meta["d_sae"], seed=None)
        expected = {"W_enc": (sae.d_in, sae.d_sae), "W_dec": (sae.d_sae, sae.d_in), "b_enc": (sae.d_sae,), "b_dec": (sae.d_in,)}
        for key, shape in expected.items():
            if key not in weights or tuple(weights[key].shape) != shape:
                got = tuple(weights[key].shape) if key in weights else "absent"
                raise InputError(f"{path / WEIGHTS}: {key} is {got}, config says {shape}; rerun `dvc repro train`")
        sae.load_state_dict(weights)
        return sae.to(device), meta


# ---------------------------------------------------------------- losses (pure)


def mse_loss(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of the squared error summed over dims: (B, d) x2 -> ()."""
    return (x_hat - x).pow(2).sum(-1).mean()


def l1_loss(f: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of sum_i |f_i|: (B, d_sae) -> (). Independent of batch size."""
    return f.abs().sum(-1).mean()


def l0(f: torch.Tensor) -> torch.Tensor:
    """Mean number of nonzero features per token: (B, d_sae) -> ()."""
    return (f > 0).float().sum(-1).mean()
