"""The SAE architectures besides the seed's standard one, each a small class registered by name.

Definitions, losses and what each analysis means per architecture: docs/metrics.md,
"Architectures". Adding one (Matryoshka, Gated, ...) is a class here with ``@register``,
its params model in config.py, and its tests.

* ``standard_april``: Anthropic's April 2024 update. L1 weighted by decoder row norms
  (warmed up over the first steps), no unit-norm constraint, encoder initialised as the
  decoder transpose with small decoder rows, gradient-norm clipping.
* ``topk``: the k largest pre-activations per token, ReLU (Gao et al. 2024), with the AuxK
  loss on latents dead for ``dead_tokens`` tokens. Trained through a sparse encoder/decoder
  (:class:`TopKEncode`, ``embedding_bag``): only the k active latents of each token enter
  the decoder and the encoder's gradient.
* ``batchtopk``: the k x B largest pre-activations over the batch (Bussmann et al. 2024);
  at the end of training one global threshold is estimated so inference runs as JumpReLU.
* ``jumprelu``: f = pre * H(pre - θ) with a learned per-feature θ >= 0, trained through
  straight-through estimators of bandwidth ε (Rajamanoharan et al. 2024) with an L0 penalty
  in the "step" form (the paper's) or the "tanh" form (Anthropic, January 2025).

The last three train with ``decoder: free`` (SAELens's recipe, :class:`FreeDecoderMixin`) or
``unit`` (the seed's constraint, as Gao et al. and sparsify).
"""

from __future__ import annotations

import warnings
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from saelab.config import K_ANNEAL_FRAC, anneal_problem
from saelab.errors import InputError
from saelab.sae import SAE, TrainOutput, fires, l0, mse_loss, register


@torch.no_grad()
def _tied_init_(sae: SAE, gen: torch.Generator, norm: float = 1.0) -> None:
    """Decoder rows: random directions of norm ``norm``; encoder = decoder transpose; biases 0
    (Gao et al. 2024 for TopK, Gemma Scope for JumpReLU, Anthropic's April update with norm < 1)."""
    w = torch.randn(sae.d_sae, sae.d_in, generator=gen)
    sae.W_dec.copy_(w / w.norm(dim=-1, keepdim=True) * norm)
    sae.W_enc.copy_(sae.W_dec.T)
    sae.b_enc.zero_()
    sae.b_dec.zero_()


