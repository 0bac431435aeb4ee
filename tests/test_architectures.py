"""Every registered architecture: its maths, its sparse TopK path, resampling, folding, resume."""

import math

import pytest
import torch

from saelab.config import SAEConfig
from saelab.errors import InputError
from saelab.registry import REGISTRY, build
from saelab.saes import BUILTINS as ARCHITECTURES
from saelab.saes.base import SAE, l1_loss, mse_loss
from saelab.saes.batchtopk import BatchTopK
from saelab.saes.jumprelu import JumpReLU, JumpReLUFn, StepFn
from saelab.saes.standard_april import StandardApril
from saelab.saes.topk import TopK
from saelab.training.resample import resample_
from saelab.training.trainer import Trainer, train_sae

D, W = 16, 64


def _batches(d=D, b=64, seed=0):
    """Sparse synthetic data: each token is a sum of a few of 32 fixed directions, plus an offset."""
    g = torch.Generator().manual_seed(seed)
    dirs, offset = torch.randn(32, d, generator=g), torch.randn(d, generator=g)
    while True:
        codes = (torch.rand(b, 32, generator=g) < 0.1).float() * torch.rand(b, 32, generator=g) * 3
        yield codes @ dirs + offset


ARCH_PARAMS = {
    "topk": {"k": 4, "dead_tokens": 64 * 10},
    "batchtopk": {"k": 4, "dead_tokens": 64 * 10},
    "jumprelu": {"l0_coeff": 0.05, "bandwidth": 0.05, "threshold_init": 0.05},
}


def _cfg(arch="standard", **kw):
    base = dict(
        architecture=arch,
        expansion=4,
        l1_coeff=0.05,
        lr=3e-3,
        batch_size=64,
        n_tokens=64 * 200,
        resample_every=64 * 50,
        resample_window=64 * 50,
        lr_warmup_tokens=0,
        log_every=10,
        checkpoint_every=0,
    )
    if arch in ARCH_PARAMS:
        base[arch] = ARCH_PARAMS[arch]
    return SAEConfig(**(base | kw))


@torch.no_grad()
def _uneven_norms_(sae):
    """Decoder rows of uneven norms (0.5 to 1.5), so free-decoder rescaling is exercised."""
    sae.W_dec.mul_(torch.rand(sae.d_sae, 1, generator=torch.Generator().manual_seed(3)) + 0.5)
    return sae


def test_registry_holds_the_builtin_architectures_in_section_order():
    """Importing saelab.saes registers the five built-ins, in the order their sections are saved."""
    assert ARCHITECTURES == ("standard", "standard_april", "topk", "batchtopk", "jumprelu")
    assert set(ARCHITECTURES) <= set(REGISTRY)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_learns_and_round_trips(arch, tmp_path):
    """Training lowers the MSE; save/load rebuilds the same architecture with the same outputs."""
    cfg = _cfg(arch)
    sae = build(cfg, D, seed=0)
    rows = []
    train_sae(sae, _batches(), cfg, torch.device("cpu"), lambda s, r: rows.append(r))
    assert rows[-1]["mse"] < 0.5 * rows[0]["mse"], (rows[0], rows[-1])
    assert set(sae.TERMS) <= set(rows[-1])
    sae.save(tmp_path, {"hook": "h"})
    back, meta = SAE.load(tmp_path)
    assert type(back) is type(sae) and meta["architecture"] == arch and back.arch_params() == sae.arch_params()
    x = next(_batches(seed=5))
    torch.testing.assert_close(back(x).x_hat, sae(x).x_hat)
    f = sae.encode(x)
    assert (f >= 0).all() and torch.equal(sae(x).f, f)


def test_trainer_refuses_an_sae_other_than_its_params():
    with pytest.raises(InputError, match=r"saelab\.registry\.build"):
        Trainer(SAE(D, W, l1_coeff=1.0), _cfg("standard", l1_coeff=0.5), torch.device("cpu"))
    with pytest.raises(InputError, match="is not the one sae params describe"):
        Trainer(build(_cfg("topk"), D), _cfg("batchtopk"), torch.device("cpu"))


def test_topk_k_larger_than_width_fails_clearly():
    with pytest.raises(InputError, match=r"sae.topk.k: 100 must be <= d_sae \(64\)"):
        build(_cfg("topk", topk={"k": 100}), D)


# ---------------------------------------------------------------- topk


