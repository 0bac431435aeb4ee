import pytest
import torch

from saelab.config import SAEConfig
from saelab.saes.base import SAE
from saelab.training.resample import resample_
from saelab.training.trainer import Schedule, train_sae


def train_batches(d=16, b=64, seed=0):
    """Sparse synthetic data: each token is a sum of a few of 32 fixed directions."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(32, d, generator=g)
    while True:
        codes = (torch.rand(b, 32, generator=g) < 0.1).float() * torch.rand(b, 32, generator=g) * 3
        yield codes @ dirs


def train_cfg(**kw):
    base = dict(
        expansion=4,
        l1_coeff=0.05,
        lr=3e-3,
        batch_size=64,
        n_tokens=64 * 300,
        resample_every=64 * 100,
        resample_window=64 * 100,
        lr_warmup_tokens=0,
        log_every=10,
    )
    return SAEConfig(**(base | kw))


def test_decoder_rows_stay_unit_norm_after_many_steps():
    """After 300 Adam steps every decoder row has norm 1 to float precision."""
    sae = SAE(16, 64, seed=0, l1_coeff=0.05)
    train_sae(sae, train_batches(), train_cfg(), torch.device("cpu"))
    assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(64), atol=1e-5)


def test_parallel_gradient_is_removed():
    """After remove_parallel_grad_, each row of W_dec.grad is orthogonal to its row."""
    sae = SAE(8, 12, seed=0)
    sae(torch.randn(5, 8)).x_hat.pow(2).sum().backward()
    sae.remove_parallel_grad_()
    dots = (sae.W_dec.grad * sae.W_dec).sum(-1)
    assert dots.abs().max() < 1e-5


def test_training_reduces_loss():
    """Training on sparse synthetic data cuts the MSE by over 5x."""
    rows = []
    sae = SAE(16, 64, seed=0, l1_coeff=0.05)
    train_sae(sae, train_batches(), train_cfg(), torch.device("cpu"), log=lambda s, r: rows.append(r))
    assert rows[-1]["mse"] < rows[0]["mse"] / 5


def test_resampling_revives_a_dead_feature():
    """A feature with a hugely negative bias never fires; resampling makes it fire again."""
    sae = SAE(16, 64, seed=0, l1_coeff=0.05)
    with torch.no_grad():
        sae.b_enc[7] = -1e6
    opt = torch.optim.Adam(sae.parameters())
    x = next(train_batches())
    assert (sae(x).f[:, 7] == 0).all()
    dead = torch.zeros(64, dtype=torch.bool)
    dead[7] = True
    assert resample_(sae, opt, dead, x, torch.Generator().manual_seed(0)) == 1
    assert sae.b_enc[7] == 0 and (sae(x).f[:, 7] > 0).any()
    assert abs(sae.W_dec[7].norm().item() - 1) < 1e-6


def test_training_loop_resamples_dead_features():
    """Inside train_sae, a killed feature is detected at the check and revived."""
    sae = SAE(16, 64, seed=0, l1_coeff=0.05)
    with torch.no_grad():
        sae.b_enc[3] = -1e6
    state = train_sae(sae, train_batches(), train_cfg(n_tokens=64 * 100, resample_stop=1.0), torch.device("cpu"))
    assert state.n_resampled >= 1 and sae.b_enc[3] > -1e3


def test_schedule_windows():
    """The fire-count window opens `window` steps before each check."""
    s = Schedule.from_config(train_cfg(resample_every=64 * 10, resample_window=64 * 4, n_tokens=64 * 30))
    assert [t for t in range(1, 31) if s.opens_window(t)] == [6, 16, 26]
    assert [t for t in range(1, 31) if s.resamples(t)] == [10, 20]  # 30 > resample_stop * 30


def test_training_is_deterministic():
    """Two CPU runs with the same seed give bitwise identical parameters."""
    outs = []
    for _ in range(2):
        sae = SAE(16, 64, seed=0, l1_coeff=0.05)
        train_sae(sae, train_batches(), train_cfg(n_tokens=64 * 50), torch.device("cpu"))
        outs.append(sae.state_dict())
    assert all(torch.equal(outs[0][k], outs[1][k]) for k in outs[0])


def test_logged_rows_see_a_full_window():
    """A log that coincides with a window reset reports the window that just closed, not an empty one."""
    rows = []
    train_sae(
        SAE(16, 64, seed=0, l1_coeff=0.05),
        train_batches(),
        train_cfg(),
        torch.device("cpu"),
        log=lambda s, r: rows.append((s, r)),
    )
    step, last = rows[-1]
    assert step == 300 and last["window_tokens"] == 64 * 100 and last["frac_dead_window"] < 0.5


def test_bf16_autocast_keeps_fp32_master_weights_and_learns():
    """sae.dtype bf16 (the GPU path's mixed precision, here on CPU): weights stay fp32, loss falls."""
    sae = SAE(16, 64, seed=0, l1_coeff=0.05)
    rows = []
    train_sae(
        sae,
        train_batches(),
        train_cfg(dtype="bf16", n_tokens=64 * 100),
        torch.device("cpu"),
        lambda s, r: rows.append(r),
    )
    assert all(p.dtype == torch.float32 for p in sae.parameters())
    assert rows[-1]["mse"] < 0.5 * rows[0]["mse"]


def test_compiled_step_matches_eager():
    """sae.compile: torch.compile of forward + losses gives the eager run's weights (to float tolerance)."""
    eager, compiled = SAE(16, 64, seed=0, l1_coeff=0.05), SAE(16, 64, seed=0, l1_coeff=0.05)
    train_sae(eager, train_batches(), train_cfg(n_tokens=64 * 20), torch.device("cpu"))
    train_sae(compiled, train_batches(), train_cfg(n_tokens=64 * 20, compile=True), torch.device("cpu"))
    for a, b in zip(eager.parameters(), compiled.parameters()):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def _one_step(sae, x, project: bool):
    """Reference step: Adam on mse + l1, the decoder gradient projected (or not), rows renormalised."""
    from saelab.saes.base import l1_loss, mse_loss

    opt = torch.optim.Adam(sae.parameters(), lr=1e-2, betas=(0.9, 0.99))
    x_hat, f = sae(x)
    loss = mse_loss(x_hat, x) + 0.05 * l1_loss(f)
    loss.backward()
    if project:
        sae.remove_parallel_grad_()
    opt.step()
    sae.normalize_decoder_()
    return sae.W_dec.detach().clone()


def test_train_step_projects_the_decoder_gradient():
    """train_step equals the reference step with the W_dec gradient projection, and not the one without it."""
    from saelab.training.trainer import train_step

    x = next(train_batches())
    with_proj, without = (
        _one_step(SAE(16, 64, seed=0, l1_coeff=0.05), x, True),
        _one_step(SAE(16, 64, seed=0, l1_coeff=0.05), x, False),
    )
    assert not torch.allclose(with_proj, without, atol=1e-6)  # the projection changes the step
    sae = SAE(16, 64, seed=0, l1_coeff=0.05)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2, betas=(0.9, 0.99))
    train_step(sae, opt, x, autocast=False)
    assert torch.allclose(sae.W_dec, with_proj, atol=1e-6)


