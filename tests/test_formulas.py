"""Formulas against independent computations: values by hand, reference formulas written out here, and points
chosen where a wrong formula gives a different number (θ ≠ 1, ε ≠ 1, points at the edge of a kernel, upstream
gradients ≠ 1, batch ≠ width). These tests were written to kill the mutants that survived the rest of the suite
(benchmarks/mutation.py, benchmarks/results/mutation.md)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from saelab.errors import InputError
from saelab.registry import REGISTRY
from saelab.saes.jumprelu import JumpReLU, JumpReLUFn, StepFn

THETA = torch.tensor([2.0, 3.0])
EPS = 0.5
U = torch.tensor([-0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75])  # (pre - θ) / ε: outside, edge, inside, centre, ...
KERNEL = torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0])  # the rectangle 1{-1/2 < u < 1/2}: 0 at the edges


def _points():
    """pre (7, 2) at θ + ε·u, exactly representable; an upstream gradient ≠ 1 that differs per entry."""
    pre = (THETA + EPS * U[:, None]).clone().requires_grad_(True)
    g = torch.arange(1, 15, dtype=torch.float32).reshape(7, 2) * torch.tensor([0.5, -1.5])
    return pre, THETA.clone().requires_grad_(True), g


def test_jumprelu_function_by_hand():
    """f = pre · H(pre − θ) (strict: 0 at pre = θ); ∂f/∂pre = H(pre − θ); ∂/∂θ = −(θ/ε)·K((pre − θ)/ε), summed
    over the batch (Rajamanoharan et al. 2024, eq. 11), with θ ≠ 1 so θ/ε differs from 1/ε."""
    pre, theta, g = _points()
    f = JumpReLUFn.apply(pre, theta, EPS)
    on = (U > 0).float()[:, None].expand(7, 2)
    torch.testing.assert_close(f, pre.detach() * on)
    (f * g).sum().backward()
    torch.testing.assert_close(pre.grad, g * on)
    expected = torch.stack([-(THETA[j] / EPS) * (KERNEL * g[:, j]).sum() for j in range(2)])
    torch.testing.assert_close(theta.grad, expected)
    assert expected.abs().min() > 0  # the kernel's inside points carry weight


def test_step_function_by_hand():
    """H(pre − θ) (0 at pre = θ); no gradient to pre; ∂/∂θ = −(1/ε)·K((pre − θ)/ε), summed over the batch."""
    pre, theta, g = _points()
    h = StepFn.apply(pre, theta, EPS)
    torch.testing.assert_close(h, (U > 0).float()[:, None].expand(7, 2))
    (h * g).sum().backward()
    assert pre.grad is None
    torch.testing.assert_close(theta.grad, torch.stack([-(1 / EPS) * (KERNEL * g[:, j]).sum() for j in range(2)]))


def _jumprelu(sparsity: str) -> tuple[JumpReLU, torch.Tensor]:
    """A JumpReLU with batch (5) ≠ width (3) ≠ d_in (4), thresholds ≠ 1 and decoder norms ≠ 1."""
    torch.manual_seed(0)
    sae = JumpReLU(4, 3, seed=0, l0_coeff=0.7, bandwidth=0.3, threshold_init=0.2, sparsity=sparsity, tanh_scale=2.5)
    with torch.no_grad():
        sae.W_dec.mul_(torch.tensor([[0.5], [2.0], [1.5]]))
        sae.threshold.copy_(torch.tensor([0.05, 0.3, 0.1]))
    return sae, torch.randn(5, 4)


@pytest.mark.parametrize("sparsity", ["step", "tanh"])
def test_jumprelu_loss_by_hand(sparsity):
    """loss = Σ_d (x̂ − x)² averaged over the batch + l0_coeff · penalty, penalty = batch mean of Σ_i H(pre_i − θ_i)
    ("step") or of Σ_i tanh(c · f_i · ‖W_dec[i]‖) ("tanh"), written out here from docs/metrics.md."""
    sae, x = _jumprelu(sparsity)
    out = sae(x, train=True)
    with torch.no_grad():
        pre = sae.pre_acts(x)
        f = pre * (pre > sae.threshold)
        x_hat = f @ sae.W_dec + sae.b_dec
        mse = ((x_hat - x) ** 2).sum(1).mean()
        if sparsity == "step":
            per_token = (pre > sae.threshold).float().sum(1)
        else:
            per_token = torch.tanh(2.5 * f * sae.W_dec.norm(dim=1)).sum(1)
        penalty = per_token.mean()
    assert 0 < float((pre > sae.threshold).float().mean()) < 1  # some features on, some off
    torch.testing.assert_close(out.mse, mse)
    torch.testing.assert_close(out.terms[0], penalty)
    torch.testing.assert_close(out.loss, mse + 0.7 * penalty)
    torch.testing.assert_close(out.l0, (f > 0).float().sum(1).mean())
    torch.testing.assert_close(out.fired, (f > 0).float().sum(0))


def test_jumprelu_step_penalty_gradient_reaches_theta_through_the_bandwidth():
    """The step penalty's θ gradient is −(1/ε)·K((pre − θ)/ε) averaged over the batch, times l0_coeff, with the
    SAE's own bandwidth ε (0.3 here)."""
    sae, x = _jumprelu("step")
    with torch.no_grad():
        pre = sae.pre_acts(x)
        sae.threshold.copy_(pre[0] - torch.tensor([0.1, -0.1, 0.05]))  # token 0 inside the kernel of each feature
    sae.zero_grad()
    sae(x, train=True).terms[0].backward()
    u = (pre - sae.threshold.detach()) / 0.3
    k = ((u > -0.5) & (u < 0.5)).float()
    torch.testing.assert_close(sae.threshold.grad, -(1 / 0.3) * k.sum(0) / 5)
    assert k.sum() > 0


def test_jumprelu_inference_is_strict_at_the_threshold():
    sae, _ = _jumprelu("step")
    pre = torch.tensor([[0.05, 0.3, 0.1], [0.06, 0.29, 0.2]])
    torch.testing.assert_close(sae.activate(pre), torch.tensor([[0.0, 0.0, 0.0], [0.06, 0.0, 0.2]]))


def test_jumprelu_bad_start_is_named():
    with pytest.raises(InputError, match=r"sae\.jumprelu\.b_dec_init: 'median' is not one of mean, zero"):
        JumpReLU(4, 3, b_dec_init="median")


def _log_jumprelu(sparsity: str = "tanh") -> tuple[JumpReLU, torch.Tensor]:
    """``_jumprelu`` under ``theta_param: log``: the same weights, θ = (0.05, 0.3, 0.1) held as its log."""
    sae = JumpReLU(4, 3, seed=0, l0_coeff=0.7, bandwidth=0.3, threshold_init=0.2, sparsity=sparsity, tanh_scale=2.5,
                   theta_param="log")  # fmt: skip
    torch.manual_seed(0)
    with torch.no_grad():
        sae.W_dec.mul_(torch.tensor([[0.5], [2.0], [1.5]]))
        sae.log_threshold.copy_(torch.tensor([0.05, 0.3, 0.1]).log())
    return sae, torch.randn(5, 4)


def test_log_theta_starts_at_the_log_of_threshold_init_and_is_the_only_theta_parameter():
    sae = JumpReLU(4, 3, seed=0, threshold_init=0.2, theta_param="log")
    torch.testing.assert_close(sae.log_threshold.detach(), torch.full((3,), -1.6094379))  # ln 0.2
    torch.testing.assert_close(sae.theta().detach(), torch.full((3,), 0.2))
    assert "threshold" not in dict(sae.named_parameters()) and sae.FEATURE_AXIS["log_threshold"] == 0
    assert "log_threshold" not in JumpReLU(4, 3).FEATURE_AXIS  # the raw SAE's names are untouched


@pytest.mark.parametrize("sparsity", ["step", "tanh"])
def test_log_theta_gradient_is_theta_times_the_straight_through_gradient(sparsity):
    """Under ``log`` the loss reaches log θ by the chain rule, ∂L/∂log θ = θ · ∂L/∂θ, with ∂L/∂θ the
    straight-through estimators written out here (docs/metrics.md): for ``step`` the penalty's
    −l0_coeff·(1/ε)·K and the MSE through ∂f/∂θ = −(θ/ε)·K; for ``tanh`` only the latter, on MSE + penalty."""
    sae, x = _log_jumprelu(sparsity)
    with torch.no_grad():
        pre = sae.pre_acts(x)
        sae.log_threshold.copy_((pre.max(0).values - torch.tensor([0.05, -0.04, 0.03])).log())  # inside kernels
        theta = sae.theta().clone()
    f = (pre * (pre > theta)).requires_grad_(True)  # ∂L/∂f by autograd of the loss written out by hand
    mse = ((f @ sae.W_dec.detach() + sae.b_dec.detach() - x) ** 2).sum(1).mean()
    tanh = torch.tanh(2.5 * f * sae.W_dec.detach().norm(dim=1)).sum(1).mean()
    (mse + (0.7 * tanh if sparsity == "tanh" else 0)).backward()
    k = (((pre - theta) / 0.3).abs() < 0.5).float()
    d_theta = (-(theta / 0.3) * k * f.grad).sum(0)
    if sparsity == "step":
        d_theta = d_theta + 0.7 * (-(1 / 0.3) * k).sum(0) / 5
    sae.zero_grad()
    sae(x, train=True).loss.backward()
    torch.testing.assert_close(sae.log_threshold.grad, theta * d_theta)
    assert k.sum() > 0 and d_theta.abs().min() > 0


def test_log_theta_is_not_clamped_and_raw_theta_is():
    """after_step clamps the raw θ at 0; log θ is free (a negative log θ is a θ below 1, not a θ below 0)."""
    log = JumpReLU(4, 3, seed=0, threshold_init=0.2, theta_param="log")
    raw = JumpReLU(4, 3, seed=0, threshold_init=0.2)
    with torch.no_grad():
        log.log_threshold.copy_(torch.tensor([-3.0, -0.5, 0.5]))
        raw.threshold.copy_(torch.tensor([-3.0, -0.5, 0.5]))
    log.after_step()
    raw.after_step()
    torch.testing.assert_close(log.log_threshold.detach(), torch.tensor([-3.0, -0.5, 0.5]))
    torch.testing.assert_close(raw.threshold.detach(), torch.tensor([0.0, 0.0, 0.5]))


def test_log_theta_inference_folds_resampling_and_export_by_hand():
    """activate: pre · 1[pre > exp(log θ)]; the decoder-norm fold multiplies θ by the norms (0.5, 2, 1.5), the
    input-scale fold divides it by s; resampling sets θ back to threshold_init; SAELens gets θ itself."""
    sae, _ = _log_jumprelu()
    pre = torch.tensor([[0.049, 0.299, 0.099], [0.051, 0.29, 0.2]])  # exp(ln θ) is θ only to rounding: off θ
    torch.testing.assert_close(sae.activate(pre), torch.tensor([[0.0, 0.0, 0.0], [0.051, 0.0, 0.2]]))
    norms = sae.W_dec.norm(dim=1).detach()
    sae.fold_decoder_norms_()
    torch.testing.assert_close(sae.theta().detach(), torch.tensor([0.05, 0.3, 0.1]) * norms)
    sae.fold_input_scale_(4.0)
    torch.testing.assert_close(sae.theta().detach(), torch.tensor([0.05, 0.3, 0.1]) * norms / 4)
    _, w = sae.saelens()
    torch.testing.assert_close(w["threshold"], torch.tensor([0.05, 0.3, 0.1]) * norms / 4)
    touched = sae.resample_rows_(torch.tensor([1]), torch.eye(4)[:1], torch.tensor(1.0))
    torch.testing.assert_close(sae.theta().detach()[1], torch.tensor(0.2))
    torch.testing.assert_close(sae.theta().detach()[[0, 2]], torch.tensor([0.05, 0.1]) * norms[[0, 2]] / 4)
    assert any(p is sae.log_threshold for p, _ in touched)


def test_log_theta_folds_in_the_parameters_dtype():
    """A float64 SAE folds log θ in float64: θ / s and θ · n to float64 precision, by hand in float64 (a log taken
    in float32 would be off by ~1e-8 relative; s and n are not float32 numbers)."""
    sae, _ = _log_jumprelu()
    sae.double()
    theta = torch.tensor([0.05, 0.3, 0.1], dtype=torch.float64)
    with torch.no_grad():
        sae.log_threshold.copy_(theta.log())
    s = 3.000000123456789
    sae.fold_input_scale_(s)
    torch.testing.assert_close(sae.theta().detach(), theta / s, rtol=1e-14, atol=0)
    n = torch.tensor([1.000000123456789, 2.5, 0.7000000987654321], dtype=torch.float64)
    sae.scale_theta_(n)
    torch.testing.assert_close(sae.theta().detach(), theta / s * n, rtol=1e-14, atol=0)