def _dense_topk_reference(sae: TopK, x: torch.Tensor, dead: torch.Tensor | None):
    """The same loss with dense autograd: scatter the top-k into (B, d_sae), decode by matmul."""
    n = sae.W_dec.norm(dim=-1) if sae.decoder == "free" else torch.ones(sae.d_sae)
    rows = sae.W_dec / n[:, None] if sae.decoder == "free" else sae.W_dec
    pre = ((x - sae.b_dec) @ sae.W_enc + sae.b_enc) * n
    v, i = pre.topk(sae.k, dim=-1)
    f = torch.zeros_like(pre).scatter(-1, i, v.relu())
    x_hat = f @ rows + sae.b_dec
    loss = mse_loss(x_hat, x)
    if dead is not None:
        masked = pre.masked_fill(~dead, float("-inf"))
        va, ia = masked.topk(min(sae.k_aux, int(dead.sum())), dim=-1)
        aux = torch.zeros_like(pre).scatter(-1, ia, va.relu())
        loss = loss + sae.aux_coeff * mse_loss(aux @ rows, (x - x_hat).detach())
    return loss


@pytest.mark.parametrize("decoder", ["unit", "free"])
@pytest.mark.parametrize("with_dead", [False, True])
@pytest.mark.parametrize("sparse_path", [True, False])
def test_sparse_topk_gradients_equal_dense_autograd(with_dead, sparse_path, decoder):
    """Both training paths (TopKEncode + embedding_bag; dense) give the loss and every gradient of the
    dense reference formulation, AuxK included; with free decoder rows, through the norms' rescaling."""
    sae = TopK(D, W, seed=0, k=5, k_aux=6, aux_coeff=0.5, dead_tokens=100, decoder=decoder)
    sae.sparse_path = sparse_path
    with torch.no_grad():
        if decoder == "free":
            _uneven_norms_(sae)
        sae.b_dec.normal_()
        sae.b_enc.normal_(0, 0.1)
        if with_dead:
            sae.since_fired[::3] = 1000  # every third latent dead
    x = next(_batches(seed=1))
    dead = sae.dead() if with_dead else None
    if with_dead:  # some dead latents are also among the top k: the sparse gradient holds both entries
        assert dead[sae.pre_acts(x).topk(sae.k, dim=-1).indices].any()
    out = sae(x, train=True)
    out.loss.backward()
    sparse = {n: p.grad.clone() for n, p in sae.named_parameters()}
    sae.zero_grad()
    ref = _dense_topk_reference(sae, x, dead)
    ref.backward()
    torch.testing.assert_close(out.loss, ref)
    for n, p in sae.named_parameters():
        torch.testing.assert_close(sparse[n], p.grad, atol=1e-5, rtol=1e-4, msg=n)
    assert (out.terms[0] > 0) == with_dead


@pytest.mark.parametrize("decoder", ["unit", "free"])
def test_sparse_and_dense_topk_train_alike(decoder):
    """Twenty optimiser steps on each path, AuxK running in most of them: the weights stay together,
    and the sparse path's reused pre-activation buffer (architectures._workspace) is released at the
    end. A step that read a stale buffer would drift apart here."""
    cfg = _cfg("topk", topk={"k": 4, "dead_tokens": 64 * 4, "decoder": decoder})
    trained, auxk_steps = [], []
    for sparse in (True, False):
        sae = build(cfg, D, seed=0)
        sae.sparse_path = sparse
        rows = []
        train_sae(
            sae,
            _batches(),
            cfg.model_copy(update={"n_tokens": 64 * 20, "log_every": 1}),
            torch.device("cpu"),
            lambda step, row, rows=rows: rows.append(row),
        )
        trained.append(sae)
        auxk_steps.append(sum(r["auxk"] > 0 for r in rows))
    assert auxk_steps[0] >= 5 and auxk_steps[0] == auxk_steps[1], auxk_steps
    assert trained[0]._workspace == {}
    for (name, a), b in zip(trained[0].named_parameters(), trained[1].parameters()):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3, msg=name)


