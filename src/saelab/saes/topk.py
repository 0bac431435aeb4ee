"""``topk``: the k largest pre-activations per token, ReLU (Gao et al. 2024), with the AuxK loss on
latents dead for ``dead_tokens`` tokens. Trained through a sparse encoder/decoder
(:class:`TopKEncode`, ``embedding_bag``): only the k active latents of each token enter the decoder
and the encoder's gradient (docs/metrics.md, "Architectures", "k annealing")."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from pydantic import Field, model_serializer, model_validator

from saelab.errors import InputError
from saelab.registry import register
from saelab.saes.base import SAE, TrainOutput, mse_loss
from saelab.saes.free_decoder import DecoderParams, FreeDecoderMixin, tied_init_

K_ANNEAL_FRAC = 0.8  # k_anneal_frac's default


def anneal_problem(
    k: int, start: int | None, frac: float, threshold_frac: float | None = None, d_sae: int | None = None
) -> str | None:
    """What is wrong with a k-annealing setting, or None. One check for the params (TopKParams,
    BatchTopKParams) and the classes (TopK, BatchTopK), which can also be built without params;
    ``threshold_frac``: BatchTopK's; ``d_sae``: known to the classes only."""
    if not 0 < frac < 1:  # the params' Field says so too; the classes can be built without them
        return f"k_anneal_frac ({frac}) must lie in (0, 1): the last steps train at k"
    if start is None:
        if frac != K_ANNEAL_FRAC:
            return (
                f"k_anneal_frac ({frac}) has no effect without k_anneal_start: set k_anneal_start (the k training "
                f"starts at) or leave k_anneal_frac at {K_ANNEAL_FRAC}"
            )
        return None
    if start < k:
        return f"k_anneal_start ({start}) must be >= k ({k}): the schedule falls to k; null turns it off"
    if d_sae is not None and start > d_sae:
        return f"k_anneal_start ({start}) must be <= d_sae ({d_sae}); null turns the schedule off"
    if threshold_frac is not None and frac > 1 - threshold_frac:
        return (
            f"k_anneal_frac ({frac}) must end before the inference threshold's window, the last threshold_frac "
            f"({threshold_frac}) of training: lower one of them"
        )
    return None


