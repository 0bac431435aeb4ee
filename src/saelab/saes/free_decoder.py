"""What TopK, BatchTopK and JumpReLU share: ``decoder: unit | free`` (its params and its mixin) and the
tied initialisation (docs/metrics.md, "Architectures")."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from saelab.errors import InputError
from saelab.saes.base import SAE
from saelab.section import Section


class DecoderParams(Section):
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


@torch.no_grad()
def tied_init_(sae: SAE, gen: torch.Generator, norm: float = 1.0) -> None:
    """Decoder rows: random directions of norm ``norm``; encoder = decoder transpose; biases 0
    (Gao et al. 2024 for TopK, Gemma Scope for JumpReLU, Anthropic's April update with norm < 1)."""
    w = torch.randn(sae.d_sae, sae.d_in, generator=gen)
    sae.W_dec.copy_(w / w.norm(dim=-1, keepdim=True) * norm)
    sae.W_enc.copy_(sae.W_dec.T)
    sae.b_enc.zero_()
    sae.b_dec.zero_()


class FreeDecoderMixin:
    """``decoder: unit | free`` (saelab.saes.free_decoder.DecoderParams) for TopK, BatchTopK and JumpReLU.

    ``unit``: the reference's constraint (rows renormalised after each step, parallel gradient removed).
    ``free``: SAELens's recipe: rows initialised at ``dec_init_norm`` (W_enc = W_dec^T), any norm during
    training, gradient-norm clipping; ``rescale`` classes (TopK, BatchTopK) multiply pre-activations by
    the row norms and decode with unit rows, so f is measured as if the rows were unit (TopK compares
    the sizes of the features' contributions) while Adam sees a small parametrisation. At the end the norms are
    folded into the encoder (the function is
    unchanged, the saved rows are unit), so evaluation and analysis read every SAE the same way.
    """

    rescale: ClassVar[bool] = False

    def set_decoder_(self, decoder: str, dec_init_norm: float, grad_clip: float) -> None:
        if decoder not in ("unit", "free"):
            raise InputError(f"sae.{self.architecture}.decoder: {decoder!r} is not one of unit, free")
        self.decoder, self.dec_init_norm, self.grad_clip = decoder, dec_init_norm, grad_clip
        self.unit_norm_decoder = decoder == "unit"

    def decoder_params(self) -> dict:
        return {"decoder": self.decoder, "dec_init_norm": self.dec_init_norm, "grad_clip": self.grad_clip}

    def init_norm(self) -> float:
        return 1.0 if self.unit_norm_decoder else self.dec_init_norm

    def row_norms(self) -> torch.Tensor | None:
        """(d_sae,) decoder row norms where pre-activations are rescaled by them, else None."""
        return None if self.unit_norm_decoder or not self.rescale else self.W_dec.norm(dim=-1)

    def dec_rows(self) -> torch.Tensor:
        """The decoder rows reconstruction uses: W_dec, or its unit rows when rescaling."""
        n = self.row_norms()
        return self.W_dec if n is None else self.W_dec / n[:, None]

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        pre = super().pre_acts(x)
        n = self.row_norms()
        return pre if n is None else pre * n

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.dec_rows() + self.b_dec

    @torch.no_grad()
    def before_step(self) -> None:
        super().before_step()
        if not self.unit_norm_decoder and self.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.parameters(), self.grad_clip)

    @torch.no_grad()
    def finish_training_(self, average=lambda t: t) -> None:
        super().finish_training_(average)
        if not self.unit_norm_decoder:
            self.fold_decoder_norms_()

    @torch.no_grad()
    def resample_rows_(self, idx, dirs, enc_norm):
        if self.unit_norm_decoder:
            return super().resample_rows_(idx, dirs, enc_norm)
        return resample_free_rows_(self, super().resample_rows_, idx, dirs, enc_norm)

    @torch.no_grad()
    def fold_decoder_norms_(self) -> torch.Tensor:
        """Rows to unit norm, f scaled by the norms: W_enc·n, b_enc·n, W_dec/n (same reconstruction)."""
        n = self.W_dec.norm(dim=-1).clamp_min(1e-12)
        self.W_enc *= n
        self.b_enc *= n
        self.W_dec /= n[:, None]
        return n


@torch.no_grad()
def resample_free_rows_(sae: SAE, base, idx, dirs, enc_norm):
    """Anthropic resampling where decoder norms are free: the base recipe, then the new decoder rows
    take the mean norm of the alive rows (not 1), so a resampled feature starts at 0.2 x the alive
    encoder gain whether the norm scales the activations (TopK, BatchTopK) or the output (the rest)."""
    alive = torch.ones(sae.d_sae, dtype=torch.bool, device=idx.device)
    alive[idx] = False
    norm = sae.W_dec[alive].norm(dim=-1).mean() if alive.any() else torch.tensor(sae.dec_init_norm)
    touched = base(idx, dirs, enc_norm)
    sae.W_dec[idx] = dirs * norm
    return touched