def test_sparse_topk_backward_after_a_later_forward():
    """Two more forwards before the first backward (the buffer is overwritten by a batch of the same
    size, then replaced for one of another size): the first loss's gradients are still the dense
    reference's, so backward reads nothing from the reused buffer."""
    sae = TopK(D, W, seed=0, k=5, k_aux=6, aux_coeff=0.5, dead_tokens=100)
    sae.sparse_path = True
    with torch.no_grad():
        _uneven_norms_(sae)
        sae.since_fired[::3] = 1000
    xa, xb, xc = next(_batches(seed=1)), next(_batches(seed=2)), next(_batches(b=48, seed=3))
    out_a = sae(xa, train=True)
    sae(xb, train=True)
    sae(xc, train=True)
    out_a.loss.backward()
    sparse = {n: p.grad.clone() for n, p in sae.named_parameters()}
    sae.zero_grad()
    _dense_topk_reference(sae, xa, sae.dead()).backward()
    for n, p in sae.named_parameters():
        torch.testing.assert_close(sparse[n], p.grad, atol=1e-5, rtol=1e-4, msg=n)


def test_sparse_topk_free_decoder_gradients_are_deterministic():
    """The same step twice gives bit-identical gradients (DVC's byte-for-byte reruns depend on it). With
    32k+ selected entries a gather's backward through index_put_(accumulate=True) varied from run to run
    on CPU; this batch is large enough to have caught that."""
    sae = TopK(D, W, seed=0, k=16, decoder="free")
    sae.sparse_path = True
    _uneven_norms_(sae)
    x = next(_batches(b=4096, seed=1))
    grads = []
    for _ in range(3):
        sae.zero_grad()
        sae(x, train=True).loss.backward()
        grads.append({n: p.grad.clone() for n, p in sae.named_parameters()})
    for g in grads[1:]:
        for n in g:
            assert torch.equal(g[n], grads[0][n]), n


def test_topk_inference_keeps_exactly_k_and_counts_dead_windows():
    sae = TopK(D, W, seed=0, k=3, dead_tokens=128)
    with torch.no_grad():
        sae.b_enc.fill_(10.0)  # every pre-activation positive: exactly k survive the ReLU
    f = sae.encode(torch.randn(10, D))
    assert ((f > 0).sum(-1) == 3).all()
    fired = torch.zeros(W)
    fired[:5] = 1
    sae.observe_(fired, 64)
    sae.observe_(fired, 64)
    assert not sae.dead()[:5].any() and sae.dead()[5:].all()


def test_batchtopk_selects_k_times_batch_and_estimates_a_threshold():
    """Training keeps exactly k·B activations per batch; at the end the JumpReLU threshold is the mean
    smallest selected activation of the last batches, and inference uses it."""
    cfg = _cfg("batchtopk", batchtopk={"k": 4, "threshold_frac": 0.5})
    sae = build(cfg, D, seed=0)
    x = next(_batches())
    pre = sae.pre_acts(x)
    assert int((sae.batch_topk(pre) > 0).sum()) == 4 * len(x)
    assert float(sae.threshold.max()) == 0.0
    train_sae(sae, _batches(), cfg, torch.device("cpu"))
    theta = float(sae.threshold[0])
    assert theta > 0 and torch.all(sae.threshold == theta)
    assert theta == pytest.approx(float(sae.theta_sum / sae.theta_n))
    xs = next(_batches(seed=3))
    pre = sae.pre_acts(xs)
    torch.testing.assert_close(sae.encode(xs), pre * (pre > theta))
    assert 1 < float((sae.encode(xs) > 0).sum(-1).float().mean()) < 4 * 3  # near k: one global threshold


# ---------------------------------------------------------------- jumprelu


def test_jumprelu_straight_through_gradients_by_hand():
    """∂/∂θ of JumpReLU is -(θ/ε)·K((pre-θ)/ε), of the step -(1/ε)·K(...); ∂/∂pre passes H(pre-θ)."""
    pre = torch.tensor([[0.5, 1.02, 2.0], [0.99, 0.0, 3.0]], requires_grad=True)
    theta = torch.tensor([1.0, 1.0, 1.0], requires_grad=True)
    eps = 0.1
    out = JumpReLUFn.apply(pre, theta, eps)
    assert torch.equal(out.detach(), torch.tensor([[0.0, 1.02, 2.0], [0.0, 0.0, 3.0]]))
    out.sum().backward()
    # inside the window |pre - θ| < ε/2: (0,1) 1.02 and (1,0) 0.99 -> column 1 and column 0 each once
    assert torch.allclose(theta.grad, torch.tensor([-10.0, -10.0, 0.0]))
    assert torch.equal(pre.grad, torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]]))
    theta.grad = None
    StepFn.apply(pre, theta, eps).sum().backward()
    assert torch.allclose(theta.grad, torch.tensor([-10.0, -10.0, 0.0]))