class TopKParams(DecoderParams):
    """``sae.topk``: TopK with the AuxK dead-latent loss (Gao et al. 2024)."""

    k: int = Field(32, gt=0)
    """Active latents per token."""
    k_aux: int | None = Field(None, ge=0)
    """Dead latents the AuxK loss reconstructs the residual with (null = d_in / 2)."""
    aux_coeff: float = Field(1.0, ge=0)
    """Weight of the AuxK loss (0 = off); un-normalised like the mse term. 1 is SAELens's coefficient, without
    its min(n_dead / k_aux, 1) factor (docs/metrics.md, "Architectures")."""
    dead_tokens: int = Field(200_000, gt=0)
    """A latent that has not fired for this many training tokens is dead (for AuxK)."""
    k_anneal_start: int | None = Field(None, gt=0)
    """null: k from the first step. Else training starts at this many active latents per token and k falls
    geometrically to ``k`` over the first ``k_anneal_frac`` of training (docs/metrics.md, "k annealing");
    fewer dead latents at small k, measured in benchmarks/results/frontier_cpu."""
    k_anneal_frac: float = Field(K_ANNEAL_FRAC, gt=0, lt=1)
    """Fraction of training over which k anneals (only with ``k_anneal_start``; another value without it is
    refused); below 1, so the last steps train at k."""

    @model_validator(mode="after")
    def _anneal_checks(self) -> TopKParams:
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
    def forward(ctx, x, b_dec, W_enc, b_enc, n, k: int, dead, k_aux: int, workspace: dict):
        xc = x - b_dec
        # free rows: pre-activations scaled by the row norms n, through a scaled copy of the weights (no
        # autograd graph: backward scales the (B, k) gradient by n[idx] instead)
        W, b = (W_enc, b_enc) if n is None else (W_enc * n, b_enc * n)
        pre = _workspace(workspace, (len(x), W_enc.shape[1]), W_enc)
        pre = torch.addmm(b, xc, W) if pre is None else torch.addmm(b, xc, W, out=pre)
        del W, b
        vals, idx = pre.topk(k, dim=-1, sorted=False)
        vals = vals.relu()
        aux_vals = aux_idx = None
        if dead is not None:
            dead_idx = dead.nonzero().squeeze(-1)
            aux_vals, pos = pre[:, dead_idx].topk(min(k_aux, len(dead_idx)), dim=-1, sorted=False)
            aux_vals, aux_idx = aux_vals.relu(), dead_idx[pos]
        del pre
        ctx.save_for_backward(xc, W_enc, n, idx, vals, aux_idx, aux_vals)
        ctx.mark_non_differentiable(idx)
        if aux_idx is not None:
            ctx.mark_non_differentiable(aux_idx)
        return vals, idx, aux_vals, aux_idx

    @staticmethod
    def backward(ctx, g_vals, g_idx, g_aux, g_aux_idx):
        xc, W_enc, n, idx, vals, aux_idx, aux_vals = ctx.saved_tensors
        g, flat, v = (g_vals * (vals > 0)).to(xc.dtype), idx, vals  # bf16 under autocast: weights' dtype
        if aux_idx is not None and g_aux is not None:
            g = torch.cat([g, (g_aux * (aux_vals > 0)).to(xc.dtype)], 1)
            flat, v = torch.cat([idx, aux_idx], 1), torch.cat([vals, aux_vals], 1)
        B, kk = flat.shape
        d_sae = W_enc.shape[1]
        flat, g = flat.reshape(-1), g.reshape(-1)
        grad_n = None
        if n is not None:  # pre = n * raw: d/dn_j = Σ g·raw = Σ g·v/n_j; d/draw = g·n_j
            n_sel = n.index_select(0, flat)
            if ctx.needs_input_grad[4]:
                grad_n = torch.zeros_like(n).index_add_(0, flat, g * v.reshape(-1).to(g.dtype) / n_sel)
            g = g * n_sel
        # G^T: (d_sae, B) gradient w.r.t. the pre-activations, as CSR (entries sorted by latent; a latent
        # both selected and in AuxK's set appears twice in a row and the product sums both)
        order = flat.argsort(stable=True)
        crow = F.pad(torch.bincount(flat, minlength=d_sae).cumsum(0), (1, 0))  # int64 row pointers, 0 first
        tokens = torch.arange(B, device=flat.device).repeat_interleave(kk)[order]
        with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state": its matmul is tested
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            # no invariant check: a latent both selected and in AuxK's set for one token is a repeated column
            # in its row, which the check refuses and the product sums, as wanted
            G_t = torch.sparse_csr_tensor(crow, tokens, g[order], (d_sae, B), check_invariants=False)
        grad_W_enc = (G_t @ xc).T  # (d_in, d_sae)
        grad_b_enc = torch.zeros(d_sae, dtype=g.dtype, device=g.device).index_add_(0, flat, g)
        grad_b_dec = -(W_enc @ grad_b_enc)  # xc = x - b_dec: d/db_dec = -Σ_b G[b] W_enc^T
        return None, grad_b_dec, grad_W_enc, grad_b_enc, grad_n, None, None, None, None