def test_resample_scales_encoder_zeroes_moments_and_weights_by_loss_squared():
    """Resampling: decoder row = unit(x - b_dec) of a high-loss input, encoder = that x 0.2 x mean alive
    encoder norm, bias 0, Adam moments zeroed for the dead slices only."""
    sae = SAE(8, 6, seed=0)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    sae(torch.randn(4, 8)).x_hat.pow(2).sum().backward()
    opt.step()  # non-empty Adam state
    with torch.no_grad():
        sae.b_dec.copy_(torch.arange(8.0) / 10)
    x = sae.b_dec.detach().expand(50, 8).clone()  # reconstructed almost exactly...
    x[17, 2] += 5.0  # ...except two inputs with a large loss
    x[33, 5] -= 3.0
    with torch.no_grad():
        sae.b_enc.fill_(-100.0)  # nothing fires: loss = ||x - b_dec||^2, zero for every input but #17
    dead = torch.tensor([False, True, False, False, True, False])
    alive_norm = sae.W_enc[:, ~dead].norm(dim=0).mean().item()
    before = {k: v.clone() for k, v in opt.state[sae.W_enc].items()}
    n = resample_(sae, opt, dead, x, torch.Generator().manual_seed(0))
    assert n == 2
    # loss^2 weighting: the two dead features take the two high-loss inputs (sampled without replacement)
    picked = {int(sae.W_dec[i].abs().argmax()): float(sae.W_dec[i].abs().max()) for i in (1, 4)}
    assert picked == {2: pytest.approx(1.0), 5: pytest.approx(1.0)}
    for i in (1, 4):
        assert sae.W_enc[:, i].norm().item() == pytest.approx(0.2 * alive_norm, rel=1e-5)
        assert sae.b_enc[i] == 0
    for key in ("exp_avg", "exp_avg_sq"):
        st = opt.state[sae.W_enc][key]
        assert (st[:, dead] == 0).all() and torch.equal(st[:, ~dead], before[key][:, ~dead])
        assert (opt.state[sae.W_dec][key][dead] == 0).all() and (opt.state[sae.b_enc][key][dead] == 0).all()


def test_resample_probabilities_are_loss_squared():
    """Inputs are drawn with weight (squared error) squared: losses 1 and 3 weigh 1 : 9, not 1 : 3."""
    from saelab.training.resample import resample_probabilities

    w = resample_probabilities(torch.tensor([1.0, 3.0, 0.0]))
    assert w[1] / w[0] == pytest.approx(9.0) and 0 < w[2] < 1e-9


def test_log_rows_average_the_steps_they_saw_after_a_cadence_change():
    """A resumed run logging at a new cadence divides its first row by the steps actually summed, not by log_every."""
    from saelab.training.trainer import Trainer

    trainer = Trainer(SAE(16, 64, seed=0, l1_coeff=0.05), train_cfg(log_every=7), torch.device("cpu"))
    trainer.sums += torch.tensor(
        [3.0, 3.0, 3.0, 3.0]
    )  # loss, mse, l0, l1  # three steps of loss 1 were summed under the old cadence
    trainer.state.steps_in_sums = 3
    assert trainer._log_row(10)["loss"] == pytest.approx(1.0)