@pytest.mark.parametrize("sparsity", ["step", "tanh"])
def test_jumprelu_penalty_forms(sparsity):
    sae = JumpReLU(D, W, seed=0, l0_coeff=0.3, bandwidth=0.05, threshold_init=0.05, sparsity=sparsity, tanh_scale=2.0)
    x = next(_batches())
    out = sae(x, train=True)
    f = sae.encode(x)
    want = (
        (f > 0).float().sum(-1).mean()
        if sparsity == "step"
        else torch.tanh(2.0 * f * sae.W_dec.norm(dim=-1)).sum(-1).mean()
    )
    torch.testing.assert_close(out.terms[0], want)
    torch.testing.assert_close(out.loss, out.mse + 0.3 * want)


# ---------------------------------------------------------------- standard_april


def test_april_initialisation_and_weighted_l1_with_warmup():
    sae = StandardApril(D, W, seed=0, l1_coeff=2.0, dec_init_norm=0.1, l1_warmup_frac=0.5)
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.full((W,), 0.1))
    assert torch.equal(sae.W_enc, sae.W_dec.T)
    x = next(_batches())
    f = sae.encode(x)
    l1w = (f * sae.W_dec.norm(dim=-1)).sum(-1).mean()
    out_half, out_full = sae(x, train=True, progress=0.25), sae(x, train=True, progress=0.9)
    torch.testing.assert_close(out_half.loss, out_half.mse + 2.0 * 0.5 * l1w)
    torch.testing.assert_close(out_full.loss, out_full.mse + 2.0 * l1w)
    assert not torch.allclose(l1w, l1_loss(f))


def test_april_leaves_decoder_norms_free():
    cfg = _cfg("standard_april", l1_coeff=0.5)
    sae = build(cfg, D, seed=0)
    train_sae(sae, _batches(), cfg, torch.device("cpu"))
    norms = sae.W_dec.norm(dim=-1)
    assert norms.std() > 1e-3 and not torch.allclose(norms, torch.ones(W))


# ---------------------------------------------------------------- free decoder rows (SAELens's recipe)


FREE = ["topk", "batchtopk", "jumprelu"]


@pytest.mark.parametrize("arch", FREE)
def test_free_decoder_initialises_small_trains_free_and_saves_unit_rows(arch):
    """decoder: free starts at dec_init_norm with W_enc = W_dec^T, lets the norms move during training,
    and folds them away at the end: the saved rows are unit and the function is the trained one."""
    cfg = _cfg(arch, **{arch: {**ARCH_PARAMS[arch], "decoder": "free", "dec_init_norm": 0.2}})
    sae = build(cfg, D, seed=0)
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.full((W,), 0.2))
    torch.testing.assert_close(sae.W_enc, sae.W_dec.T)
    seen = {}
    st = Trainer(sae, cfg, torch.device("cpu"))
    orig = sae.finish_training_

    def spy(average=lambda t: t):  # the state just before the fold
        norms = sae.W_dec.norm(dim=-1).detach().clone()
        x = next(_batches(seed=4))
        seen.update(norms=norms, x=x, x_hat=sae(x).x_hat.detach().clone())
        orig(average)

    sae.finish_training_ = spy
    st.run(lambda skip: _batches())
    assert seen["norms"].std() > 1e-3 and not torch.allclose(seen["norms"], torch.full((W,), 0.2))
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(W))
    if arch != "batchtopk":  # BatchTopK's inference switches to θ at finish: its fold is tested below
        torch.testing.assert_close(sae(seen["x"]).x_hat, seen["x_hat"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", FREE)
def test_folding_decoder_norms_keeps_the_function(arch):
    """fold_decoder_norms_: unit rows, same reconstruction and the same active set (θ scales with f)."""
    sae = build(_cfg(arch, **{arch: {**ARCH_PARAMS[arch], "decoder": "free"}}), D, seed=0)
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(W, 1, generator=torch.Generator().manual_seed(1)) * 3 + 0.1)
        sae.b_enc.normal_(0, 0.1)
        if isinstance(sae, BatchTopK):
            sae.threshold.fill_(0.05)
        if isinstance(sae, JumpReLU):
            sae.threshold.uniform_(0.0, 0.2)
    x = next(_batches(seed=2))
    want = sae(x)
    sae.fold_decoder_norms_()
    got = sae(x)
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(W))
    torch.testing.assert_close(got.x_hat, want.x_hat, atol=1e-4, rtol=1e-4)
    assert torch.equal(got.f > 0, want.f > 0)