def test_log_theta_saves_its_choice_and_loads_back(tmp_path):
    """A log-θ SAE's config carries ``theta_param: log`` (a raw one's omits it, as before the option existed);
    loading rebuilds the same θ."""
    from saelab.saes.base import SAE
    from saelab.saes.jumprelu import JumpReLUParams

    assert "theta_param" not in JumpReLUParams().model_dump()
    assert JumpReLUParams(theta_param="log").model_dump()["theta_param"] == "log"
    assert "theta_param" not in JumpReLU(4, 3).arch_params()
    sae, _ = _log_jumprelu()
    sae.save(tmp_path, {"hook": "h"})
    back, meta = SAE.load(tmp_path)
    assert meta["arch_params"]["theta_param"] == "log"
    torch.testing.assert_close(back.theta(), sae.theta())
    with pytest.raises(InputError, match=r"sae\.jumprelu\.theta_param: 'exp' is not one of raw, log"):
        JumpReLU(4, 3, theta_param="exp")


@pytest.mark.parametrize("arch", sorted(REGISTRY))
def test_class_defaults_are_the_params_defaults(arch):
    """An SAE built without params is the default config's SAE: same arguments (arch_params, which rebuild it)
    and, with the default seed 0, the same weights as ``saelab.registry.build`` of the default section."""
    from saelab.config import SAEConfig
    from saelab.registry import build

    cls = REGISTRY[arch]
    bare, built = cls(8, 64), build(SAEConfig(architecture=arch, d_sae=64), 8, seed=0)
    assert bare.arch_params() == built.arch_params()
    assert all(torch.equal(v, built.state_dict()[k]) for k, v in bare.state_dict().items())
    assert not torch.equal(cls(8, 64, seed=1).W_enc, bare.W_enc)


# ---------------------------------------------------------------- BatchTopK


def _batchtopk():
    """BatchTopK with free decoder rows of norms ≠ 1, three dead latents, aux_coeff ≠ 1, batch 4 ≠ k_aux 3 ≠ k 2."""
    from saelab.saes.batchtopk import BatchTopK

    torch.manual_seed(1)
    sae = BatchTopK(6, 10, seed=0, k=2, k_aux=3, aux_coeff=0.25, dead_tokens=5, threshold_frac=0.25)
    with torch.no_grad():
        sae.W_dec.mul_(torch.linspace(0.5, 2.0, 10)[:, None])
        sae.b_dec.copy_(torch.randn(6) * 0.1)
        sae.b_enc.copy_(torch.randn(10) * 0.1)
        sae.since_fired[[1, 4, 7]] = 10
    return sae


def _reference_batchtopk(sae, x, k):
    """The reference computation written out: rescaled pre-activations, the k·B largest ReLU values of the batch,
    unit rows, and the AuxK activations (per token, the k_aux largest pre-activations among dead latents, ReLU)."""
    n = sae.W_dec.norm(dim=1)
    pre = ((x - sae.b_dec) @ sae.W_enc + sae.b_enc) * n
    flat = pre.relu().flatten()
    keep = flat.argsort(descending=True)[: k * len(x)]
    f = torch.zeros_like(flat)
    f[keep] = flat[keep]
    f = f.view_as(pre)
    rows = sae.W_dec / n[:, None]
    x_hat = f @ rows + sae.b_dec
    dead = torch.tensor([i in (1, 4, 7) for i in range(10)])
    aux = torch.zeros_like(pre)
    for b in range(len(x)):
        cand = [(float(pre[b, i]), i) for i in range(10) if dead[i]]
        for v, i in sorted(cand, reverse=True)[: sae.k_aux]:
            aux[b, i] = max(v, 0.0)
    return pre, f, x_hat, aux @ rows


def test_batchtopk_loss_with_auxk_by_hand():
    """loss = mse + aux_coeff · AuxK, AuxK = batch mean of ‖aux reconstruction − (x − x̂)‖² (Gao et al. 2024, as
    in TopK), on the batch-level top-k activations."""
    sae = _batchtopk()
    x = torch.randn(4, 6)
    out = sae(x, train=True, progress=0.0)
    with torch.no_grad():
        _, f, x_hat, aux_hat = _reference_batchtopk(sae, x, 2)
        mse = ((x_hat - x) ** 2).sum(1).mean()
        auxk = ((aux_hat - (x - x_hat)) ** 2).sum(1).mean()
    assert auxk > 0
    torch.testing.assert_close(out.mse, mse)
    torch.testing.assert_close(out.terms[0], auxk)
    torch.testing.assert_close(out.loss, mse + 0.25 * auxk)
    torch.testing.assert_close(out.aux_mse, 0.25 * auxk)  # the activation-space part a functional loss reweighs
    torch.testing.assert_close(out.fired, (f > 0).float().sum(0))
    torch.testing.assert_close(out.l0, (f > 0).float().sum(1).mean())
    sae.zero_grad()
    out.loss.backward()  # AuxK's gradient reaches only the dead latents' encoder columns (the residual is detached)
    sae2 = _batchtopk()
    sae2.aux_coeff = 0.0
    sae2(x, train=True, progress=0.0).loss.backward()
    moved = (sae.W_enc.grad - sae2.W_enc.grad).abs().sum(0) > 1e-7
    assert moved[[1, 4, 7]].any() and not moved[[0, 2, 3, 5, 6, 8, 9]].any()


def test_batchtopk_threshold_is_the_mean_smallest_selected_activation_of_the_last_steps():
    """θ = mean, over the steps at progress >= 1 − threshold_frac (0.75 included), of each batch's smallest
    selected (positive) activation; steps before do not count. After the fold, inference keeps exactly the
    rescaled pre-activations above θ."""
    sae = _batchtopk()
    sae.aux_coeff = 0.0
    mins = []
    for i, progress in enumerate([0.0, 0.5, 0.74, 0.75, 0.8, 0.99]):
        x = torch.randn(4, 6, generator=torch.Generator().manual_seed(i)) * (1 + i)
        with torch.no_grad():
            _, f, _, _ = _reference_batchtopk(sae, x, 2)
        sae(x, train=True, progress=progress)
        if progress >= 0.75:
            mins.append(float(f[f > 0].min()))
    assert len(mins) == 3 and len(set(mins)) == 3
    x = torch.randn(8, 6) * 5
    with torch.no_grad():
        pre, _, _, _ = _reference_batchtopk(sae, x, 2)
    sae.finish_training_()
    assert float(sae.threshold[0]) == pytest.approx(sum(mins) / 3, rel=1e-6)
    assert torch.equal(sae.threshold, torch.full((10,), sae.threshold[0].item()))
    theta = sum(mins) / 3
    expected = pre * (pre > theta)
    torch.testing.assert_close(sae.encode(x), expected, atol=1e-5, rtol=1e-5)
    assert 0 < int((expected > 0).sum()) < expected.numel()


