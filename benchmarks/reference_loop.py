"""A faithful plain-PyTorch re-implementation of the reference code's training loop.

The reference (Neel Nanda's 1L-Sparse-Autoencoder, the open replication of "Towards
Monosemanticity") trains with this loop; docs/metrics.md ("Training algorithm") describes it.
Kept as the reference wrote it:

- loss = mean over batch of sum_dims (x_hat - x)^2 + l1 * sum over batch AND features |f|
  (so its l1 scales with batch size: pass ``l1_coeff / batch_size`` to match ours);
- the decoder rows are normalised and the parallel gradient removed *before*
  ``optim.step()``, so the rows drift off unit norm after every step (the reference's bug);
- ``loss.item()`` and friends are read every step, as the reference logs them;
- dead features (fire rate below 10^-5.5) are re-initialised with Kaiming-uniform every
  ``resample_every`` steps (the reference's 30,000; a benchmark run usually ends before).

Only the parts a benchmark needs are here (no W&B, no LM-based eval every 1,000 steps).
It imports nothing but torch, so the SAELens environment could run it too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SeedAutoEncoder(nn.Module):
    def __init__(self, d_in: int, d_sae: int, l1_coeff: float, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.W_enc = nn.Parameter(nn.init.kaiming_uniform_(torch.empty(d_in, d_sae)))
        self.W_dec = nn.Parameter(nn.init.kaiming_uniform_(torch.empty(d_sae, d_in)))
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.W_dec.data[:] = self.W_dec / self.W_dec.norm(dim=-1, keepdim=True)
        self.l1_coeff = l1_coeff

    def forward(self, x):
        x_cent = x - self.b_dec
        acts = F.relu(x_cent @ self.W_enc + self.b_enc)
        x_reconstruct = acts @ self.W_dec + self.b_dec
        l2_loss = (x_reconstruct.float() - x.float()).pow(2).sum(-1).mean(0)
        l1_loss = self.l1_coeff * (acts.float().abs().sum())
        loss = l2_loss + l1_loss
        return loss, x_reconstruct, acts, l2_loss, l1_loss

    @torch.no_grad()
    def make_decoder_weights_and_grad_unit_norm(self):
        W_dec_normed = self.W_dec / self.W_dec.norm(dim=-1, keepdim=True)
        W_dec_grad_proj = (self.W_dec.grad * W_dec_normed).sum(-1, keepdim=True) * W_dec_normed
        self.W_dec.grad -= W_dec_grad_proj
        self.W_dec.data = W_dec_normed


@torch.no_grad()
def re_init(indices: torch.Tensor, encoder: SeedAutoEncoder) -> None:
    new_W_enc = torch.nn.init.kaiming_uniform_(torch.zeros_like(encoder.W_enc))
    new_W_dec = torch.nn.init.kaiming_uniform_(torch.zeros_like(encoder.W_dec))
    new_b_enc = torch.zeros_like(encoder.b_enc)
    encoder.W_enc.data[:, indices] = new_W_enc[:, indices]
    encoder.W_dec.data[indices, :] = new_W_dec[indices, :]
    encoder.b_enc.data[indices] = new_b_enc[indices]


def train(
    batches,
    d_in: int,
    d_sae: int,
    l1_coeff_per_token: float,
    lr: float,
    betas,
    n_steps: int,
    batch_size: int,
    device: str = "cpu",
    resample_every: int = 30_000,
) -> SeedAutoEncoder:
    """Run the reference code's loop for ``n_steps`` on ``batches`` (an iterator of (batch_size, d_in) tensors)."""
    encoder = SeedAutoEncoder(d_in, d_sae, l1_coeff_per_token / batch_size).to(device)
    encoder_optim = torch.optim.Adam(encoder.parameters(), lr=lr, betas=betas)
    fired = torch.zeros(d_sae, device=device)
    seen = 0
    for i in range(n_steps):
        acts = next(batches).to(device).float()
        loss, x_reconstruct, mid_acts, l2_loss, l1_loss = encoder(acts)
        loss.backward()
        encoder.make_decoder_weights_and_grad_unit_norm()
        encoder_optim.step()
        encoder_optim.zero_grad()
        loss_dict = {"loss": loss.item(), "l2_loss": l2_loss.item(), "l1_loss": l1_loss.item()}  # noqa: F841 - the reference logs these
        fired += (mid_acts > 0).float().sum(0)
        seen += len(acts)
        del loss, x_reconstruct, mid_acts, l2_loss, l1_loss, acts
        if (i + 1) % resample_every == 0:
            re_init((fired / seen < 10 ** (-5.5)).nonzero().squeeze(-1), encoder)
            fired.zero_()
            seen = 0
    return encoder