@pytest.mark.parametrize("decoder", ["unit", "free"])
def test_free_decoder_clips_gradients_and_unit_removes_the_parallel_part(decoder):
    sae = TopK(D, W, seed=0, k=4, decoder=decoder, grad_clip=0.5)
    sae(next(_batches()) * 100, train=True).loss.backward()
    g = {n: p.grad.clone() for n, p in sae.named_parameters()}
    before = torch.cat([v.flatten() for v in g.values()]).norm()
    sae.before_step()
    after = torch.cat([p.grad.flatten() for p in sae.parameters()]).norm()
    along = (sae.W_dec.grad * sae.W_dec).sum(-1).abs().max()
    if decoder == "free":
        assert before > 0.5 and after == pytest.approx(0.5, rel=1e-4)
    else:
        assert after > 0.5 and along < 1e-4 * sae.W_dec.grad.abs().max()


def test_decoder_choice_is_validated():
    with pytest.raises(ValueError, match="decoder"):
        _cfg("topk", topk={"k": 4, "decoder": "tied"})
    with pytest.raises(InputError, match="sae.jumprelu.decoder: 'tied'"):
        JumpReLU(D, W, decoder="tied")


@pytest.mark.parametrize("arch", FREE)
def test_anthropic_resampling_with_free_rows_starts_at_a_fifth_of_the_alive_gain(arch):
    """A resampled feature's decoder row takes the alive rows' mean norm, so its effective encoder gain
    (W_enc column x row norm where TopK rescales by it, else W_enc column) is 0.2 x the alive mean."""
    sae = build(_cfg(arch, **{arch: {**ARCH_PARAMS[arch], "decoder": "free"}}), D, seed=0)
    idx = torch.tensor([1, 5])
    dirs = torch.nn.functional.normalize(torch.randn(2, D), dim=-1)
    alive = torch.ones(W, dtype=torch.bool)
    alive[idx] = False
    enc_norm = sae.W_enc[:, alive].norm(dim=0).mean()
    sae.resample_rows_(idx, dirs, enc_norm)
    n = sae.W_dec.norm(dim=-1)
    torch.testing.assert_close(n[idx], torch.full((2,), float(n[alive].mean())))
    torch.testing.assert_close(sae.W_dec[idx] / n[idx, None], dirs)
    scale = n if sae.rescale else torch.ones(W)
    gain = sae.W_enc.norm(dim=0) * scale
    torch.testing.assert_close(gain[idx], torch.full((2,), 0.2 * float(gain[alive].mean())), rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- shared machinery


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_folding_an_input_scale_reads_raw_activations(arch):
    """An SAE trained on s·x, folded with s, maps raw x to the scaled SAE's output / s."""
    sae = build(_cfg(arch), D, seed=0)
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_(0, 0.1)
        if isinstance(sae, BatchTopK):
            sae.threshold.fill_(0.3)
    x, s = next(_batches()), 2.5
    want_hat, want_f = sae(s * x)
    sae.fold_input_scale_(s)
    x_hat, f = sae(x)
    torch.testing.assert_close(x_hat, want_hat / s, atol=1e-4, rtol=1e-4)
    assert torch.equal(f > 0, want_f > 0)


def test_mean_norm_training_saves_a_raw_space_sae():
    """normalize_activations: mean_norm trains on s·x with E‖s·x‖² = d_in and folds s back."""
    cfg = _cfg("standard", normalize_activations="mean_norm")
    sae = build(cfg, D, seed=0)
    data = (x * 10 for x in _batches())
    st = Trainer(sae, cfg, torch.device("cpu")).run(lambda skip: data)
    first = next(_batches()) * 10
    assert st.input_scale == pytest.approx(math.sqrt(D / float(first.pow(2).sum(-1).mean())), rel=1e-5)
    x = next(_batches(seed=9)) * 10
    ev = 1 - (sae(x).x_hat - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert ev > 0.5  # it reconstructs raw activations, not scaled ones


@pytest.mark.parametrize("arch", ["standard", "jumprelu", "standard_april"])
def test_reinit_resampling_redraws_dead_features_only(arch):
    """resample: reinit gives dead features a fresh draw of the initialisation and zeroes their moments."""
    sae = build(_cfg(arch), D, seed=0)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    sae(next(_batches()), train=True).loss.backward()
    opt.step()
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.01)  # move away from any initial value
    before = {n: p.detach().clone() for n, p in sae.named_parameters()}
    dead = torch.zeros(W, dtype=torch.bool)
    dead[[3, 7]] = True
    assert resample_(sae, opt, dead, next(_batches()), torch.Generator().manual_seed(1), mode="reinit") == 2
    fresh = build(_cfg(arch), D, seed=None)
    fresh.init_weights_(torch.Generator().manual_seed(1))
    for name, axis in sae.FEATURE_AXIS.items():
        p, b, fr = getattr(sae, name), before[name], getattr(fresh, name)
        torch.testing.assert_close(
            p.index_select(axis, torch.tensor([3, 7])), fr.index_select(axis, torch.tensor([3, 7]))
        )
        keep = torch.tensor([i for i in range(W) if i not in (3, 7)])
        assert torch.equal(p.index_select(axis, keep), b.index_select(axis, keep))
        assert (opt.state[p]["exp_avg"].index_select(axis, torch.tensor([3, 7])) == 0).all()


def test_auto_resampling_is_the_seed_recipe_for_standard_only():
    assert _cfg("standard").resample_mode() == "anthropic"
    assert {_cfg(a).resample_mode() for a in ARCHITECTURES if a != "standard"} == {"none"}
    assert _cfg("topk", resample="reinit").resample_mode() == "reinit"


@pytest.mark.parametrize("decoder", ["unit", "free"])
@pytest.mark.parametrize("arch", ["topk", "batchtopk", "jumprelu"])
def test_resume_from_a_snapshot_is_exact(arch, decoder):
    """Checkpoint mid-run (training-only buffers included: TopK's dead counters, BatchTopK's threshold
    sums), restore into a fresh trainer, finish: identical weights to the uninterrupted run."""
    cfg = _cfg(arch, resample="anthropic", resample_threshold=0.05, **{arch: {**ARCH_PARAMS[arch], "decoder": decoder}})

    def make():
        return Trainer(build(cfg, D, seed=0), cfg, torch.device("cpu"))

    full = make()
    full.run(lambda skip: _skipping(skip))
    part = make()
    with pytest.raises(KeyboardInterrupt):  # interrupted after 190 steps: BatchTopK's θ sums began at 180
        part.run(lambda skip: _skipping(skip, stop_after=190))
    snap = part.snapshot()
    resumed = make()
    resumed.restore(*snap)
    resumed.run(lambda skip: _skipping(skip))
    for (n, a), b in zip(full.sae.state_dict().items(), resumed.sae.state_dict().values()):
        assert torch.equal(a, b), n
    assert resumed.state.n_resampled == full.state.n_resampled


def _skipping(skip_tokens: int, b: int = 64, stop_after: int | None = None):
    it = _batches(b=b)
    for _ in range(skip_tokens // b):
        next(it)
    for i, x in enumerate(it):
        if i == stop_after:
            raise KeyboardInterrupt
        yield x


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_per_feature_parameter_is_resampled(arch):
    """FEATURE_AXIS names every parameter with a per-feature axis, so resampling (and its Adam-moment
    zeroing) touches all of a dead feature's state, thresholds included."""
    sae = build(_cfg(arch), D, seed=0)
    per_feature = {n for n, p in sae.named_parameters() if W in p.shape}
    assert per_feature == set(sae.FEATURE_AXIS)
    for n, axis in sae.FEATURE_AXIS.items():
        assert getattr(sae, n).shape[axis] == W


def test_anthropic_resampling_resets_jumprelu_thresholds():
    sae = build(_cfg("jumprelu"), D, seed=0)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    sae(next(_batches()), train=True).loss.backward()
    opt.step()
    with torch.no_grad():
        sae.threshold.fill_(0.7)
    dead = torch.zeros(W, dtype=torch.bool)
    dead[[2, 5]] = True
    resample_(sae, opt, dead, next(_batches()), torch.Generator().manual_seed(0))
    assert torch.all(sae.threshold[[2, 5]] == sae.threshold_init) and torch.all(sae.threshold[~dead] == 0.7)
    assert (opt.state[sae.threshold]["exp_avg"][[2, 5]] == 0).all()


def test_april_clips_the_gradient_norm():
    sae = StandardApril(D, W, seed=0, l1_coeff=1.0, grad_clip=0.5)
    (sae(next(_batches()) * 100, train=True).loss).backward()
    before = torch.cat([p.grad.flatten() for p in sae.parameters()]).norm()
    sae.before_step()
    after = torch.cat([p.grad.flatten() for p in sae.parameters()]).norm()
    assert before > 0.5 and after == pytest.approx(0.5, rel=1e-4)


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "jumprelu"])
def test_data_dependent_init_sets_b_dec_to_the_first_batch_mean(arch):
    extra = {"batchtopk": {"k": 4, "threshold_frac": 1.0}} if arch == "batchtopk" else {}
    cfg = _cfg(arch, lr=1e-12, n_tokens=64, **extra)  # one step that moves nothing
    sae = build(cfg, D, seed=0)
    train_sae(sae, _batches(), cfg, torch.device("cpu"))
    torch.testing.assert_close(sae.b_dec.detach(), next(_batches()).mean(0), atol=1e-5, rtol=1e-5)