def test_batchtopk_saelens_export_is_jumprelu_with_the_threshold():
    """A saved BatchTopK (norms folded: unit rows) exports as SAELens's JumpReLU: relu(W_enc·(x − b_dec) + b_enc),
    kept where above the threshold, decoded with W_dec, written out here from the exported tensors; it equals
    our inference on a batch where some features are above the threshold and some below."""
    sae = _batchtopk()
    sae.fold_decoder_norms_()
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(7)) * 3
    with torch.no_grad():
        pre = sae.pre_acts(x)
        sae.threshold.fill_(float(pre[pre > 0].median()))
    cfg, w = sae.saelens()
    assert cfg["architecture"] == "jumprelu" and torch.equal(w["threshold"], sae.threshold)
    f = torch.relu((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"])
    f = f * (f > w["threshold"])
    assert 0 < int((f > 0).sum()) < int((torch.relu(pre) > 0).sum())
    torch.testing.assert_close(f @ w["W_dec"] + w["b_dec"], sae(x).x_hat, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- reconstruction metrics


def test_recon_sums_streamed_over_uneven_batches_equal_the_definitions():
    """docs/metrics.md, "Reconstruction metrics", written out in numpy on all tokens at once: mse = mean Σ_d (x̂ − x)²,
    EV = 1 − Σ‖x − x̂‖² / Σ‖x − mean x‖², L0 = mean active count, L2 ratio = mean ‖x̂‖/‖x‖ over tokens with x ≠ 0,
    fires and activation sums per feature; the same from batches of 3 and 4 tokens."""
    from saelab.eval.metrics import ReconSums, reconstruction_metrics

    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 5, generator=g) + 2.0  # mean far from 0: a centred EV differs from an uncentred one
    x[2] = 0.0  # a token with no L2 ratio
    x_hat = x * 0.8 + 0.1 * torch.randn(7, 5, generator=g)
    f = torch.relu(torch.randn(7, 6, generator=g))
    X, Xh, F = x.double().numpy(), x_hat.double().numpy(), f.double().numpy()
    sse = ((Xh - X) ** 2).sum()
    keep = np.linalg.norm(X, axis=1) > 0
    expected = {
        "mse": sse / 7,
        "explained_variance": 1 - sse / ((X - X.mean(0)) ** 2).sum(),
        "l0": (F > 0).sum(1).mean(),
        "l2_ratio": (np.linalg.norm(Xh, axis=1)[keep] / np.linalg.norm(X, axis=1)[keep]).mean(),
        "eval_tokens": 7,
    }
    streamed = ReconSums().add(x[:3], x_hat[:3], f[:3]).add(x[3:], x_hat[3:], f[3:])
    for got in (streamed.result(), reconstruction_metrics(x, x_hat, f)):
        assert got.keys() == expected.keys()
        for k, v in expected.items():
            assert got[k] == pytest.approx(v, rel=1e-6), k
    np.testing.assert_array_equal(streamed.fired.numpy(), (F > 0).sum(0))
    np.testing.assert_allclose(streamed.act_sum.numpy(), F.sum(0), rtol=1e-6)
    np.testing.assert_allclose(streamed.freq(), (F > 0).mean(0))
    assert streamed.l2_n == 6


def test_frequency_fractions_at_their_boundaries():
    """dead: freq == 0; ultra-low: freq < threshold (dead included, the threshold itself is not ultra-low);
    dense: freq > threshold (the threshold itself is not dense)."""
    from saelab.eval.metrics import frequency_fractions

    freq = np.array([0.0, 0.0, 1e-5, 1e-4, 2e-4, 0.1, 0.2, 0.5])
    assert frequency_fractions(freq, ultra_low=1e-4, dense=0.1) == {
        "frac_dead": 2 / 8,
        "frac_ultra_low": 3 / 8,
        "frac_dense": 2 / 8,
    }


def test_ce_recovered_by_hand():
    """(CE_ablated − CE_sae) / (CE_ablated − CE_clean): 0.75 for 2.0 / 2.5 / 4.0."""
    from saelab.eval.metrics import ce_recovered

    assert ce_recovered(2.0, 2.5, 4.0) == pytest.approx(0.75)
    assert ce_recovered(ce_clean=1.0, ce_sae=4.0, ce_ablated=3.0) == pytest.approx(-0.5)


# ---------------------------------------------------------------- synthetic recovery (docs/synthetic.md)


class _World:
    """A hand-built world: five true directions e0..e4 in R^8, feature 1 a child of feature 0, one task {2, 3}."""

    D = torch.eye(8)[:5]

    def layout(self) -> dict:
        return {"parents": [0], "children": [[1]], "tasks": [[2, 3]]}


B_ENC = torch.tensor([-0.6, 0, 0, 0, 0, 0, 0])  # latent 0 stays silent below 0.6: it can be absorbed


def _w_enc(W: torch.Tensor) -> torch.Tensor:
    """W^T, with latent 0 also reading e4: it fires where feature 4 does (its precision < 1)."""
    out = W.T.clone()
    out[4, 0] = 1.0
    return out


def _recovery_case():
    """An SAE of 7 latents on R^8 (W_enc = _w_enc(W_dec), b_enc = B_ENC): e0, 0.8 e1 + 0.6 e5, e2, the task's sum
    direction, −e4 (cos 0), 0.6 e4 + 0.8 e5 (matched to f4 at cos 0.6, under pair_cos) and e3; codes c on 9 tokens."""
    from saelab.saes.base import SAE

    s = 2**-0.5
    W = torch.zeros(7, 8)
    for j, row in enumerate(
        [{0: 1.0}, {1: 0.8, 5: 0.6}, {2: 1.0}, {2: s, 3: s}, {4: -1.0}, {4: 0.6, 5: 0.8}, {3: 1.0}]
    ):
        for k, v in row.items():
            W[j, k] = v
    c = torch.tensor(
        [
            [0.5, 1.0, 0, 0, 0],
            [2.0, 0, 0, 0, 0],
            [1.0, 0.5, 0, 0, 0],
            [0, 0, 1.0, 1.0, 0],
            [0, 0, 2.0, 1.5, 0],
            [0, 0, 0, 0, 1.0],
            [0.5, 0, 0, 0, 0],
            [0, 0, 1.0, 0, 0],  # f2 alone: the task's sum latent fires without feature 3 (its precision < 1)
            [0, 0, 0, 1.0, 0],  # f3 alone: the task is "on" where its first feature fires, not here
        ]
    )
    sae = SAE(8, 7, seed=None)
    with torch.no_grad():
        sae.W_dec.copy_(W), sae.W_enc.copy_(_w_enc(W)), sae.b_enc.copy_(B_ENC), sae.b_dec.zero_()
    return sae, W.double().numpy(), c, c @ _World.D


def test_score_on_a_hand_built_world_equals_the_definitions():
    """Every key of research.synthetic.recovery.score against docs/synthetic.md's definitions written out in numpy:
    the matching by brute force over all assignments, the pair metrics on pairs at cos >= pair_cos, absorption of
    the (0, 1) pair, and the task's usage of its latents (three latents in a task of two: "combinations" at
    verdict_align 0.95)."""
    import itertools

    from research.synthetic.recovery import score
    from research.synthetic.worlds import RecoverConfig

    sae, W, c, x = _recovery_case()
    cfg = RecoverConfig(batch_tokens=4, verdict_align=0.95)  # three batches: the encode / decode loop is exercised
    got = score(sae, _World(), x, c, cfg)
    C, X, D = c.double().numpy(), x.double().numpy(), _World.D.double().numpy()
    F = np.maximum(X @ _w_enc(torch.from_numpy(W)).numpy() + B_ENC.double().numpy(), 0)  # f = ReLU(x W_enc + b_enc)
    Wn = W / np.linalg.norm(W, axis=1, keepdims=True)
    cos = np.maximum(Wn @ D.T, 0)  # (latents, features)
    best = max(itertools.permutations(range(7), 5), key=lambda p: sum(cos[p[i], i] for i in range(5)))
    assert best == (0, 1, 2, 6, 5)
    pairs = [(i, best[i]) for i in range(5) if cos[best[i], i] >= 0.7]  # (feature, latent)
    assert [i for i, _ in pairs] == [0, 1, 2, 3]
    prec = [((F[:, j] > 0) & (C[:, i] > 0)).sum() / (F[:, j] > 0).sum() for i, j in pairs]
    rec = [((F[:, j] > 0) & (C[:, i] > 0)).sum() / (C[:, i] > 0).sum() for i, j in pairs]
    shrink = []
    for i, j in pairs:
        both = (F[:, j] > 0) & (C[:, i] > 0)
        ratios = np.sort(F[both, j] * (W[j] @ D[i]) / C[both, i])
        shrink.append(ratios[(len(ratios) - 1) // 2])  # the lower middle value for an even count (docs)
    both = (C[:, 0] > 0) & (C[:, 1] > 0)
    alone = (C[:, 0] > 0) & ~(C[:, 1] > 0)
    absorbed = ((F[both, 1] > 0) & ~(F[both, 0] > 0)).mean()
    control = (F[alone, 0] <= 0).mean()
    # the task {2, 3}: latents with >= half their norm in span(e2, e3); mass over the tokens where f2 fires
    norms = np.linalg.norm(W, axis=1)
    span = np.linalg.norm(W[:, 2:4], axis=1) / norms
    cand = [j for j in range(7) if span[j] >= 0.5]
    assert cand == [2, 3, 6]
    on = C[:, 2] > 0
    mass = np.array([F[on, j].sum() * norms[j] for j in cand])
    q = mass / mass.sum()
    n_eff = float(np.exp(-(q * np.log(q)).sum()))
    dir_align = float((q * cos[cand][:, [2, 3]].max(1)).sum())
    sum_dir = (D[2] + D[3]) / np.sqrt(2)
    sum_align = float((q * np.maximum(Wn[cand] @ sum_dir, 0)).sum())
    assert dir_align < 0.95 and n_eff / 2 >= 1
    sse = ((F @ W - X) ** 2).sum()
    nx = np.linalg.norm(X, axis=1)
    expected = {
        "l0": (F > 0).sum(1).mean(),
        "true_l0": (C > 0).sum(1).mean(),
        "mse": sse / 9,
        "explained_variance": 1 - sse / ((X - X.mean(0)) ** 2).sum(),
        "l2_ratio": (np.linalg.norm(F @ W, axis=1)[nx > 0] / nx[nx > 0]).mean(),
        "d_sae": 7,
        "n_true": 5,
        "mcc": sum(cos[best[i], i] for i in range(5)) / 5,
        "n_pairs": 4,
        "precision": np.mean(prec),
        "recall": np.mean(rec),
        "shrinkage": np.mean(shrink),
        "recovered_0.9": 3 / 5,
        "recovered_0.7": 4 / 5,
        "absorption": absorbed,
        "absorption_control": control,
        "absorption_pairs": "1/1",
        "task_n_latents": 3,
        "task_n_eff": n_eff,
        "task_n_eff_per_direction": n_eff / 2,
        "task_dir_align": dir_align,
        "task_span_align": 1.0,
        "task_sum_align": sum_align,
        "task_size": 2,
        "task_verdict": "combinations",
    }
    by_decile = {"recovered_0.9_by_decile", "recovered_0.7_by_decile"}
    assert set(got) == set(expected) | by_decile | {"mcc_chance"}
    for k, v in expected.items():
        assert got[k] == (pytest.approx(v, rel=1e-5, abs=1e-6) if isinstance(v, float) else v), k
    # deciles of the features' firing frequency, rarest first (stable order among ties); 5 features: 5 empty deciles
    freq = (C > 0).mean(0)
    order = np.argsort(freq, kind="stable")
    hits = {0.9: [1, 0, 1, 1, 0], 0.7: [1, 1, 1, 1, 0]}
    for t in (0.9, 0.7):
        assert got[f"recovered_{t:g}_by_decile"] == [float(hits[t][i]) for i in order] + [None] * 5
    from research.synthetic.recovery import chance_mcc

    assert got["mcc_chance"] == chance_mcc(7, _World.D) < got["mcc"]  # a random dictionary of d_sae (7) rows
    assert 0 < absorbed < 1 and 0 < control < 1 and len(set(prec)) > 1 and len(set(rec)) > 1
    # pairs exactly at pair_cos count: at 1.0 only the exact latents e0, e2, e3 pair
    assert score(sae, _World(), x, c, RecoverConfig(pair_cos=1.0))["n_pairs"] == 3


def test_recovery_helpers_at_their_boundaries():
    """Boundaries written into docs/synthetic.md: cos >= t recovers; a task latent has >= min_span of its norm in the
    span and counts in n_latents at q >= 1%; at_l0 interpolates inside [first, last] L0 inclusive, from points with
    L0 > 0 only; verdict thresholds are inclusive; chance MCC is seeded (default seed 0)."""
    from research.synthetic import recovery as r

    assert list(r.recovered(np.array([[0.9, 0.89], [0.1, 0.2]]), 0.9)) == [True, False]
    # task usage: row (3, 4) has 3/5 = 0.6 of its norm in span(e0), exactly min_span; masses 1 : 99 give q = 1%
    D = torch.eye(3)[:1]
    W = torch.tensor([[3.0, 4.0, 0.0], [1.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    f = torch.tensor([[0.2, 99.0, 0.0]])  # mass f·‖W‖: 1 and 99; the third latent never fires (q = 0)
    u = r.task_usage(f, W, D, torch.tensor([True]), 0.6)
    assert u["n_latents"] == 2 and u["m"] == 1
    q = np.array([0.01, 0.99])
    assert u["n_eff"] == pytest.approx(float(np.exp(-(q * np.log(q)).sum())))
    assert u["span_align"] == pytest.approx(0.01 * 0.6 + 0.99 * 1.0)
    empty = {
        "n_latents": 0,
        "n_eff": 0.0,
        "n_eff_per_direction": 0.0,
        "dir_align": None,
        "span_align": None,
        "sum_align": None,
        "m": 1,
    }
    assert r.task_usage(f, W, D, torch.tensor([True]), 0.61)["n_latents"] == 1  # (3, 4) left out; one latent fires
    assert r.task_usage(f, W[:1], D, torch.tensor([True]), 0.61) == empty  # no task latent
    assert r.task_usage(f, W, D, torch.tensor([False]), 0.6) == empty  # the task never fires
    assert r.task_usage(torch.zeros(1, 3), W, D, torch.tensor([True]), 0.6) == empty  # its latents are silent
    # at_l0 (research.interpolate's, which recovery, the questions and the frontier use)
    from research.interpolate import at_l0

    pts = [(0.0, 0.1), (1.0, 0.5), (2.0, 0.6), (4.0, 0.9), (3.0, None)]
    assert at_l0(pts, 1.0) == pytest.approx(0.5) and at_l0(pts, 4.0) == pytest.approx(0.9)
    assert at_l0(pts, 3.0) == pytest.approx(0.6 + 0.3 * (np.log(3) - np.log(2)) / (np.log(4) - np.log(2)))
    assert at_l0(pts, 0.6) is None and at_l0(pts, 4.5) is None and at_l0([(1.0, 0.5)], 1.0) is None
    assert r.matched_l0(
        [
            {"world": "w", "architecture": "a", "d_sae": 4, "true_l0": 2.0, "l0": 1.0, "mcc": 0.5},
            {"world": "w", "architecture": "a", "d_sae": 4, "true_l0": 2.0, "l0": 4.0, "mcc": 0.9},
        ]
    ) == [
        {
            "world": "w",
            "architecture": "a",
            "d_sae": 4,
            "true_l0": 2.0,
            "n_runs": 2,
            "mcc_at_true_l0": pytest.approx(0.7),
            "best_mcc": 0.9,
        }
    ]
    # verdict: inclusive thresholds; n_eff per direction exactly 1 is "combinations", unknown is "merged"
    assert r.verdict(0.8, 1.0, 2.0, 0.8) == "directions"
    assert r.verdict(0.5, 0.8, 1.0, 0.8) == "combinations"
    assert r.verdict(0.5, 0.8, None, 0.8) == "merged"
    assert r.verdict(0.5, 0.79, 2.0, 0.8) == "neither"
    assert r.verdict(None, 0.9, 2.0, 0.8) == r.verdict(0.9, None, 2.0, 0.8) == "neither"
    # nan_mean: nothing or only NaN has no mean
    assert r.nan_mean([]) is None and r.nan_mean([np.nan, np.nan]) is None and r.nan_mean([1, np.nan, 3]) == 2.0
    # chance MCC: a seeded random dictionary, seed 0 by default
    D = torch.eye(16)[:8]
    assert r.chance_mcc(8, D) == r.chance_mcc(8, D, seed=0) != r.chance_mcc(8, D, seed=1)
    g = torch.Generator().manual_seed(0)
    assert r.chance_mcc(8, D) == pytest.approx(r.mcc(r.pos_cos(torch.randn(8, 16, generator=g), D)))


def test_by_decile_keeps_the_order_of_tied_frequencies():
    """Features of equal frequency stay in index order (a stable sort): with 40 ties, decile k holds features
    4k .. 4k+3."""
    from research.synthetic.recovery import by_decile

    assert by_decile(np.arange(40.0), np.zeros(40)) == [4 * k + 1.5 for k in range(10)]


def test_absorption_and_shrinkage_edge_cases():
    """A pair never co-active has no absorption (NaN, not 0) and no shrinkage; a child latent firing at 0 is off."""
    from research.synthetic.recovery import absorption, shrinkage

    c = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    f = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    absorbed, control = absorption(f, c, [(0, 1), (1, 0)], {0: 0, 1: 1})
    assert np.isnan(absorbed[0]) and control[0] == 0.5 and np.isnan(absorbed[1]) and np.isnan(control[1])
    c2, f2 = torch.tensor([[1.0, 1.0]]), torch.tensor([[0.0, 0.0]])  # both fire; neither latent does
    assert absorption(f2, c2, [(0, 1)], {0: 0, 1: 1})[0][0] == 0.0
    out = shrinkage(f, c, torch.eye(2), torch.eye(2), np.array([1]), np.array([1]))
    assert out.dtype == np.float64 and np.isnan(out[0])
    from research.synthetic.recovery import pos_cos

    assert float(pos_cos(torch.tensor([[6.0, 8.0]]), torch.tensor([[3.0, 4.0]]))[0, 0]) == pytest.approx(1.0)


# ---------------------------------------------------------------- replication formulas (saelab.analysis.weights)


def test_weight_formulas_by_hand():
    """docs/metrics.md's weight analyses on vectors small enough to do by hand."""
    from saelab.analysis import weights as w

    # cluster sameness: cos of each row with the rows' mean, share strictly above the threshold
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    mean, cos, share = w.cluster_sameness(v, threshold=0.5**0.5)
    torch.testing.assert_close(mean, torch.tensor([2 / 3, 2 / 3]))
    torch.testing.assert_close(cos, torch.tensor([0.5**0.5, 0.5**0.5, 1.0]))
    assert share == pytest.approx(1 / 3)  # cos = 1/√2 exactly at the threshold is not above it
    assert np.isnan(w.cluster_sameness(torch.zeros(0, 2))[2])
    # encoder / decoder cosine and the D/E projection (un-normalised)
    W_enc = torch.tensor([[3.0, 0.0], [4.0, 2.0]])  # columns (3, 4) and (0, 2)
    W_dec = torch.tensor([[0.6, 0.8], [1.0, 0.0]])
    torch.testing.assert_close(w.enc_dec_cosine(W_enc, W_dec), torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(w.de_projection(W_enc, W_dec), torch.tensor([5.0, 0.0]))
    # neuron sparsity: squared weights sorted, over their sum; next_9 = ranks 2..10 only
    row = torch.tensor([[4.0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    top1, next9 = w.neuron_sparsity(row)
    total = 16 + 4 + 11
    assert float(top1[0]) == pytest.approx(16 / total) and float(next9[0]) == pytest.approx((4 + 8) / total)
    assert w.neuron_sparsity(torch.zeros(1, 3))[0].item() == 0  # an all-zero row: no division by zero
    # sparsity classes at their boundaries: > 0.35 and < 0.1 for 1-sparse, sum < 0.35 for dense
    # (a float32 tensor meets a Python scalar in float32: 0.35 and 0.1 below are exactly the thresholds)
    t1, n9 = torch.tensor([0.36, 0.35, 0.36, 0.2, 0.35]), torch.tensor([0.09, 0.05, 0.1, 0.14, 0.0])
    assert list(w.sparsity_class(t1, n9)) == ["1-sparse", "10-ish", "10-ish", "dense", "10-ish"]
    # excess kurtosis (Fisher): m4 / m2² − 3 over each row
    r = torch.tensor([[0.0, 0.0, 0.0, 1.0], [1.0, -1.0, 1.0, -1.0]])
    for i, x in enumerate(r.double().numpy()):
        d = x - x.mean()
        assert w.excess_kurtosis(r)[i] == pytest.approx((d**4).mean() / (d**2).mean() ** 2 - 3)
    assert w.gaussian_kurtosis_baseline((4, 20000)) == pytest.approx(np.zeros(4), abs=0.1)
    assert not np.array_equal(w.gaussian_kurtosis_baseline((2, 50)), w.gaussian_kurtosis_baseline((2, 50), seed=1))
    # null-space share: W_out's columns span e0, e1 of R^4; (1, 1, 1, 1) has half its ‖v‖² outside
    W_out = torch.tensor([[1.0, 1.0], [0.0, 2.0], [0.0, 0.0], [0.0, 0.0]])
    share = w.null_space_share(torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 3.0, 0.0, 0.0]]), W_out)
    torch.testing.assert_close(share, torch.tensor([0.5, 0.0]))
    # pairwise decoder cosines: mean and population variance over i < j
    m, var, n = w.pairwise_cosine_stats(torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]))
    cs = np.array([0.0, 0.5**0.5, 0.5**0.5])
    assert (m, var, n) == (pytest.approx(cs.mean()), pytest.approx(cs.var()), 3)
    m1, v1, n1 = w.pairwise_cosine_stats(torch.ones(1, 2))
    assert np.isnan(m1) and np.isnan(v1) and n1 == 1


def test_logit_effects_fold_the_final_layernorm_by_hand():
    """u = centre(W_dec W_out) · diag(ln_weight) · W_U; without ln_weight, no centring."""
    from saelab.analysis.weights import logit_effects, moments

    W_dec = torch.tensor([[1.0, 2.0]])  # neuron space, d_mlp 2
    W_out = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 3.0]])  # -> residual (1, 2, 6), mean 3
    W_U = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    ln = torch.tensor([2.0, 1.0, 0.5])
    # centred (−2, −1, 3), scaled (−4, −1, 1.5): logits (−4 + 1.5, −1 + 1.5)
    torch.testing.assert_close(logit_effects(W_dec, W_U, W_out, ln), torch.tensor([[-2.5, 0.5]]))
    torch.testing.assert_close(logit_effects(W_dec, W_U, W_out), torch.tensor([[7.0, 8.0]]))
    torch.testing.assert_close(logit_effects(torch.tensor([[1.0, 2.0, 6.0]]), W_U), torch.tensor([[7.0, 8.0]]))
    u = torch.tensor([[0.0, 0.0, 0.0, 4.0]])
    got = moments(u)
    d = np.array([-1.0, -1.0, -1.0, 3.0])
    assert got["logit_mean"][0] == pytest.approx(1.0) and got["logit_std"][0] == pytest.approx(3**0.5)
    assert got["logit_skew"][0] == pytest.approx((d**3).mean() / (d**2).mean() ** 1.5)
    assert got["logit_kurtosis"][0] == pytest.approx((d**4).mean() / (d**2).mean() ** 2 - 3)


# ---------------------------------------------------------------- exports (SAELens 6.54's on-disk format)


@pytest.mark.parametrize("arch", sorted(REGISTRY))
def test_saelens_export_writes_the_documented_config_and_our_weights(tmp_path, arch):
    """cfg.json is SAELens 6.54's format written out here key by key (docs/usage.md, "Interchange"); the weights
    file holds exactly W_enc, W_dec, b_enc, b_dec (and the threshold for jumprelu / batchtopk), equal to the SAE's."""
    import json

    from safetensors.torch import load_file

    from saelab.config import SAEConfig
    from saelab.interop.saelens import export_saelens
    from saelab.registry import build

    sae = build(SAEConfig(architecture=arch, d_sae=64), 8, seed=3)
    if hasattr(sae, "threshold"):
        with torch.no_grad():
            sae.threshold.copy_(torch.linspace(0.1, 0.7, 64))
    export_saelens(sae, tmp_path, "blocks.0.mlp.hook_post", "gelu-1l", 96)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    saelens_arch = {"topk": "topk", "batchtopk": "jumprelu", "jumprelu": "jumprelu"}.get(arch, "standard")
    expected = {
        "architecture": saelens_arch,
        **({"k": sae.k} if arch == "topk" else {}),
        "d_in": 8,
        "d_sae": 64,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "model_name": "gelu-1l",
            "hook_name": "blocks.0.mlp.hook_post",
            "hook_head_index": None,
            "context_size": 96,
            "prepend_bos": True,
            "dataset_path": None,
            "sae_lens_version": "6.54.12",
            "exported_by": "saelab",
            "saelab_architecture": arch,
            "saelab_arch_params": json.loads(json.dumps(sae.arch_params())),
        },
    }
    assert cfg == expected
    w = load_file(str(tmp_path / "sae_weights.safetensors"))
    keys = {"W_enc", "W_dec", "b_enc", "b_dec"} | ({"threshold"} if saelens_arch == "jumprelu" else set())
    assert set(w) == keys
    for k in keys:
        assert torch.equal(w[k], getattr(sae, k).detach().float()), k


# ---------------------------------------------------------------- standard and standard_april losses


def test_standard_loss_by_hand():
    """loss = mean_batch Σ_d (x̂ − x)² + l1_coeff · mean_batch Σ_i |f_i| (docs/metrics.md), batch 5 ≠ width 3."""
    from saelab.saes.base import SAE

    sae = SAE(4, 3, seed=0, l1_coeff=0.3)
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(2))
    out = sae(x, train=True)
    with torch.no_grad():
        f = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
        mse = ((f @ sae.W_dec + sae.b_dec - x) ** 2).sum(1).mean()
        l1 = f.abs().sum(1).mean()
    assert l1 > 0
    torch.testing.assert_close(out.loss, mse + 0.3 * l1)
    torch.testing.assert_close(out.terms[0], l1)
    torch.testing.assert_close(out.fired, (f > 0).float().sum(0))
    torch.testing.assert_close(out.l0, (f > 0).float().sum(1).mean())


@pytest.mark.parametrize("progress, warm", [(0.0, 0.0), (0.02, 0.4), (0.05, 1.0), (0.5, 1.0)])
def test_april_loss_by_hand(progress, warm):
    """loss = mse + λ · min(1, progress / l1_warmup_frac) · mean_batch Σ_i f_i ‖W_dec[i]‖ (Anthropic, April 2024)."""
    from saelab.saes.standard_april import StandardApril

    sae = StandardApril(4, 3, seed=0, l1_coeff=0.3, l1_warmup_frac=0.05)
    with torch.no_grad():
        sae.W_dec.mul_(torch.tensor([[0.5], [2.0], [3.0]]))
        sae.b_enc.fill_(0.2)
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(2))
    out = sae(x, train=True, progress=progress)
    with torch.no_grad():
        f = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
        mse = ((f @ sae.W_dec + sae.b_dec - x) ** 2).sum(1).mean()
        l1w = (f * sae.W_dec.norm(dim=1)).sum(1).mean()
    assert l1w > 0
    torch.testing.assert_close(out.terms[0], l1w)
    torch.testing.assert_close(out.loss, mse + 0.3 * warm * l1w)
    no_warmup = StandardApril(4, 3, seed=0, l1_coeff=0.3, l1_warmup_frac=0.0)
    no_warmup.load_state_dict(sae.state_dict())
    torch.testing.assert_close(no_warmup(x, train=True, progress=progress).loss, mse + 0.3 * l1w)