class FreeDecoderMixin:
    """``decoder: unit | free`` (config.DecoderParams) for TopK, BatchTopK and JumpReLU.

    ``unit``: the seed's constraint (rows renormalised after each step, parallel gradient removed).
    ``free``: SAELens's recipe: rows initialised at ``dec_init_norm`` (W_enc = W_dec^T), any norm during
    training, gradient-norm clipping; ``rescale`` classes (TopK, BatchTopK) multiply pre-activations by
    the row norms and decode with unit rows, so f is measured as if the rows were unit (TopK compares
    the sizes of the features' contributions) while Adam sees a small parametrisation. At the end the norms are folded into the encoder (the function is
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
        return _resample_free_rows_(self, super().resample_rows_, idx, dirs, enc_norm)

    @torch.no_grad()
    def fold_decoder_norms_(self) -> torch.Tensor:
        """Rows to unit norm, f scaled by the norms: W_enc·n, b_enc·n, W_dec/n (same reconstruction)."""
        n = self.W_dec.norm(dim=-1).clamp_min(1e-12)
        self.W_enc *= n
        self.b_enc *= n
        self.W_dec /= n[:, None]
        return n


@torch.no_grad()
def _resample_free_rows_(sae: SAE, base, idx, dirs, enc_norm):
    """Anthropic resampling where decoder norms are free: the base recipe, then the new decoder rows
    take the mean norm of the alive rows (not 1), so a resampled feature starts at 0.2 x the alive
    encoder gain whether the norm scales the activations (TopK, BatchTopK) or the output (the rest)."""
    alive = torch.ones(sae.d_sae, dtype=torch.bool, device=idx.device)
    alive[idx] = False
    norm = sae.W_dec[alive].norm(dim=-1).mean() if alive.any() else torch.tensor(sae.dec_init_norm)
    touched = base(idx, dirs, enc_norm)
    sae.W_dec[idx] = dirs * norm
    return touched


# ---------------------------------------------------------------- standard_april


@register
class StandardApril(SAE):
    """ReLU SAE, loss = mse + λ(t) Σ_i f_i ‖W_dec[i]‖, decoder rows free (Anthropic, April 2024)."""

    architecture = "standard_april"
    TERMS = ("l1_weighted",)
    unit_norm_decoder = False

    def __init__(self, d_in: int, d_sae: int, seed: int | None = 0, l1_coeff: float = 1.0,
                 dec_init_norm: float = 0.1, l1_warmup_frac: float = 0.05, grad_clip: float = 1.0):
        self.dec_init_norm, self.l1_warmup_frac, self.grad_clip = dec_init_norm, l1_warmup_frac, grad_clip
        super().__init__(d_in, d_sae, seed, l1_coeff)

    def arch_params(self) -> dict:
        return {**super().arch_params(), "dec_init_norm": self.dec_init_norm, "l1_warmup_frac": self.l1_warmup_frac, "grad_clip": self.grad_clip}

    @torch.no_grad()
    def init_weights_(self, gen: torch.Generator) -> None:
        _tied_init_(self, gen, self.dec_init_norm)

    def train_forward(self, x: torch.Tensor, progress: float) -> TrainOutput:
        f = self.encode(x)
        mse = mse_loss(self.decode(f).float(), x)
        l1w = (f.float() * self.W_dec.norm(dim=-1)).sum(-1).mean()
        warm = min(1.0, progress / self.l1_warmup_frac) if self.l1_warmup_frac > 0 else 1.0
        return TrainOutput(mse + self.l1_coeff * warm * l1w, mse, (l1w,), fires(f), l0(f))

    @torch.no_grad()
    def before_step(self) -> None:
        if self.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.parameters(), self.grad_clip)

    @torch.no_grad()
    def fold_input_scale_(self, s: float) -> None:
        """Keep f, fold the scale into the maps: W_enc·s, W_dec/s, b_dec/s."""
        self.W_enc *= s
        self.W_dec /= s
        self.b_dec /= s

    @torch.no_grad()
    def resample_rows_(self, idx, dirs, enc_norm):
        return _resample_free_rows_(self, super().resample_rows_, idx, dirs, enc_norm)


# ---------------------------------------------------------------- topk


def _workspace(cache: dict, shape: tuple, like: torch.Tensor) -> torch.Tensor | None:
    """A (B, d_sae) CPU buffer for the pre-activations, kept across steps (None under autocast, whose
    matmul picks its own dtype). A fresh one each step is a 268 MB allocation at 16,384 x 4,096 that
    glibc maps anew, and its page faults would recur on every step."""
    if like.device.type != "cpu" or torch.is_autocast_enabled("cpu"):
        return None
    buf = cache.get("pre")
    if buf is None or buf.shape != shape or buf.dtype != like.dtype:
        cache["pre"] = buf = torch.empty(shape, dtype=like.dtype)
    return buf


class TopKEncode(torch.autograd.Function):
    """Sparse TopK encoder: forward keeps the k largest pre-activations per token (and the k_aux
    largest among ``dead`` latents); backward builds the encoder's gradients from those alone.

    Dense autograd would turn the (B, k) gradient into a (B, d_sae) one and spend a second
    B x d_in x d_sae matmul on W_enc's gradient; here it costs B x (k + k_aux) x d_in.
    """

    @staticmethod
    def forward(ctx, x, b_dec, W_enc, b_enc, k: int, dead, k_aux: int, workspace: dict):
        xc = x - b_dec
        pre = _workspace(workspace, (len(x), W_enc.shape[1]), W_enc)
        pre = torch.addmm(b_enc, xc, W_enc) if pre is None else torch.addmm(b_enc, xc, W_enc, out=pre)
        vals, idx = pre.topk(k, dim=-1, sorted=False)
        vals = vals.relu()
        aux_vals = aux_idx = None
        if dead is not None:
            dead_idx = dead.nonzero().squeeze(-1)
            aux_vals, pos = pre[:, dead_idx].topk(min(k_aux, len(dead_idx)), dim=-1, sorted=False)
            aux_vals, aux_idx = aux_vals.relu(), dead_idx[pos]
        del pre
        ctx.save_for_backward(xc, W_enc, idx, vals, aux_idx, aux_vals)
        ctx.mark_non_differentiable(idx)
        if aux_idx is not None:
            ctx.mark_non_differentiable(aux_idx)
        return vals, idx, aux_vals, aux_idx

    @staticmethod
    def backward(ctx, g_vals, g_idx, g_aux, g_aux_idx):
        xc, W_enc, idx, vals, aux_idx, aux_vals = ctx.saved_tensors
        g, flat = (g_vals * (vals > 0)).to(xc.dtype), idx  # bf16 under autocast: gradients in the weights' dtype
        if aux_idx is not None and g_aux is not None:
            g = torch.cat([g, (g_aux * (aux_vals > 0)).to(xc.dtype)], 1)
            flat = torch.cat([idx, aux_idx], 1)
        B, kk = flat.shape
        d_sae = W_enc.shape[1]
        flat = flat.reshape(-1)
        # G^T: (d_sae, B) gradient w.r.t. the pre-activations, as CSR (entries sorted by latent; a latent
        # both selected and in AuxK's set appears twice in a row and the product sums both)
        order = flat.argsort(stable=True)
        crow = torch.zeros(d_sae + 1, dtype=torch.long, device=flat.device)
        crow[1:] = torch.bincount(flat, minlength=d_sae).cumsum(0)
        tokens = torch.arange(B, device=flat.device).repeat_interleave(kk)[order]
        with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state": its matmul is tested
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            G_t = torch.sparse_csr_tensor(crow, tokens, g.reshape(-1)[order], (d_sae, B), check_invariants=False)
        grad_W_enc = (G_t @ xc).T  # (d_in, d_sae)
        grad_b_enc = torch.zeros(d_sae, dtype=g.dtype, device=g.device).index_add_(0, flat, g.reshape(-1))
        grad_b_dec = -(W_enc @ grad_b_enc)  # xc = x - b_dec: d/db_dec = -Σ_b G[b] W_enc^T
        return None, grad_b_dec, grad_W_enc, grad_b_enc, None, None, None, None


@register
class TopK(FreeDecoderMixin, SAE):
    """f = ReLU(TopK_k(pre)); loss = mse + aux_coeff · AuxK; unit-norm decoder rows (Gao et al. 2024) or
    free ones with pre-activations rescaled by their norms (SAELens)."""

    architecture = "topk"
    TERMS = ("auxk",)
    TRAIN_BUFFERS = ("since_fired",)
    rescale = True

    def __init__(self, d_in: int, d_sae: int, seed: int | None = 0, k: int = 32, k_aux: int | None = None,
                 aux_coeff: float = 1.0, dead_tokens: int = 200_000, decoder: str = "free",
                 dec_init_norm: float = 0.1, grad_clip: float = 1.0, k_anneal_start: int | None = None,
                 k_anneal_frac: float = K_ANNEAL_FRAC):
        self.set_decoder_(decoder, dec_init_norm, grad_clip)
        if k > d_sae:
            raise InputError(f"sae.{self.architecture}.k: {k} must be <= d_sae ({d_sae})")
        problem = anneal_problem(k, k_anneal_start, k_anneal_frac, getattr(self, "threshold_frac", None), d_sae)
        if problem:  # the params' check (config.TopKParams), for SAEs built without params, plus <= d_sae
            raise InputError(f"sae.{self.architecture}: {problem}")
        self.k, self.k_aux_param = k, k_aux
        self.k_anneal_start, self.k_anneal_frac = k_anneal_start, k_anneal_frac
        self.k_aux = k_aux if k_aux is not None else d_in // 2
        self.aux_coeff, self.dead_tokens = aux_coeff, dead_tokens
        self.sparse_path: bool | None = None  # None: sparse on CPU, dense on GPU (uses_sparse_path)
        self._workspace: dict = {}  # the sparse step's reused pre-activation buffer (_workspace)
        super().__init__(d_in, d_sae, seed)
        self.register_buffer("since_fired", torch.zeros(d_sae, dtype=torch.long), persistent=False)

    @torch.no_grad()
    def init_weights_(self, gen: torch.Generator) -> None:
        _tied_init_(self, gen, self.init_norm())

    @torch.no_grad()
    def init_from_data_(self, x: torch.Tensor) -> None:
        self.b_dec.copy_(x.float().mean(0))  # as sparsify (Gao et al.: the geometric median)

    def arch_params(self) -> dict:
        anneal = {} if self.k_anneal_start is None else {"k_anneal_start": self.k_anneal_start,
                                                           "k_anneal_frac": self.k_anneal_frac}
        return {"k": self.k, "k_aux": self.k_aux_param, "aux_coeff": self.aux_coeff, "dead_tokens": self.dead_tokens,
                **anneal, **self.decoder_params()}  # the schedule only when on (config.TopKParams)

    def k_at(self, progress: float) -> int:
        """Active latents per token at ``progress`` (fraction of training done): ``k``, or, with
        ``k_anneal_start`` set, geometric from k_anneal_start down to k over the first ``k_anneal_frac``
        of training (docs/metrics.md, "k annealing"). Inference always uses k."""
        if self.k_anneal_start is None or progress >= self.k_anneal_frac:
            return self.k
        t = progress / self.k_anneal_frac
        return max(self.k, round(self.k_anneal_start ** (1 - t) * self.k**t))

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        vals, idx = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter_(-1, idx, vals.relu())

    def dead(self) -> torch.Tensor:
        """Latents that have not fired for ``dead_tokens`` training tokens (the AuxK set)."""
        return self.since_fired >= self.dead_tokens

    def auxk_dead(self) -> torch.Tensor | None:
        """The dead latents when AuxK is on and there are any, else None (no AuxK this step)."""
        dead = self.dead()
        return dead if self.aux_coeff > 0 and self.k_aux > 0 and bool(dead.any()) else None

    def dense_aux_acts(self, pre: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
        """(B, d_sae) AuxK activations: ReLU of the k_aux largest pre-activations among ``dead`` latents."""
        aux_vals, aux_idx = pre.masked_fill(~dead, float("-inf")).topk(min(self.k_aux, int(dead.sum())), dim=-1)
        return torch.zeros_like(pre).scatter(-1, aux_idx, aux_vals.relu())

    @torch.no_grad()
    def finish_training_(self, average=lambda t: t) -> None:
        self._workspace.clear()
        super().finish_training_(average)

    def sparse_decode(self, idx: torch.Tensor, vals: torch.Tensor, n: torch.Tensor | None) -> torch.Tensor:
        """Σ_j vals_j · row_{idx_j} from the selected rows alone; free rows are divided by their norms
        through the weights (vals / n[idx]) rather than by materialising W_dec / n."""
        w = vals.to(self.W_dec.dtype)
        if n is not None:  # index_select, not n[idx]: the latter's backward (index_put_ with accumulate) is not
            w = w / n.index_select(0, idx.reshape(-1)).view_as(idx)  # deterministic on CPU for large batches
        return F.embedding_bag(idx, self.W_dec, per_sample_weights=w, mode="sum")

    def uses_sparse_path(self, device: torch.device) -> bool:
        """The sparse step on CPU (measured faster: benchmarks/topk_speed.py); dense matmuls on a GPU,
        where they are what the hardware does best, unless ``sparse_path`` says otherwise."""
        return self.sparse_path if self.sparse_path is not None else device.type == "cpu"

    def train_forward(self, x: torch.Tensor, progress: float) -> TrainOutput:
        dead = self.auxk_dead()
        k = self.k_at(progress)
        if self.uses_sparse_path(x.device):
            n = self.row_norms()  # free rows scale the encoder (autograd: W_enc * n and its backward, d_in x d_sae)
            W_enc, b_enc = (self.W_enc, self.b_enc) if n is None else (self.W_enc * n, self.b_enc * n)
            vals, idx, aux_vals, aux_idx = TopKEncode.apply(x, self.b_dec, W_enc, b_enc, k, dead, self.k_aux,
                                                            self._workspace)
            vals = vals.to(self.W_dec.dtype)  # under bf16 autocast the encoder's matmul gives bf16
            x_hat = self.sparse_decode(idx, vals, n) + self.b_dec
            decode_aux = None if aux_idx is None else (lambda: self.sparse_decode(aux_idx, aux_vals, n))
        else:  # dense autograd: (B, d_sae) activations, matmul decoder
            rows = self.dec_rows()
            pre = self.pre_acts(x)
            vals, idx = pre.topk(k, dim=-1, sorted=False)
            vals = vals.relu()
            x_hat = torch.zeros_like(pre).scatter(-1, idx, vals) @ rows + self.b_dec
            decode_aux = None
            if dead is not None:
                aux_f = self.dense_aux_acts(pre, dead)
                decode_aux = (lambda: aux_f @ rows)
        mse = mse_loss(x_hat.float(), x)
        if decode_aux is not None:
            auxk = mse_loss(decode_aux().float(), (x - x_hat).detach().float())
        else:
            auxk = torch.zeros((), device=x.device)
        live = vals > 0
        fired = torch.zeros(self.d_sae, device=x.device).index_add_(0, idx[live], torch.ones(int(live.sum()), device=x.device))
        return TrainOutput(mse + self.aux_coeff * auxk, mse, (auxk,), fired, live.sum(-1).float().mean())

    @torch.no_grad()
    def observe_(self, fired: torch.Tensor, n_tokens: int) -> None:
        self.since_fired += n_tokens
        self.since_fired[fired > 0] = 0

    def saelens(self):
        cfg, w = super().saelens()
        return {**cfg, "architecture": "topk", "k": self.k}, w


@register
class BatchTopK(TopK):
    """Training: the k·B largest pre-activations of the batch (ReLU). Inference: JumpReLU with one
    global threshold θ, the mean over the last ``threshold_frac`` of training of each batch's
    smallest selected activation (Bussmann et al. 2024)."""

    architecture = "batchtopk"
    TRAIN_BUFFERS = ("since_fired", "theta_sum", "theta_n")

    def __init__(self, d_in: int, d_sae: int, seed: int | None = 0, k: int = 32, k_aux: int | None = None,
                 aux_coeff: float = 1.0, dead_tokens: int = 200_000, threshold_frac: float = 0.1,
                 decoder: str = "free", dec_init_norm: float = 0.1, grad_clip: float = 1.0,
                 k_anneal_start: int | None = None, k_anneal_frac: float = K_ANNEAL_FRAC):
        self.threshold_frac = threshold_frac  # before TopK's __init__, whose anneal check reads it
        super().__init__(d_in, d_sae, seed, k, k_aux, aux_coeff, dead_tokens, decoder, dec_init_norm, grad_clip,
                         k_anneal_start, k_anneal_frac)
        self.register_buffer("threshold", torch.zeros(d_sae))  # saved: inference reads it
        self.register_buffer("theta_sum", torch.zeros((), dtype=torch.float64), persistent=False)
        self.register_buffer("theta_n", torch.zeros((), dtype=torch.float64), persistent=False)

    def arch_params(self) -> dict:
        return {**super().arch_params(), "threshold_frac": self.threshold_frac}

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        return pre * (pre > self.threshold)

    def batch_topk(self, pre: torch.Tensor, k: int | None = None) -> torch.Tensor:
        flat = pre.relu().flatten()
        vals, idx = flat.topk(min((self.k if k is None else k) * len(pre), flat.numel()), sorted=False)
        return torch.zeros_like(flat).scatter_(0, idx, vals).view_as(pre)

    def train_activations(self, x: torch.Tensor) -> torch.Tensor:
        return self.batch_topk(self.pre_acts(x))

    def train_forward(self, x: torch.Tensor, progress: float) -> TrainOutput:
        pre = self.pre_acts(x)
        f = self.batch_topk(pre, self.k_at(progress))
        rows = self.dec_rows()
        x_hat = f @ rows + self.b_dec
        mse = mse_loss(x_hat.float(), x)
        dead = self.auxk_dead()
        if dead is not None:
            auxk = mse_loss((self.dense_aux_acts(pre, dead) @ rows).float(), (x - x_hat).detach().float())
        else:
            auxk = torch.zeros((), device=x.device)
        if progress >= 1 - self.threshold_frac:
            with torch.no_grad():
                live = f[f > 0]
                if live.numel():
                    self.theta_sum += live.min().double()
                    self.theta_n += 1
        return TrainOutput(mse + self.aux_coeff * auxk, mse, (auxk,), fires(f), l0(f))

    @torch.no_grad()
    def finish_training_(self, average=lambda t: t) -> None:
        """θ in units of the (rescaled) pre-activations, which the norms' fold leaves unchanged."""
        n = average(self.theta_n.clone())
        if n <= 0:  # config validation rules this out; kept so a θ of 0 (plain ReLU) can never pass silently
            raise InputError("batchtopk: no training step estimated the inference threshold; raise "
                             "sae.batchtopk.threshold_frac or sae.n_tokens")
        self.threshold.fill_(float(average(self.theta_sum.clone()) / n))
        super().finish_training_(average)

    @torch.no_grad()
    def fold_input_scale_(self, s: float) -> None:
        super().fold_input_scale_(s)
        self.threshold /= s

    def saelens(self):
        cfg, w = SAE.saelens(self)
        return {**cfg, "architecture": "jumprelu"}, {**w, "threshold": self.threshold.detach().float().clone()}