def test_jumprelu_b_dec_init_zero_leaves_b_dec_at_zero():
    cfg = _cfg("jumprelu", lr=1e-12, n_tokens=64, jumprelu={**ARCH_PARAMS["jumprelu"], "b_dec_init": "zero"})
    sae = build(cfg, D, seed=0)
    train_sae(sae, _batches(), cfg, torch.device("cpu"))
    assert float(sae.b_dec.detach().abs().max()) < 1e-6
    with pytest.raises(ValueError, match="b_dec_init"):
        _cfg("jumprelu", jumprelu={"b_dec_init": "median"})


def test_k_anneal_schedule_falls_geometrically_to_k():
    sae = TopK(D, W, seed=0, k=4, k_anneal_start=32, k_anneal_frac=0.5)
    ks = [sae.k_at(p / 100) for p in range(101)]
    assert ks[0] == 32 and ks[25] == round(32**0.5 * 4**0.5) == 11  # half-way through the schedule: geometric mean
    assert all(a >= b for a, b in zip(ks, ks[1:])) and set(ks[50:]) == {4}
    assert {TopK(D, W, seed=0, k=4).k_at(p / 10) for p in range(11)} == {4}  # off by default
    with pytest.raises(InputError, match="k_anneal_start"):
        TopK(D, W, seed=0, k=8, k_anneal_start=4)
    with pytest.raises(InputError, match="d_sae"):
        TopK(D, W, seed=0, k=4, k_anneal_start=W + 1)  # above d_sae: only the class knows d_sae
    for cls in (TopK, BatchTopK):
        with pytest.raises(InputError, match="without k_anneal_start"):
            cls(D, W, seed=0, k=4, k_anneal_frac=0.5)
        with pytest.raises(InputError, match=r"in \(0, 1\)"):  # the params' range, for SAEs built without params
            cls(D, W, seed=0, k=4, k_anneal_start=16, k_anneal_frac=1.5)