def test_parallel_gradient_removal_and_renormalisation_by_hand():
    """Before the step: W_dec.grad −= (grad · w) w per unit row; after it: rows back to norm 1."""
    from saelab.saes.base import SAE

    sae = SAE(2, 2, seed=0)
    with torch.no_grad():
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0], [0.6, 0.8]]))
    sae.W_dec.grad = torch.tensor([[3.0, 4.0], [1.0, 2.0]])
    sae.before_step()
    # row 0: (3, 4) − 3·(1, 0) = (0, 4); row 1: (1, 2) − 2.2·(0.6, 0.8) = (−0.32, 0.24)
    torch.testing.assert_close(sae.W_dec.grad, torch.tensor([[0.0, 4.0], [-0.32, 0.24]]))
    with torch.no_grad():
        sae.W_dec.copy_(torch.tensor([[3.0, 4.0], [0.0, -2.0]]))
    sae.after_step()
    torch.testing.assert_close(sae.W_dec, torch.tensor([[0.6, 0.8], [0.0, -1.0]]))
    sae.W_dec.grad = None
    sae.before_step()  # no gradient yet: nothing to project
    assert sae.W_dec.grad is None


# ---------------------------------------------------------------- cross-seed comparison (saelab.eval.compare)


def test_frequencies_mean_and_principal_directions_by_hand():
    """Firing frequencies of each SAE on the covered positions (the BOS id left out), over batches of rows; the
    activations' mean and top principal directions (eigenvectors of the covariance, largest first), against numpy
    on the same activations."""
    from saelab.eval.compare import frequencies
    from saelab.saes.base import SAE
    from tests.conftest import FakeLM

    d, exclude = 6, 3
    rows = np.array([[3, 5, 8, 9], [3, 10, 11, 40], [3, 2, 7, 21], [3, 15, 1, 33], [3, 4, 6, 12]])
    saes = [SAE(d, 5, seed=0), SAE(d, 7, seed=1)]
    with torch.no_grad():
        for s in saes:
            s.b_enc.fill_(-0.3)  # some features off on some tokens
    freqs, acts = frequencies(FakeLM(d), saes, rows, "hook", 2, "cpu", exclude_token=exclude, n_components=3)
    x = FakeLM.expected(torch.from_numpy(rows).long(), d).reshape(-1, d)[torch.from_numpy(rows != exclude).reshape(-1)]
    assert len(x) == 15
    for s, got in zip(saes, freqs):
        expected = (s.encode(x) > 0).double().mean(0).numpy()
        assert 0 < expected.min() < expected.max() < 1 or 0 < expected.max() < 1
        np.testing.assert_allclose(got, expected)
    X = x.double().numpy()
    np.testing.assert_allclose(acts["mean"].numpy(), X.mean(0), rtol=1e-6, atol=1e-9)
    _, sv, vt = np.linalg.svd(X - X.mean(0), full_matrices=False)
    assert sv[0] > sv[1] > sv[2] > sv[3]  # distinct: the directions are defined up to sign
    np.testing.assert_allclose(np.abs((acts["pcs"].numpy() * vt[:3]).sum(1)), np.ones(3), atol=1e-6)
    assert acts["pcs"].shape == (3, d)


def test_compare_pair_by_hand():
    """Two 4-feature SAEs: b's decoder is a's permuted, one row turned 60 degrees (cos 0.5) and one row tilted to
    cos 0.8; best-match and matched shares counted by hand, the ultra-low split on a's frequencies, the frequency
    agreement of the matched features (Spearman, median |log10 ratio|)."""
    from saelab.eval.compare import compare_pair

    e = torch.eye(3)
    Wa = torch.stack([e[0], e[1], e[2], (e[0] + e[1]) / 2**0.5])
    Wb = torch.stack([e[1], 0.5 * e[0] + 0.75**0.5 * e[2], 0.8 * e[2] + 0.6 * e[0], (e[0] + e[1]) / 2**0.5])
    fa = np.array([0.1, 0.2, 0.00001, 0.4])
    fb = np.array([0.25, 0.05, 0.00002, 0.5])
    a = {"W_dec": Wa, "W_enc": Wa.T, "freq": fa}
    b = {"W_dec": Wb, "W_enc": Wb.T, "freq": fb}
    m, best = compare_pair(a, b, hungarian_max=10, threshold=1e-4)
    A, B = Wa.double(), Wb.double()
    cos = (A / A.norm(dim=1, keepdim=True)) @ (B / B.norm(dim=1, keepdim=True)).T
    np.testing.assert_allclose(best, cos.max(1).values.numpy())
    import itertools  # the one-to-one matching that maximises the summed cosine, by brute force

    perm = max(itertools.permutations(range(4)), key=lambda p: sum(float(cos[i, p[i]]) for i in range(4)))
    matched = np.array([float(cos[i, perm[i]]) for i in range(4)])
    assert m["best_cos_median"] == pytest.approx(float(np.median(best)))
    assert m["best_cos_mean"] == pytest.approx(float(best.mean()))
    assert m["share_best_above_0.9"] == pytest.approx(float((best > 0.9).mean()))
    assert m["share_matched_above_0.9"] == pytest.approx((matched > 0.9).sum() / 4)
    assert m["share_matched_above_0.7"] == pytest.approx((matched > 0.7).sum() / 4)
    assert m["matching_exact"] == 1.0
    ultra = fa < 1e-4
    assert m["share_matched_above_0.9_ultra_low"] == pytest.approx((matched[ultra] > 0.9).mean())
    assert m["share_matched_above_0.9_non_ultra_low"] == pytest.approx((matched[~ultra] > 0.9).mean())
    good = matched > 0.7
    assert good.sum() >= 3
    ga, gb = fa[good], fb[[perm[i] for i in range(4)]][good]
    from scipy import stats

    assert m["matched_freq_spearman"] == pytest.approx(stats.spearmanr(ga, gb).statistic)
    assert m["matched_log10_freq_ratio_median"] == pytest.approx(float(np.median(np.abs(np.log10(ga / gb)))))
    assert m["ultra_low_direction_cos"] == pytest.approx(
        0.8
    )  # the ultra-low features' encoder rows: e2, 0.8 e2 + 0.6 e0
    m2, _ = compare_pair(a, b, hungarian_max=3, threshold=1e-4)
    assert m2["matching_exact"] == 0.0