# ---------------------------------------------------------------- jumprelu


def _rect(u: torch.Tensor) -> torch.Tensor:
    """Rectangle kernel: 1 on (-1/2, 1/2)."""
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class JumpReLUFn(torch.autograd.Function):
    """pre · H(pre − θ); ∂/∂pre = H(pre − θ), ∂/∂θ = −(θ/ε)·K((pre − θ)/ε) (straight-through)."""

    @staticmethod
    def forward(ctx, pre, theta, bandwidth: float):
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return pre * (pre > theta)

    @staticmethod
    def backward(ctx, g):
        pre, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        g_theta = -(theta / eps) * _rect((pre - theta) / eps) * g
        return g * (pre > theta), g_theta.sum(0), None


class StepFn(torch.autograd.Function):
    """H(pre − θ); ∂/∂pre = 0, ∂/∂θ = −(1/ε)·K((pre − θ)/ε) (straight-through)."""

    @staticmethod
    def forward(ctx, pre, theta, bandwidth: float):
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, g):
        pre, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        return None, (-(1 / eps) * _rect((pre - theta) / eps) * g).sum(0), None


@register
class JumpReLU(FreeDecoderMixin, SAE):
    """f = pre · H(pre − θ) with a learned per-feature θ >= 0; loss = mse + l0_coeff · sparsity, with
    sparsity = Σ_i H(pre_i − θ_i) ("step") or Σ_i tanh(c · f_i · ‖W_dec[i]‖) ("tanh"); unit-norm decoder
    rows or free ones (SAELens: no rescaling, f carries 1/‖W_dec[i]‖; folded into f and θ at the end).

    θ is a parameter of its own, clamped at 0 after every step (as SAELens trains it), not exp of a
    log-threshold: with Adam a log-threshold moves by a relative ~lr per step, far too slowly for a
    run of a few thousand steps."""

    architecture = "jumprelu"
    TERMS = ("l0_penalty",)
    FEATURE_AXIS = {**SAE.FEATURE_AXIS, "threshold": 0}

    def __init__(self, d_in: int, d_sae: int, seed: int | None = 0, l0_coeff: float = 1.0, bandwidth: float = 0.05,
                 threshold_init: float = 0.01, sparsity: str = "tanh", tanh_scale: float = 4.0, decoder: str = "free",
                 dec_init_norm: float = 0.1, grad_clip: float = 1.0, b_dec_init: str = "mean"):
        self.set_decoder_(decoder, dec_init_norm, grad_clip)
        if b_dec_init not in ("mean", "zero"):
            raise InputError(f"sae.jumprelu.b_dec_init: {b_dec_init!r} is not one of mean, zero")
        self.b_dec_init = b_dec_init
        self.l0_coeff, self.bandwidth, self.threshold_init = l0_coeff, bandwidth, threshold_init
        self.sparsity, self.tanh_scale = sparsity, tanh_scale
        SAE.__init__(self, d_in, d_sae, seed=None)
        self.threshold = nn.Parameter(torch.full((d_sae,), float(threshold_init)))
        if seed is not None:
            self.init_weights_(torch.Generator().manual_seed(seed))

    def arch_params(self) -> dict:
        return {"l0_coeff": self.l0_coeff, "bandwidth": self.bandwidth, "threshold_init": self.threshold_init,
                "sparsity": self.sparsity, "tanh_scale": self.tanh_scale, **self.decoder_params(),
                **({"b_dec_init": "zero"} if self.b_dec_init == "zero" else {})}  # as config.JumpReLUParams saves it

    @torch.no_grad()
    def init_weights_(self, gen: torch.Generator) -> None:
        _tied_init_(self, gen, self.init_norm())
        if hasattr(self, "threshold"):
            self.threshold.fill_(self.threshold_init)

    @torch.no_grad()
    def init_from_data_(self, x: torch.Tensor) -> None:
        """b_dec at the first batch's mean, or left at 0 (``b_dec_init: zero``, as SAELens's trainer starts)."""
        if self.b_dec_init == "mean":
            self.b_dec.copy_(x.float().mean(0))

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        return pre * (pre > self.threshold)

    def train_forward(self, x: torch.Tensor, progress: float) -> TrainOutput:
        pre = self.pre_acts(x)
        f = JumpReLUFn.apply(pre, self.threshold, self.bandwidth)
        mse = mse_loss(self.decode(f).float(), x)
        if self.sparsity == "step":
            penalty = StepFn.apply(pre, self.threshold, self.bandwidth).sum(-1).mean()
        else:
            penalty = torch.tanh(self.tanh_scale * f * self.W_dec.norm(dim=-1)).sum(-1).mean()
        return TrainOutput(mse + self.l0_coeff * penalty, mse, (penalty,), fires(f), l0(f))

    @torch.no_grad()
    def after_step(self) -> None:
        super().after_step()
        self.threshold.clamp_(min=0.0)

    @torch.no_grad()
    def fold_decoder_norms_(self) -> torch.Tensor:
        n = super().fold_decoder_norms_()
        self.threshold *= n
        return n

    @torch.no_grad()
    def fold_input_scale_(self, s: float) -> None:
        super().fold_input_scale_(s)
        self.threshold /= s

    @torch.no_grad()
    def resample_rows_(self, idx, dirs, enc_norm):
        touched = super().resample_rows_(idx, dirs, enc_norm)
        self.threshold[idx] = self.threshold_init
        return [*touched, (self.threshold, (idx,))]

    def saelens(self):
        cfg, w = super().saelens()
        return {**cfg, "architecture": "jumprelu"}, {**w, "threshold": self.threshold.detach().float().clone()}


def build(cfg, d_in: int, seed: int | None = None):
    """The SAE ``cfg`` (an SAEConfig) describes: its architecture, width and params; seeded by ``seed``
    (default: ``cfg.seed``)."""
    from saelab.sae import REGISTRY

    return REGISTRY[cfg.architecture](d_in, cfg.width(d_in), seed=cfg.seed if seed is None else seed, **cfg.arch_params())