@pytest.mark.parametrize("sparse_path", [True, False])
@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_k_anneal_trains_with_the_scheduled_k_and_infers_with_k(arch, sparse_path):
    """The training forward selects k_at(progress) latents per token (TopK: exactly; BatchTopK: on average);
    the saved SAE infers with k. Fails if train_forward ignores the schedule."""
    extra = {"threshold_frac": 0.1} if arch == "batchtopk" else {}
    cfg = _cfg(arch, **{arch: {"k": 4, "k_anneal_start": 24, "k_anneal_frac": 0.5, **extra}})
    sae = build(cfg, D, seed=0)
    sae.sparse_path = sparse_path
    with torch.no_grad():
        sae.b_enc.fill_(10.0)  # every pre-activation positive: the selection alone sets L0
    x = next(_batches())
    assert float(sae(x, train=True, progress=0.0).l0) == pytest.approx(24)
    assert float(sae(x, train=True, progress=0.25).l0) == pytest.approx(sae.k_at(0.25)) and sae.k_at(0.25) == 10
    assert float(sae(x, train=True, progress=0.6).l0) == pytest.approx(4)
    sae = build(cfg, D, seed=0)
    train_sae(sae, _batches(), cfg, torch.device("cpu"))
    if arch == "topk":
        assert ((sae.encode(next(_batches(seed=3))) > 0).sum(-1) <= 4).all()