# ---------------------------------------------------------------- CE metrics (saelab.eval.evaluate)


def test_token_ce_by_hand():
    """CE at position t = −log softmax(logits[t])[token t+1]; the last position predicts nothing."""
    from saelab.eval.evaluate import token_ce

    logits = torch.tensor([[[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 1.0, 3.0]]])
    tokens = torch.tensor([[1, 0, 2]])
    lse = np.log(np.exp([2.0, 0.0, 0.0]).sum())
    torch.testing.assert_close(token_ce(logits, tokens), torch.tensor([[np.log(3.0), lse]], dtype=torch.float32))


def test_summarize_by_hand():
    """CE means over the CE tokens, CE recovered against zero and mean ablation, the reconstruction metrics and the
    frequency shares, every key of metrics/evaluate.json and evaluate_detail.json."""
    from saelab.eval.evaluate import Sums, summarize
    from saelab.eval.metrics import ReconSums

    s = Sums()
    s.ce = {"clean": 20.0, "sae": 25.0, "zero": 40.0, "mean": 30.0}
    s.ce_n = 10
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [2.0, 2.0], [1.0, 1.0]])
    x_hat = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [1.0, 1.0]])
    f = torch.tensor([[1.0, 0.0, 0.0], [1.0, 2.0, 0.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    s.recon = ReconSums().add(x, x_hat, f)
    got = summarize(s, ultra_low=0.3, dense=0.6)
    expected = {
        "ce_clean": 2.0,
        "ce_sae": 2.5,
        "ce_zero_ablation": 4.0,
        "ce_mean_ablation": 3.0,
        "ce_recovered_zero": 0.75,
        "ce_recovered_mean": 0.5,
        "mean_ablation_recovered_zero": 0.5,
        "ce_eval_tokens": 10,
        "mse": 0.5,  # squared errors 0, 1, 1, 0
        "explained_variance": 1 - 2 / 5.0,  # Σ‖x − mean‖² with mean (1, 1.25): 1+1.5625+...
        "l0": 1.5,
        "l2_ratio": (1 + 0.5 + 5**0.5 / 8**0.5 + 1) / 4,
        "frac_dead": 1 / 3,
        "frac_ultra_low": 1 / 3,  # frequencies 1, 0.5, 0: only the dead one is below 0.3
        "frac_dense": 1 / 3,  # above 0.6: the first
        "eval_tokens": 4,
    }
    mu = x.double().mean(0)
    expected["explained_variance"] = 1 - 2 / float(((x.double() - mu) ** 2).sum())
    assert got.keys() == expected.keys()
    for k, v in expected.items():
        assert got[k] == pytest.approx(v), k


# ---------------------------------------------------------------- TopK


def _topk(decoder: str, sparse: bool):
    """TopK (k 2) with three dead latents, aux_coeff ≠ 1, k_aux 3 ≠ batch 4, free rows of norms ≠ 1."""
    from saelab.saes.topk import TopK

    torch.manual_seed(3)
    sae = TopK(6, 10, seed=0, k=2, k_aux=3, aux_coeff=0.25, dead_tokens=5, decoder=decoder)
    sae.sparse_path = sparse
    with torch.no_grad():
        if decoder == "free":
            sae.W_dec.mul_(torch.linspace(0.5, 2.0, 10)[:, None])
        sae.b_dec.copy_(torch.randn(6) * 0.1)
        sae.b_enc.copy_(torch.randn(10) * 0.1)
        sae.since_fired[[1, 4, 7]] = 10
    return sae


@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize("decoder", ["free", "unit"])
def test_topk_loss_with_auxk_by_hand(decoder, sparse):
    """Gao et al. 2024 written out: pre-activations (× the row norms with free rows), per token the k largest, ReLU;
    x̂ from the unit rows; AuxK = batch mean of ‖ê − (x − x̂)‖², ê from the k_aux largest pre-activations of the dead
    latents; loss = mse + aux_coeff · AuxK; fires and L0 of the selected positive activations. Both training paths."""
    sae = _topk(decoder, sparse)
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(5))
    out = sae(x, train=True, progress=0.0)
    with torch.no_grad():
        n = sae.W_dec.norm(dim=1) if decoder == "free" else torch.ones(10)
        pre = ((x - sae.b_dec) @ sae.W_enc + sae.b_enc) * n
        f = torch.zeros_like(pre)
        aux = torch.zeros_like(pre)
        for b in range(4):
            order = sorted(range(10), key=lambda i: -float(pre[b, i]))
            for i in order[:2]:
                f[b, i] = max(float(pre[b, i]), 0.0)
            for i in [i for i in order if i in (1, 4, 7)][:3]:
                aux[b, i] = max(float(pre[b, i]), 0.0)
        rows = sae.W_dec / n[:, None]
        x_hat = f @ rows + sae.b_dec
        mse = ((x_hat - x) ** 2).sum(1).mean()
        auxk = ((aux @ rows - (x - x_hat)) ** 2).sum(1).mean()
    assert auxk > 0 and (f > 0).sum() > 4
    torch.testing.assert_close(out.mse, mse, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.terms[0], auxk, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.loss, mse + 0.25 * auxk, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.aux_mse, 0.25 * auxk, rtol=1e-5, atol=1e-6)  # what a functional loss reweighs
    torch.testing.assert_close(out.fired, (f > 0).float().sum(0))
    torch.testing.assert_close(out.l0, (f > 0).float().sum(1).mean())


def test_topk_without_dead_latents_or_with_auxk_off_has_no_auxk():
    """No latent dead, aux_coeff 0 or k_aux 0: AuxK is 0 and the loss is the MSE."""
    for change in ({"since_fired": 0}, {"aux_coeff": 0.0}, {"k_aux": 0}):
        sae = _topk("free", True)
        if "since_fired" in change:
            sae.since_fired.zero_()
        else:
            setattr(sae, *next(iter(change.items())))
        assert sae.auxk_dead() is None
        out = sae(torch.randn(4, 6), train=True, progress=0.0)
        assert float(out.terms[0]) == 0.0 and torch.equal(out.loss, out.mse)


def test_topk_dead_window_and_k_schedule_by_hand():
    """A latent is dead once it has not fired for dead_tokens tokens (>=); observe_ adds the step's tokens and
    resets the latents that fired. k_at: geometric from k_anneal_start to k over k_anneal_frac, rounded, then k."""
    from saelab.saes.topk import TopK

    sae = TopK(6, 10, seed=0, k=2, dead_tokens=8, k_anneal_start=8, k_anneal_frac=0.5)
    sae.observe_(torch.tensor([1.0, 0, 0, 0, 0, 0, 0, 0, 0, 2.0]), 5)
    assert sae.since_fired.tolist() == [0, 5, 5, 5, 5, 5, 5, 5, 5, 0] and not sae.dead().any()
    sae.observe_(torch.tensor([0.0, 3.0, 0, 0, 0, 0, 0, 0, 0, 0]), 3)
    assert sae.dead().tolist() == [False, False] + [True] * 7 + [False]  # 8 tokens: dead exactly at the window
    assert [sae.k_at(p) for p in (0.0, 0.125, 0.25, 0.49, 0.5, 0.9)] == [
        8,
        round(8**0.75 * 2**0.25),
        round(8**0.5 * 2**0.5),
        max(2, round(8 ** (1 - 0.98) * 2**0.98)),
        2,
        2,
    ]
    assert TopK(6, 10, seed=0, k=3).k_at(0.0) == 3  # no schedule: k from the start
    inference = sae.activate(torch.tensor([[0.5, -1.0, 3.0, 2.0, -0.1, 0, 0, 0, 0, 0]]))
    assert inference.tolist() == [[0.0, 0.0, 3.0, 2.0, 0.0, 0, 0, 0, 0, 0]]  # k = 2 at inference, schedule or not
    assert sae.k_aux == 3  # default d_in // 2


def test_anneal_problems_are_named():
    from saelab.saes.topk import K_ANNEAL_FRAC, anneal_problem

    assert anneal_problem(4, None, K_ANNEAL_FRAC) is None and anneal_problem(4, 4, 0.5, None, 4) is None
    assert "must lie in (0, 1)" in anneal_problem(4, 8, 1.0) and "must lie in (0, 1)" in anneal_problem(4, 8, 0.0)
    assert "has no effect without k_anneal_start" in anneal_problem(4, None, 0.5)
    assert "must be >= k (4)" in anneal_problem(4, 3, 0.5)
    assert "must be <= d_sae (8)" in anneal_problem(4, 9, 0.5, None, 8)
    assert "before the inference threshold's window" in anneal_problem(4, 8, 0.5, 0.6)
    assert anneal_problem(4, 8, 0.5, 0.5) is None  # ends exactly where the window starts


def test_evaluate_sums_ce_over_several_batches_against_a_direct_computation(tiny_lm):
    """evaluate() on CE rows spread over several batches equals CE computed here row by row: clean, the SAE's
    splice, zero and mean ablation, as means over every predicted token; its per-feature arrays and keys."""
    from saelab.config import EvaluateConfig
    from saelab.data.hooks import capture, splice
    from saelab.data.lm import load_lm
    from saelab.eval.evaluate import EvalSample, evaluate, token_ce
    from saelab.saes.base import SAE

    path, rows = tiny_lm
    lm = load_lm(path)
    hook = "blocks.0.mlp.hook_post"
    sae = SAE(64, 96, seed=0)
    mean = torch.linspace(-0.1, 0.2, 64)
    cfg = EvaluateConfig(ce_max_tokens=3 * 16, batch_rows=2)  # 3 CE rows: batches of 2 and 1
    m, per = evaluate(lm.model, sae, rows, hook, mean, cfg, "cpu", progress=False)
    sample = EvalSample.draw(len(rows), rows.shape[1], cfg.max_tokens, cfg)
    assert len(sample.ce) == 3
    sums, n, f_sum = {"clean": 0.0, "sae": 0.0, "zero": 0.0, "mean": 0.0}, 0, torch.zeros(96, dtype=torch.float64)
    with torch.no_grad():
        for r in sample.ce:
            tokens = torch.from_numpy(rows[r : r + 1].astype(np.int64))
            logits, x = capture(lm.model, tokens, hook)
            x_hat = sae(x.reshape(-1, 64)).x_hat.reshape(x.shape)
            keep = torch.zeros(x.shape[:2], dtype=torch.bool)
            sums["clean"] += token_ce(logits, tokens).double().sum().item()
            for name, v in (("sae", x_hat), ("zero", torch.zeros_like(x)), ("mean", mean.expand_as(x))):
                out = lm.model.run_with_hooks(tokens, fwd_hooks=[(hook, splice(v, keep=keep))])
                sums[name] += token_ce(out, tokens).double().sum().item()
            n += tokens.shape[1] - 1
        for r in np.concatenate([sample.ce, sample.rest]):
            x = capture(lm.model, torch.from_numpy(rows[r : r + 1].astype(np.int64)), hook)[1].reshape(-1, 64)
            f_sum += sae.encode(x).double().sum(0)
    ce = {k: v / n for k, v in sums.items()}
    assert m["ce_eval_tokens"] == n
    for key, name in (
        ("ce_clean", "clean"),
        ("ce_sae", "sae"),
        ("ce_zero_ablation", "zero"),
        ("ce_mean_ablation", "mean"),
    ):
        assert m[key] == pytest.approx(ce[name], rel=1e-5), key
    assert m["eval_rows"] == sample.n_rows and m["ce_eval_rows"] == 3
    np.testing.assert_allclose(per["act_sum"], f_sum.numpy(), rtol=1e-5, atol=1e-6)
    t = per["timing"]
    assert set(t) == {"eval_seconds", "eval_tokens_per_s"} and 0 < t["eval_seconds"] < 600
    assert t["eval_tokens_per_s"] == pytest.approx(sample.n_rows * rows.shape[1] / t["eval_seconds"])


# ---------------------------------------------------------------- persistence and formats


def test_saved_sae_formats_and_their_errors(tmp_path):
    """config.json without an architecture (files written before architectures existed) is the standard SAE, without
    arch_params its defaults; an unknown architecture and a weight of the wrong shape or missing are named."""
    import json

    from saelab.saes.base import SAE

    sae = SAE(4, 6, seed=1, l1_coeff=0.5)
    sae.save(tmp_path / "a" / "b", {"hook": "h"})  # nested folders are created
    cfg = json.loads((tmp_path / "a/b/config.json").read_text())
    assert cfg == {"d_in": 4, "d_sae": 6, "architecture": "standard", "arch_params": {"l1_coeff": 0.5}, "hook": "h"}
    del cfg["architecture"], cfg["arch_params"]
    (tmp_path / "a/b/config.json").write_text(json.dumps(cfg))
    back, meta = SAE.load(tmp_path / "a/b")
    assert type(back) is SAE and back.l1_coeff == 1.0 and meta["hook"] == "h"
    assert torch.equal(back.W_enc, sae.W_enc)
    (tmp_path / "a/b/config.json").write_text(json.dumps(cfg | {"architecture": "nope"}))
    known = str(sorted(REGISTRY))
    with pytest.raises(InputError, match=rf"config\.json: unknown architecture 'nope'; known: {re.escape(known)}"):
        SAE.load(tmp_path / "a/b")
    (tmp_path / "a/b/config.json").write_text(json.dumps(cfg | {"d_sae": 7}))
    with pytest.raises(InputError, match=r"W_enc is \(4, 6\), config says \(4, 7\); rerun `dvc repro train`"):
        SAE.load(tmp_path / "a/b")
    from saelab.io import load_weights, save_weights

    w = load_weights(tmp_path / "a/b/sae.safetensors")
    del w["b_dec"]
    save_weights(tmp_path / "a/b/sae.safetensors", w)
    (tmp_path / "a/b/config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match=r"b_dec is absent, config says \(4,\)"):
        SAE.load(tmp_path / "a/b")


def test_reference_checkpoints_and_their_hook_names(tmp_path):
    """The reference code's site / layer name the TransformerLens hook (defaults: layer 0, post); a state dict
    without the four keys is refused with the keys it needs."""
    from saelab.interop.saelens import load_reference, reference_hook

    assert reference_hook({}) == "blocks.0.mlp.hook_post"
    assert reference_hook({"layer": 2, "site": "pre"}) == "blocks.2.mlp.hook_pre"
    assert reference_hook({"layer": 1, "site": "mlp_out"}) == "blocks.1.hook_mlp_out"
    torch.save({"W_enc": torch.zeros(3, 4), "W_dec": torch.zeros(4, 3)}, tmp_path / "w.pt")
    (tmp_path / "c.json").write_text("{}")
    with pytest.raises(
        InputError,
        match=r"missing \['b_enc', 'b_dec'\]; the reference code's format has \['W_enc', 'W_dec', 'b_enc', 'b_dec'\]",
    ):
        load_reference(tmp_path / "w.pt", tmp_path / "c.json")


def test_free_row_resampling_takes_the_mean_norm_of_the_alive_rows():
    """Resampled free rows get the mean norm of the rows not resampled (here rows 1-3: norms 2, 3, 4 -> 3);
    with every row resampled, dec_init_norm."""
    from saelab.saes.jumprelu import JumpReLU

    sae = JumpReLU(2, 4, seed=0, dec_init_norm=0.25)
    with torch.no_grad():
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [0.0, 4.0]]))
    dirs = torch.tensor([[0.6, 0.8]])
    sae.resample_rows_(torch.tensor([0]), dirs, torch.tensor(1.0))
    torch.testing.assert_close(sae.W_dec[0], dirs[0] * 3.0)
    sae.resample_rows_(torch.arange(4), dirs.expand(4, 2), torch.tensor(1.0))
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.full((4,), 0.25))