@register
class TopK(FreeDecoderMixin, SAE):
    """f = ReLU(TopK_k(pre)); loss = mse + aux_coeff · AuxK; unit-norm decoder rows (Gao et al. 2024) or
    free ones with pre-activations rescaled by their norms (SAELens)."""

    architecture = "topk"
    Params = TopKParams
    COMMON_PARAMS = ()
    KNOB = ("topk", "k")
    TERMS = ("auxk",)
    TRAIN_BUFFERS = ("since_fired",)
    rescale = True

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        seed: int | None = 0,
        k: int = 32,
        k_aux: int | None = None,
        aux_coeff: float = 1.0,
        dead_tokens: int = 200_000,
        decoder: str = "free",
        dec_init_norm: float = 0.1,
        grad_clip: float = 1.0,
        k_anneal_start: int | None = None,
        k_anneal_frac: float = K_ANNEAL_FRAC,
    ):
        self.set_decoder_(decoder, dec_init_norm, grad_clip)
        if k > d_sae:
            raise InputError(f"sae.{self.architecture}.k: {k} must be <= d_sae ({d_sae})")
        problem = anneal_problem(k, k_anneal_start, k_anneal_frac, getattr(self, "threshold_frac", None), d_sae)
        if problem:  # the params' check (TopKParams), for SAEs built without params, plus <= d_sae
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
        tied_init_(self, gen, self.init_norm())

    @torch.no_grad()
    def init_from_data_(self, x: torch.Tensor) -> None:
        self.b_dec.copy_(x.float().mean(0))  # as sparsify (Gao et al.: the geometric median)

    def arch_params(self) -> dict:
        anneal = (
            {}
            if self.k_anneal_start is None
            else {"k_anneal_start": self.k_anneal_start, "k_anneal_frac": self.k_anneal_frac}
        )
        return {
            "k": self.k,
            "k_aux": self.k_aux_param,
            "aux_coeff": self.aux_coeff,
            "dead_tokens": self.dead_tokens,
            **anneal,
            **self.decoder_params(),
        }  # the schedule only when on (TopKParams)

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
        through the weights (vals / n[idx]) rather than by materialising W_dec / n. ``vals`` may be bf16 (the
        encoder's matmul under autocast): the weights take the decoder's dtype, as embedding_bag requires."""
        w = vals.to(self.W_dec.dtype)
        if n is not None:  # index_select, not n[idx]: the latter's backward (index_put_ with accumulate) is not
            w = w / n.index_select(0, idx.reshape(-1)).view_as(idx)  # deterministic on CPU for large batches
        return F.embedding_bag(idx, self.W_dec, per_sample_weights=w, mode="sum")

    def uses_sparse_path(self, device: torch.device) -> bool:
        """The sparse step on CPU (measured faster: benchmarks/topk_speed.py); dense matmuls on a GPU,
        where they are what the hardware does best, unless ``sparse_path`` says otherwise."""
        return self.sparse_path if self.sparse_path is not None else device.type == "cpu"

    def train_forward(self, x: torch.Tensor, progress: float, target: torch.Tensor | None = None) -> TrainOutput:
        target = x if target is None else target  # what is reconstructed: x, or a transcoder's target
        dead = self.auxk_dead()
        k = self.k_at(progress)
        if self.uses_sparse_path(x.device):
            n = self.row_norms()  # free rows: n scales the pre-activations inside TopKEncode, divides in decode
            vals, idx, aux_vals, aux_idx = TopKEncode.apply(
                x, self.input_bias(), self.W_enc, self.b_enc, n, k, dead, self.k_aux, self._workspace
            )
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
                decode_aux = lambda: aux_f @ rows
        mse = mse_loss(x_hat.float(), target)
        if decode_aux is not None:
            auxk = mse_loss(decode_aux().float(), (target - x_hat).detach().float())
        else:
            auxk = torch.zeros((), device=x.device)
        live = vals > 0
        fired = torch.zeros(self.d_sae, device=x.device).index_add_(
            0, idx[live], torch.ones(int(live.sum()), device=x.device)
        )
        aux = self.aux_coeff * auxk
        return TrainOutput(mse + aux, mse, (auxk,), fired, live.sum(-1).float().mean(), x_hat, aux)

    @torch.no_grad()
    def observe_(self, fired: torch.Tensor, n_tokens: int) -> None:
        self.since_fired += n_tokens
        self.since_fired[fired > 0] = 0

    def saelens(self):
        cfg, w = super().saelens()
        return {**cfg, "architecture": "topk", "k": self.k}, w