def test_batchtopk_anneal_must_end_before_the_threshold_window():
    with pytest.raises(ValueError, match="k_anneal_frac"):
        _cfg("batchtopk", batchtopk={"k": 4, "k_anneal_start": 16, "k_anneal_frac": 0.95, "threshold_frac": 0.1})
    with pytest.raises(InputError, match="k_anneal_frac"):
        BatchTopK(D, W, seed=0, k=4, k_anneal_start=16, k_anneal_frac=0.95, threshold_frac=0.1)


def test_batchtopk_without_a_threshold_step_is_refused_up_front():
    with pytest.raises(ValueError, match="threshold_frac"):
        _cfg("batchtopk", n_tokens=64 * 5, batchtopk={"k": 4, "threshold_frac": 0.1})


def test_bf16_autocast_trains_the_sparse_topk_path():
    cfg = _cfg("topk", dtype="bf16", n_tokens=64 * 20)
    sae = build(cfg, D, seed=0)
    rows = []
    train_sae(sae, _batches(), cfg, torch.device("cpu"), lambda s, r: rows.append(r))
    assert all(p.dtype == torch.float32 for p in sae.parameters()) and rows[-1]["mse"] < rows[0]["mse"]


def test_log_theta_jumprelu_trains_resamples_every_feature_state_and_resumes(tmp_path):
    """``theta_param: log`` through the trainer: MSE falls, reinit resampling and its Adam-moment zeroing reach
    log θ (FEATURE_AXIS names it), a snapshot resumes exactly, and the saved SAE loads with the same θ."""
    log = {**ARCH_PARAMS["jumprelu"], "theta_param": "log"}
    cfg = _cfg("jumprelu", jumprelu=log, resample="reinit", resample_threshold=0.4)  # some fire less often
    sae = build(cfg, D, seed=0)
    assert {n for n, p in sae.named_parameters() if W in p.shape} == set(sae.FEATURE_AXIS) >= {"log_threshold"}

    def make():
        return Trainer(build(cfg, D, seed=0), cfg, torch.device("cpu"))

    full = make()
    rows = []
    full.run(lambda skip: _skipping(skip), log=lambda s, r: rows.append(r))
    assert rows[-1]["mse"] < 0.5 * rows[0]["mse"], (rows[0], rows[-1])
    part = make()
    with pytest.raises(KeyboardInterrupt):
        part.run(lambda skip: _skipping(skip, stop_after=120))
    resumed = make()
    resumed.restore(*part.snapshot())
    resumed.run(lambda skip: _skipping(skip))
    for (n, a), b in zip(full.sae.state_dict().items(), resumed.sae.state_dict().values()):
        assert torch.equal(a, b), n
    assert full.state.n_resampled > 0  # the reinit path ran on log θ
    assert (full.sae.theta() > 0).all()
    full.sae.save(tmp_path, {"hook": "h"})
    back, _ = SAE.load(tmp_path)
    torch.testing.assert_close(back.theta(), full.sae.theta())
    # one reinit resample by hand: log θ[idx] = ln(threshold_init) exactly, Adam's moments of that slice zeroed
    from saelab.training.resample import resample_

    sae = full.sae
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    sae(torch.randn(16, D), train=True).loss.backward()
    opt.step()
    dead = torch.zeros(W, dtype=torch.bool)
    dead[[1, 5]] = True
    # prefill so that neither "set to ln(threshold_init)" nor "zeroed" can hold by accident
    moments = opt.state[sae.log_threshold]
    with torch.no_grad():
        sae.log_threshold.zero_()
        for key in ("exp_avg", "exp_avg_sq"):
            moments[key].fill_(1.0)
    assert resample_(sae, opt, dead, torch.randn(16, D), torch.Generator().manual_seed(0), mode="reinit") == 2
    assert torch.equal(sae.log_threshold.detach()[dead], torch.full((2,), math.log(log["threshold_init"])))
    assert (sae.log_threshold.detach()[~dead] == 0).all()
    for key in ("exp_avg", "exp_avg_sq"):
        assert (moments[key][dead] == 0).all() and (moments[key][~dead] == 1).all(), key