def test_explained_variance_of_identical_tokens_is_nan_not_a_crash():
    """Every token the same: Σ‖x − mean‖² = 0, nothing to explain; EV is NaN (docs/metrics.md), the stage goes on."""
    from saelab.eval.metrics import reconstruction_metrics

    x = torch.ones(4, 3)
    m = reconstruction_metrics(x, x * 0.5, torch.ones(4, 2))
    assert np.isnan(m["explained_variance"]) and m["mse"] == pytest.approx(0.75) and m["l2_ratio"] == 0.5


# ---------------------------------------------------------------- resampling (saelab.training.resample)


def test_anthropic_resampling_draw_by_hand():
    """The default mode is Anthropic's: inputs drawn (without replacement while there are enough) with weights
    (Σ_d (x̂ − x)²)² from the same generator; decoder row = unit(x − b_dec), encoder column = that × 0.2 × the mean
    alive encoder norm (1 when none is alive), encoder bias 0. Inputs of norm < 1, so a wrong clamp shows."""
    from saelab.saes.base import SAE
    from saelab.training.resample import resample_

    g = torch.Generator().manual_seed(4)
    x = torch.rand(5, 3, generator=g) * 0.3
    for dead_idx in ([1, 3], [0, 1, 2, 3, 4, 5, 6]):
        sae = SAE(3, 7, seed=0)
        with torch.no_grad():
            sae.b_dec.copy_(torch.tensor([0.05, -0.02, 0.01]))
            sae.b_enc.fill_(0.3)
        dead = torch.zeros(7, dtype=torch.bool)
        dead[dead_idx] = True
        with torch.no_grad():
            err = ((sae.decode(sae.encode(x)) - x) ** 2).sum(1)
            alive_norm = sae.W_enc[:, ~dead].norm(dim=0).mean() if (~dead).any() else torch.tensor(1.0)
        n = len(dead_idx)
        picks = torch.multinomial(err**2 + 1e-12, n, replacement=n > 5, generator=torch.Generator().manual_seed(9))
        opt = torch.optim.Adam(sae.parameters())
        assert resample_(sae, opt, dead, x, torch.Generator().manual_seed(9)) == n
        dirs = x[picks] - torch.tensor([0.05, -0.02, 0.01])
        dirs = dirs / dirs.norm(dim=1, keepdim=True)
        assert float(dirs.norm(dim=1).max()) == pytest.approx(1.0)
        torch.testing.assert_close(sae.W_dec[dead_idx], dirs)
        torch.testing.assert_close(sae.W_enc[:, dead_idx], dirs.T * 0.2 * alive_norm)
        assert (sae.b_enc[dead_idx] == 0).all() and (sae.b_enc[~dead] == 0.3).all()
    sae = SAE(3, 7, seed=0)
    before = sae.state_dict()
    nothing = torch.zeros(7, dtype=torch.bool)
    assert resample_(sae, torch.optim.Adam(sae.parameters()), nothing, x, torch.Generator()) == 0
    assert all(torch.equal(v, sae.state_dict()[k]) for k, v in before.items())


def test_resampling_draws_without_replacement_when_inputs_suffice():
    """As many dead features as inputs: every input drawn once (no replacement), whatever the weights."""
    from saelab.saes.base import SAE
    from saelab.training.resample import resample_

    sae = SAE(3, 4, seed=0)
    x = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1.0, 0]]) * 0.5
    resample_(sae, torch.optim.Adam(sae.parameters()), torch.ones(4, dtype=torch.bool), x, torch.Generator())
    got = {tuple(r) for r in (sae.W_dec * 2**0.5).round(decimals=4).tolist()}
    assert len(got) == 4


def test_weight_formulas_on_small_rows_and_several_rows():
    """The clamps only guard zero rows (rows of norm < 1 are divided by their own norms), the baseline kurtosis is
    seeded, and LayerNorm centring is per written direction (per row)."""
    from saelab.analysis import weights as w

    top1, next9 = w.neuron_sparsity(torch.tensor([[0.3, 0.1, 0.0]]))
    assert float(top1[0]) == pytest.approx(0.09 / 0.1) and float(next9[0]) == pytest.approx(0.01 / 0.1)
    W_out = torch.tensor([[1.0], [0.0]])
    torch.testing.assert_close(w.null_space_share(torch.tensor([[0.3, 0.4]]), W_out), torch.tensor([0.64]))
    a, b = w.gaussian_kurtosis_baseline((2, 50)), w.gaussian_kurtosis_baseline((2, 50))
    assert np.array_equal(a, b)
    from saelab.analysis.weights import logit_effects

    W_dec = torch.tensor([[1.0, 2.0, 6.0], [0.0, 0.0, 3.0]])  # row means 3 and 1
    W_U = torch.eye(3)
    torch.testing.assert_close(
        logit_effects(W_dec, W_U, None, torch.ones(3)), torch.tensor([[-2.0, -1.0, 3.0], [-1.0, -1.0, 2.0]])
    )


def test_batchtopk_threshold_window_check_counts_whole_steps():
    """Steps are whole batches (n_tokens // batch_size): 1000 tokens in batches of 300 are 3 steps, and a
    threshold_frac of 0.34 leaves one of them (3 − ceil(3 × 0.66) = 1); 0.2 leaves none and is refused by name."""
    from saelab.config import SAEConfig
    from saelab.section import ConfigError

    base = {"architecture": "batchtopk", "n_tokens": 1000, "batch_size": 300, "lr_warmup_tokens": 0}
    SAEConfig(**base, batchtopk={"k": 4, "threshold_frac": 0.34})
    msg = (
        r"sae\.batchtopk\.threshold_frac \(0\.2\) x 3 training steps leaves no step to estimate the inference "
        r"threshold from; raise it or sae\.n_tokens"
    )
    with pytest.raises((ConfigError, ValueError), match=msg):
        SAEConfig(**base, batchtopk={"k": 4, "threshold_frac": 0.2})


def test_batchtopk_inference_is_strict_at_the_threshold_and_needs_an_estimate():
    """Inference keeps pre > θ (θ itself is off); finishing without any step in the threshold window is refused."""
    sae = _batchtopk()
    with torch.no_grad():
        sae.threshold.fill_(0.5)
    pre = torch.tensor([[0.5, 0.6, 0.4, 0, 0, 0, 0, 0, 0, 0]])
    assert sae.activate(pre)[0, :3].tolist() == [0.0, pytest.approx(0.6), 0.0]
    with pytest.raises(
        InputError,
        match=r"batchtopk: no training step estimated the inference threshold; raise "
        r"sae\.batchtopk\.threshold_frac or sae\.n_tokens",
    ):
        _batchtopk().finish_training_()


def test_april_resampling_and_clipping():
    """April's resampled rows take the mean alive decoder norm (its rows are free); grad_clip 0 leaves the
    gradients as they are (no clipping), a positive one clips the total norm."""
    from saelab.saes.standard_april import StandardApril

    sae = StandardApril(2, 3, seed=0, grad_clip=0.0)
    with torch.no_grad():
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [4.0, 0.0]]))
    sae.resample_rows_(torch.tensor([0]), torch.tensor([[0.6, 0.8]]), torch.tensor(1.0))
    torch.testing.assert_close(sae.W_dec[0], torch.tensor([0.6, 0.8]) * 3.0)
    for p in sae.parameters():
        p.grad = torch.full_like(p, 10.0)
    sae.before_step()
    assert all((p.grad == 10.0).all() for p in sae.parameters())
    sae.grad_clip = 1.0
    sae.before_step()
    total = torch.sqrt(sum((p.grad**2).sum() for p in sae.parameters()))
    assert float(total) == pytest.approx(1.0, rel=1e-4)


def test_recovery_cosines_of_short_vectors_and_means_with_gaps():
    """Directions shorter than 1 are normalised by their own norms (the clamp only guards 0); nan_mean takes None
    as a gap (NaN), as score's task keys pass them."""
    from research.synthetic.recovery import nan_mean, pos_cos

    assert float(pos_cos(torch.tensor([[0.06, 0.08]]), torch.tensor([[0.3, 0.4]]))[0, 0]) == pytest.approx(1.0)
    assert nan_mean([None, 2.0, 4.0]) == 3.0 and nan_mean([None]) is None


def test_compare_all_keeps_every_pair_and_seed():
    """compare_all over three seeds with the activations' statistics: every seed's baselines, every pair's
    metrics (the agreement without the mean activation included) and every pair's best-match cosines; a seed
    without ultra-low features gets no baselines and its pairs no direction cosines."""
    from saelab.eval.compare import compare_all, compare_pair, direction_baselines, ultra_low_direction

    g = torch.Generator().manual_seed(0)
    saes = {}
    for seed in (0, 1, 2):
        W = torch.randn(6, 4, generator=g)
        freq = np.array([0.0, 1e-5, 0.2, 0.3, 0.1, 0.05]) if seed != 2 else np.full(6, 0.1)
        saes[seed] = {"W_dec": W, "W_enc": W.T + 0.1, "freq": freq, "b_dec": torch.randn(4, generator=g)}
    acts = {"mean": torch.tensor([1.0, 0.5, 0.0, 0.0]), "pcs": torch.eye(4)[:2]}
    metrics, best = compare_all(saes, hungarian_max=10, threshold=1e-4, acts=acts)
    assert set(best) == {(0, 1), (0, 2), (1, 2)}
    for (a, b), v in best.items():
        m, want = compare_pair(saes[a], saes[b], 10, 1e-4)
        np.testing.assert_array_equal(v, want)
        for k, x in m.items():
            assert metrics[f"seed{a}_vs_seed{b}_{k}"] == pytest.approx(x), (a, b, k)
    for seed in (0, 1):
        d = ultra_low_direction(saes[seed]["W_enc"], saes[seed]["freq"], 1e-4)
        for k, x in direction_baselines(d, saes[seed]["b_dec"], acts).items():
            assert metrics[f"seed{seed}_{k}"] == pytest.approx(x)
    assert not any(k.startswith("seed2_") for k in metrics)
    assert "seed0_vs_seed1_ultra_low_direction_cos_without_mean_activation" in metrics
    assert not any("without_mean" in k for k in metrics if "seed2" in k)
    assert not any("baseline" in k or "dir_cos" in k for k in compare_all(saes, 10, 1e-4)[0])  # no acts: none


def test_compare_pair_edges():
    """A frequency exactly at the threshold is not ultra-low; a matched feature that never fires has no frequency
    ratio (left out, and 0 when none is left); one SAE without ultra-low features has no direction cosine."""
    from saelab.eval.compare import compare_pair, direction_baselines, ultra_low_direction

    W = torch.eye(4)
    a = {"W_dec": W, "W_enc": W.T, "freq": np.array([1e-4, 0.0, 0.2, 0.4])}
    Wb = W.clone()
    Wb[0] = torch.tensor([0.8, 0.6, 0.0, 0.0])  # feature 0 matches at cos 0.8 only
    b = {"W_dec": Wb, "W_enc": Wb.T, "freq": np.array([0.1, 0.0, 0.1, 0.1])}
    m, _ = compare_pair(a, b, 10, 1e-4)
    assert m["share_matched_above_0.9_ultra_low"] == 1.0  # only feature 1 (freq 0) is ultra-low, not 0 (at 1e-4)
    assert m["share_matched_above_0.9_non_ultra_low"] == pytest.approx(2 / 3)
    assert m["ultra_low_direction_cos"] == pytest.approx(1.0)  # both have feature 1 (dead) as their ultra-low one
    m3, _ = compare_pair(a, {**b, "freq": np.full(4, 0.1)}, 10, 1e-4)
    assert "ultra_low_direction_cos" not in m3  # b has no ultra-low feature: no direction to compare
    torch.testing.assert_close(ultra_low_direction(W.T, a["freq"], 1e-4), torch.tensor([0.0, 1.0, 0, 0]).double())
    # ratios: feature 0 (1e-4 / 0.1), 2 (0.2 / 0.1), 3 (0.4 / 0.1); feature 1 never fires in either: left out
    assert m["matched_log10_freq_ratio_median"] == pytest.approx(float(np.log10(4.0)))  # median of 3, 0.30, 0.60
    c = {"W_dec": W, "W_enc": W.T, "freq": np.array([0.0, 0.0, 0.0, 0.1])}  # identity rows
    m2, _ = compare_pair(c, {**c, "freq": np.array([0.1, 0.1, 0.1, 0.0])}, 10, 1e-4)
    assert m2["matched_log10_freq_ratio_median"] == 0.0  # no matched feature fires in both
    short = torch.tensor([0.3, 0.4, 0.0, 0.0])  # norm 0.5: normalised by its own norm
    base = direction_baselines(short, torch.tensor([0.6, 0.8, 0, 0]), {"mean": short, "pcs": torch.eye(4)[:1]})
    assert base["ultra_low_dir_max_abs_cos_top_pcs"] == pytest.approx(0.6)


def test_recovery_pair_metrics_skip_what_they_should():
    """Shrinkage uses only tokens where both fire (a latent-only token would enter as f / 0); absorption goes on past
    an unmatched pair; task usage keeps a small but positive mass; a latent at exactly 1% of the mass counts."""
    from research.synthetic import recovery as r

    c = torch.tensor([[1.0], [0.0], [4.0]])
    f = torch.tensor([[0.5], [0.7], [1.0]])  # both fire on tokens 0 and 2: ratios 0.5, 0.25 -> lower middle 0.25
    assert r.shrinkage(f, c, torch.eye(1), torch.eye(1), np.array([0]), np.array([0]))[0] == pytest.approx(0.25)
    cc = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    ff = torch.tensor([[0.0, 1.0, 0.0, 1.0]])
    absorbed, _ = r.absorption(ff, cc, [(0, 9), (2, 3)], {0: 0, 2: 2, 3: 3})  # pair (0, 9): 9 unmatched
    assert np.isnan(absorbed[0]) and absorbed[1] == 1.0
    D = torch.eye(3)[:1]
    W = torch.tensor([[4.0, 0.0, 0.0], [0.5, 0.0, 0.0]])  # norms 4 and 0.5 (below 1: its own norm divides)
    u = r.task_usage(torch.tensor([[0.25, 198.0]]), W, D, torch.tensor([True]), 0.6)  # masses 1 and 99: q = 1%, 99%
    assert u["n_latents"] == 2
    small = r.task_usage(torch.tensor([[0.01, 0.04]]), W, D, torch.tensor([True]), 0.6)  # total mass 0.06 < 1
    assert small["n_latents"] == 2 and small["dir_align"] == pytest.approx(1.0)
    assert u["n_eff"] == pytest.approx(float(np.exp(-(0.01 * np.log(0.01) + 0.99 * np.log(0.99)))))


def test_sorts_keep_ties_in_index_order():
    """by_decile and the greedy matching order ties by index (stable sorts), also when tied values interleave."""
    from research.synthetic.recovery import by_decile
    from saelab.eval.compare import greedy_matching

    freq = np.tile([0.5, 0.1], 20)  # 40 features, two interleaved tie groups
    values = np.arange(40.0)
    order = np.argsort(freq, kind="stable")
    assert by_decile(values, freq) == [float(values[order[4 * k : 4 * k + 4]].mean()) for k in range(10)]
    cos = np.tile([0.5, 0.9, 0.5], (3, 1))  # every row ties; the first of each tie wins
    rows, cols = greedy_matching(cos)
    assert rows.tolist() == [0, 1, 2] and cols.tolist() == [1, 0, 2]
    big = np.full((6, 20), 0.5)  # 120 entries: beyond the sizes where numpy's default sort happens to be stable
    big[:, 3] = 0.9
    rows, cols = greedy_matching(big)
    assert list(zip(rows.tolist(), cols.tolist())) == [(0, 3), (1, 0), (2, 1), (3, 2), (4, 4), (5, 5)]


def test_topk_encoder_gradient_is_zero_where_a_selected_preactivation_is_negative():
    """When fewer than k pre-activations are positive, TopK selects negative ones, ReLU makes them 0 and they pass no
    gradient (nor count as fired), on both paths: the fused Function against dense autograd written out here."""
    from saelab.saes.topk import TopK, TopKEncode

    for sparse in (True, False):
        sae = TopK(5, 8, seed=0, k=6, k_aux=1, aux_coeff=0.5, dead_tokens=1, decoder="unit")
        sae.sparse_path = sparse
        with torch.no_grad():
            sae.b_enc.fill_(-0.8)  # most pre-activations negative
            sae.since_fired[[2, 5]] = 3  # AuxK with k_aux 1 (> 0 counts)
        x = torch.randn(4, 5, generator=torch.Generator().manual_seed(1))
        out = sae(x, train=True, progress=1.0)
        pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
        assert ((pre > 0).sum(1) < 6).all()
        assert float(out.terms[0]) > 0  # AuxK on with k_aux = 1
        with torch.no_grad():
            f = torch.zeros_like(pre)
            top = pre.topk(6, dim=1).indices
            f.scatter_(1, top, pre.gather(1, top).relu())
        torch.testing.assert_close(out.fired, (f > 0).float().sum(0))
        torch.testing.assert_close(out.l0, (f > 0).float().sum(1).mean())
    # the Function alone: only vals in the loss (no AuxK output used), negative selections get no gradient
    W = torch.randn(5, 8, generator=torch.Generator().manual_seed(2), requires_grad=True)
    b = torch.full((8,), -0.8, requires_grad=True)
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(3))
    dead = torch.zeros(8, dtype=torch.bool)
    dead[[1, 6]] = True
    vals, idx, aux_vals, aux_idx = TopKEncode.apply(x, torch.zeros(5), W, b, None, 6, dead, 2, {})
    (vals * torch.arange(1.0, 7.0)).sum().backward()
    W2, b2 = W.detach().clone().requires_grad_(True), b.detach().clone().requires_grad_(True)
    pre = x @ W2 + b2
    sel = pre.gather(1, idx)
    (sel.relu() * torch.arange(1.0, 7.0)).sum().backward()
    torch.testing.assert_close(W.grad, W2.grad)
    torch.testing.assert_close(b.grad, b2.grad)


def test_topk_construction_and_what_it_saves():
    """k = d_sae is allowed; an explicit k_aux is kept; CPU training takes the sparse path unless told otherwise;
    the dead-window counter is a long that is not saved (state dict = the four weights)."""
    from saelab.saes.topk import TopK

    sae = TopK(4, 8, seed=0, k=8, k_aux=1)
    assert sae.k_aux == 1 and TopK(4, 8, seed=0, k=2).k_aux == 2  # d_in // 2 when not given
    assert TopK(6, 8, seed=0, k=2).k_aux == 3
    assert sae.uses_sparse_path(torch.device("cpu")) is True
    assert sae.uses_sparse_path(torch.device("cuda")) is False  # a device object: no GPU needed
    sae.sparse_path = False
    assert sae.uses_sparse_path(torch.device("cpu")) is False
    sae.sparse_path = True
    assert sae.uses_sparse_path(torch.device("cuda")) is True
    assert sae.since_fired.dtype == torch.long
    assert set(sae.state_dict()) == {"W_enc", "W_dec", "b_enc", "b_dec"}
    with pytest.raises(InputError, match=r"sae\.topk\.k: 9 must be <= d_sae \(8\)"):
        TopK(4, 8, seed=0, k=9)


def test_custom_functions_pass_gradcheck_where_they_are_differentiable():
    """torch.autograd.gradcheck (finite differences in float64): JumpReLU's f w.r.t. pre away from θ (θ ≠ 1, ε ≠ 1;
    θ gets a straight-through gradient, so it is held fixed here), and the fused TopK encoder w.r.t. b_dec, W_enc and
    b_enc at points where the top-k selection does not change within the step."""
    from saelab.saes.topk import TopKEncode

    theta = torch.tensor([2.0, 3.0], dtype=torch.float64)
    pre = (theta + torch.tensor([[0.7, -0.9], [-1.1, 0.8], [1.3, 1.6]], dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: JumpReLUFn.apply(p, theta, 0.5), (pre,))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, generator=g, dtype=torch.float64)
    W = torch.randn(4, 6, generator=g, dtype=torch.float64).requires_grad_(True)
    b_enc = (torch.randn(6, generator=g, dtype=torch.float64) * 0.1).requires_grad_(True)
    b_dec = (torch.randn(4, generator=g, dtype=torch.float64) * 0.1).requires_grad_(True)
    pre0 = (x - b_dec) @ W + b_enc
    top = pre0.topk(3, dim=1).values
    assert (top[:, -1] - pre0.topk(4, dim=1).values[:, -1]).min() > 1e-3  # a margin: the selection is stable

    def vals(bd, w, be):
        return TopKEncode.apply(x, bd, w, be, None, 3, None, 0, {})[0].sort(dim=1).values

    assert torch.autograd.gradcheck(vals, (b_dec, W, b_enc))
    # free decoder rows: pre scaled by the row norms n inside the Function, n differentiated too; AuxK's
    # outputs (k_aux 2 among dead latents, one of them also selected) in the checked sum as well
    n = torch.tensor([0.5, 1.5, 0.8, 1.2, 2.0, 0.7], dtype=torch.float64).requires_grad_(True)
    dead = torch.tensor([True, False, True, False, True, False])
    pre_n = ((x - b_dec) @ W + b_enc) * n
    for m in (3, 2):  # both selections with a margin
        assert (pre_n.topk(m, dim=1).values[:, -1] - pre_n.topk(m + 1, dim=1).values[:, -1]).min() > 1e-3
    assert (pre_n[:, dead].topk(2, dim=1).values[:, -1] - pre_n[:, dead].min(1).values).min() > 1e-3
    top_dead = dead[pre_n.topk(3, dim=1).indices]  # a dead latent among a token's top k, with a positive value
    aux_top = pre_n[:, dead].topk(2, dim=1).values
    assert top_dead.any() and (aux_top > 0).any()

    def scaled(bd, w, be, nn):
        vals, _, aux_vals, _ = TopKEncode.apply(x, bd, w, be, nn, 3, dead, 2, {})
        return vals.sort(dim=1).values, aux_vals.sort(dim=1).values

    assert torch.autograd.gradcheck(scaled, (b_dec, W, b_enc, n))


# ---------------------------------------------------------------- initialisation, guards, timing


def test_standard_initialisation_by_hand():
    """Kaiming-uniform as in the reference code: W_enc ~ U(±sqrt(6 / d_sae)), W_dec ~ U(±sqrt(6 / d_in)) drawn
    in that order from the seed's generator, decoder rows then normalised, biases 0."""
    from saelab.saes.base import SAE

    sae = SAE(5, 7, seed=11)
    g = torch.Generator().manual_seed(11)
    W_enc = torch.empty(5, 7).uniform_(-((6 / 7) ** 0.5), (6 / 7) ** 0.5, generator=g)
    W_dec = torch.empty(7, 5).uniform_(-((6 / 5) ** 0.5), (6 / 5) ** 0.5, generator=g)
    torch.testing.assert_close(sae.W_enc, W_enc)
    torch.testing.assert_close(sae.W_dec, W_dec / W_dec.norm(dim=1, keepdim=True))
    assert not sae.b_enc.any() and not sae.b_dec.any()
    with pytest.raises(InputError, match=r"architecture 'standard' takes no parameters \['bogus', 'k'\]"):
        SAE(5, 7, k=3, bogus=1)


def test_free_rows_are_not_clipped_at_grad_clip_zero():
    """grad_clip 0 turns clipping off for free decoder rows (as for April): the gradients stay as they are."""
    sae = _topk("free", True)
    sae.grad_clip = 0.0
    for p in sae.parameters():
        p.grad = torch.full_like(p, 5.0)
    sae.before_step()
    assert all((p.grad == 5.0).all() for p in sae.parameters())


def test_small_variance_and_unbounded_samples():
    """EV on activations whose total centred variance is below 1 (no threshold but 0); evaluate's sample with no
    token caps draws every row for CE too; the export writes into folders that do not exist yet."""
    from saelab.config import EvaluateConfig
    from saelab.eval.evaluate import EvalSample
    from saelab.eval.metrics import reconstruction_metrics
    from saelab.interop.saelens import export_saelens
    from saelab.saes.base import SAE

    x = torch.tensor([[0.1, 0.0], [0.0, 0.1], [0.1, 0.1]])
    m = reconstruction_metrics(x, x * 0.5, torch.ones(3, 1))
    X = x.double()
    assert m["explained_variance"] == pytest.approx(
        1 - float(((X * 0.5) ** 2).sum()) / float(((X - X.mean(0)) ** 2).sum())
    )
    s = EvalSample.draw(6, 4, None, EvaluateConfig(max_tokens=None, ce_max_tokens=None))
    assert sorted(s.ce.tolist()) == list(range(6)) and len(s.rest) == 0
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        export_saelens(SAE(3, 4, seed=0), Path(d) / "a" / "b", "h", "m", 8)
        assert (Path(d) / "a" / "b" / "cfg.json").exists()


def test_batchtopk_keeps_its_threshold_sums_in_float64_and_unsaved():
    """The running threshold sums are float64 (many small minima) and training-only: the saved state is the weights
    and the threshold."""
    sae = _batchtopk()
    assert sae.theta_sum.dtype == sae.theta_n.dtype == torch.float64
    assert set(sae.state_dict()) == {"W_enc", "W_dec", "b_enc", "b_dec", "threshold"}


def test_frequency_statistics_survive_a_large_mean():
    """Activations around 1000 with a small spread: the mean and covariance are summed in float64, so the principal
    direction is still the direction of the spread (float32 sums would lose it to cancellation); 5 directions by
    default; only the covered positions count."""
    from saelab.eval.compare import frequencies
    from saelab.saes.base import SAE
    from tests.conftest import run_fake_pass

    class Offset:
        def run_with_hooks(self, tokens, fwd_hooks):
            t = tokens.double()
            x = 1000.0 + torch.stack([0.01 * torch.sin(t), 0.001 * torch.cos(t), t * 0, t * 0, t * 0, t * 0], -1)
            return run_fake_pass(fwd_hooks, lambda name: x)

    rows = np.arange(200).reshape(20, 10)
    freqs, acts = frequencies(Offset(), [SAE(6, 4, seed=0)], rows, "h", 7, "cpu")
    assert acts["pcs"].shape == (5, 6)
    assert abs(float(acts["pcs"][0, 0])) == pytest.approx(1.0, abs=1e-3)
    t = torch.from_numpy(rows.reshape(-1)).double()
    x0 = (1000.0 + 0.01 * torch.sin(t)).float().double()  # frequencies reads the activations in float32
    assert float(acts["mean"][0]) == pytest.approx(float(x0.mean()), abs=1e-9)


def test_compare_pair_thresholds_are_strict():
    """Cosines of exactly 0.9 and 0.7 (exact in float64) are not "above" them: the shares count cos > 0.9 / > 0.7."""
    from saelab.eval.compare import compare_pair

    a = {"W_dec": torch.eye(2, dtype=torch.float64), "freq": np.array([0.1, 0.1])}
    a["W_enc"] = a["W_dec"].T
    Wb = torch.tensor([[0.9, 0.19**0.5], [0.51**0.5, 0.7]], dtype=torch.float64)  # cos 0.9 with e0, 0.7 with e1
    b = {"W_dec": Wb, "W_enc": Wb.T, "freq": np.array([0.1, 0.1])}
    m, best = compare_pair(a, b, 10, 1e-4)
    assert best.tolist() == [0.9, 0.7]
    assert m["share_best_above_0.9"] == 0.0 and m["share_matched_above_0.9"] == 0.0
    assert m["share_matched_above_0.7"] == 0.5 and m["share_matched_above_0.9_non_ultra_low"] == 0.0


def test_step_estimator_keeps_float64_exact():
    """In float64 the step estimator's θ gradient is −(1/ε)·K·g to float64 precision: the kernel keeps the input's
    dtype, so 1/ε is never rounded to float32 (ε = 0.3: 1/ε differs from its float32 value by 2e-8 relative)."""
    theta = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    pre = torch.tensor([[1.1], [0.95], [2.0]], dtype=torch.float64)
    g = torch.tensor([[1.0], [3.0], [5.0]], dtype=torch.float64)
    (StepFn.apply(pre, theta, 0.3) * g).sum().backward()
    expected = -(1 / 0.3) * (1.0 + 3.0)  # tokens 0 and 1 lie inside the kernel (|u| < 1/2), token 2 outside
    assert theta.grad.dtype == torch.float64 and abs(float(theta.grad[0]) - expected) <= 1e-15 * abs(expected)


def test_greedy_matching_takes_ties_in_order_of_the_lowest_pair():
    """Greedy matching with tied cosines (400 pairs, 3 values): the pairs are taken by cosine, largest first, ties
    by the lowest (row, column), as a Python sort of (−cos, i, j) written out here does it."""
    from saelab.eval.compare import greedy_matching

    cos = np.random.default_rng(0).integers(0, 3, size=(20, 20)) / 4.0
    used_a, used_b, pairs = set(), set(), []
    for _, i, j in sorted((-cos[i, j], i, j) for i in range(20) for j in range(20)):
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
            pairs.append((i, j))
    rows, cols = greedy_matching(cos)
    assert list(zip(rows.tolist(), cols.tolist())) == pairs


@pytest.mark.parametrize("y, above", [(0.7141428428542851, False), (0.7141428428542848, True)])
def test_compare_pair_counts_matches_strictly_above_0_7(y, above):
    """Three matched pairs at cosine exactly 0.7 (a = e_i, b = 0.7·e_i + y·e_{i+3}, y chosen so the float64 cosine
    is 0.7, or one ulp above): "above 0.7" is strict, both in the matched share and in the matched features
    whose frequencies are compared (docs/metrics.md)."""
    from saelab.eval.compare import compare_pair, decoder_cosines

    e = torch.eye(6, dtype=torch.float64)
    Wa, Wb = e[:3], torch.stack([0.7 * e[i] + y * e[i + 3] for i in range(3)])
    cos = decoder_cosines(Wa, Wb).diagonal()
    assert (cos > 0.7).all() if above else (cos == 0.7).all()
    freq = np.array([0.1, 0.2, 0.3])
    m, _ = compare_pair(
        {"W_dec": Wa, "W_enc": Wa.T, "freq": freq}, {"W_dec": Wb, "W_enc": Wb.T, "freq": freq}, 10, 1e-4
    )
    assert m["share_matched_above_0.7"] == (1.0 if above else 0.0)
    assert ("matched_freq_spearman" in m) is above


@pytest.mark.parametrize("decoder", ["unit", "free"])
def test_topk_sparse_step_under_bf16_autocast_is_the_dense_step(decoder):
    """Under bf16 autocast (the encoder's matmul gives bf16 values) the sparse step's loss, AuxK term included
    (half the latents dead), is the dense step's to bf16 rounding, for unit and free decoder rows: the decoder
    reads the values in its own dtype."""
    from saelab.saes.topk import TopK

    torch.manual_seed(0)
    x = torch.randn(32, 8)
    out = {}
    for sparse in (True, False):
        sae = TopK(8, 16, seed=0, k=3, k_aux=4, aux_coeff=0.5, dead_tokens=1, decoder=decoder)
        sae.since_fired[::2] = 5  # latents 0, 2, ..., 14 dead: AuxK on
        sae.sparse_path = sparse
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out[sparse] = sae(x, train=True)
    assert out[True].terms[0] > 0
    torch.testing.assert_close(out[True].loss, out[False].loss, rtol=2e-2, atol=0)
    torch.testing.assert_close(out[True].terms[0], out[False].terms[0], rtol=2e-2, atol=0)


def test_topk_sparse_step_keeps_one_pre_activation_buffer_on_cpu_without_autocast():  # a performance regression test
    """The sparse step's (B, d_sae) pre-activation buffer is allocated once and reused on the CPU in fp32
    (its reason: benchmarks/results/topk_speed_cpu.json), and not used under autocast (its matmul picks the dtype)."""
    from saelab.saes.topk import TopK

    sae = TopK(8, 16, seed=0, k=3)
    x = torch.randn(32, 8)
    sae(x, train=True)
    buf = sae._workspace["pre"]
    sae(x, train=True)
    assert sae._workspace["pre"] is buf and buf.shape == (32, 16)
    sae._workspace.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sae(x, train=True)
    assert "pre" not in sae._workspace


@pytest.mark.parametrize("arch", ["standard", "standard_april", "topk", "batchtopk", "jumprelu"])
def test_train_forward_returns_the_reconstruction_its_mse_is_of(arch):
    """TrainOutput.x_hat (what a functional loss splices into the LM) is the reconstruction of the training code:
    its MSE by hand is the returned mse, and it is the inference decoder applied to the training activations, written
    out for BatchTopK (the batch's top k·B pre-activations; the others train on their inference activations)."""
    from saelab.registry import REGISTRY

    kw = {"topk": {"k": 3}, "batchtopk": {"k": 3}, "jumprelu": {"threshold_init": 0.05}}.get(arch, {})
    sae = REGISTRY[arch](6, 10, seed=0, **kw)
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        sae.b_enc.add_(0.3)  # ReLU / JumpReLU latents that fire
        out = sae(x, train=True, progress=0.0)
        if arch == "batchtopk":
            pre = sae.pre_acts(x)
            flat = pre.relu().flatten()
            keep = torch.zeros_like(flat).scatter_(0, flat.topk(3 * 8).indices, 1.0).view_as(pre)
            f = pre.relu() * keep
        else:
            f = sae.encode(x)
        x_hat = sae.decode(f)  # the inference decoder (free decoders divide by the row norms there)
    assert out.x_hat is not None and (f > 0).any()
    torch.testing.assert_close(out.x_hat, x_hat, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.mse, ((x_hat - x) ** 2).sum(-1).mean(), rtol=1e-5, atol=1e-5)


def test_training_share_by_hand():
    """The compute equivalent's share (docs/metrics.md, "Compute equivalent") on a hand curve: linear between
    points in tokens, on the running minimum (a bump in the curve is not a second crossing), None outside it; both
    ends included, two points enough, a curve that does not start at 0 tokens read against its last point."""
    from saelab.eval.metrics import training_share

    tokens, losses = [0, 100, 200, 300, 400], [8.0, 4.0, 4.5, 3.5, 3.0]
    assert training_share(3.0, tokens, losses) == 1.0  # the last point's loss: the whole run
    assert training_share(3.25, tokens, losses) == pytest.approx(350 / 400)
    assert training_share(3.75, tokens, losses) == pytest.approx(250 / 400)  # 4.5 at 200 counts as 4.0 reached
    assert training_share(6.0, tokens, losses) == pytest.approx(50 / 400)
    assert training_share(8.0, tokens, losses) == 0.0  # the first point's loss
    assert training_share(2.9, tokens, losses) is None and training_share(8.1, tokens, losses) is None
    assert training_share(float("nan"), tokens, losses) is None
    assert training_share(6.0, [100, 300], [6.0, 4.0]) == pytest.approx(100 / 300)  # at the first point
    assert training_share(6.0, [100, 200, 400], [6.0, 5.0, 4.0]) == pytest.approx(100 / 400)  # of the last point's
    assert training_share(5.0, [100, 300], [6.0, 4.0]) == pytest.approx(200 / 300)
    assert training_share(5.0, [0, 1], [6.0, 4.0]) == pytest.approx(0.5)  # a step of one token is increasing
    for bad in ([0], [0, 0], [0, 200, 100]):
        with pytest.raises(
            ValueError, match="^training_share: need at least two points with strictly increasing tokens$"
        ):
            training_share(3.0, bad, [1.0] * len(bad))
