import pytest
import torch

from saelab.saes.base import SAE, l0, l1_loss, mse_loss


def test_forward_matches_equations():
    """f = ReLU((x - b_dec) W_enc + b_enc) and x_hat = f W_dec + b_dec."""
    sae = SAE(4, 6, seed=0)
    with torch.no_grad():
        sae.b_dec.copy_(torch.randn(4))
        sae.b_enc.copy_(torch.randn(6))
    x = torch.randn(3, 4)
    x_hat, f = sae(x)
    f_ref = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
    assert torch.allclose(f, f_ref) and torch.allclose(x_hat, f_ref @ sae.W_dec + sae.b_dec)


def test_losses_by_hand():
    """MSE sums over dims and averages over the batch; L1 likewise; L0 counts nonzeros."""
    x = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    x_hat = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    assert mse_loss(x_hat, x).item() == pytest.approx((5 + 2) / 2)
    f = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]])
    assert l1_loss(f).item() == pytest.approx(3.0)
    assert l0(f).item() == pytest.approx(1.5)


def test_l1_is_batch_size_independent():
    """Duplicating a batch leaves the L1 term unchanged (the reference's summed L1 doubled)."""
    f = torch.rand(5, 7)
    assert l1_loss(torch.cat([f, f])).item() == pytest.approx(l1_loss(f).item())


def test_init_decoder_rows_unit_norm():
    """Decoder rows start at unit norm; init is seeded."""
    a, b = SAE(8, 16, seed=3), SAE(8, 16, seed=3)
    assert torch.allclose(a.W_dec.norm(dim=-1), torch.ones(16))
    assert torch.equal(a.W_enc, b.W_enc)


def test_save_load_round_trip(tmp_path):
    """Weights and config survive save/load exactly."""
    sae = SAE(8, 16, seed=1)
    sae.save(tmp_path, {"hook": "h"})
    back, meta = SAE.load(tmp_path)
    assert meta["hook"] == "h" and meta["d_sae"] == 16
    for k, v in sae.state_dict().items():
        assert torch.equal(v, back.state_dict()[k])


def test_load_rejects_shape_mismatch(tmp_path):
    """A weights file that disagrees with its config names the tensor and the file."""
    SAE(8, 16, seed=1).save(tmp_path, {})
    cfg = (tmp_path / "config.json").read_text().replace('"d_in": 8', '"d_in": 9')
    (tmp_path / "config.json").write_text(cfg)
    with pytest.raises(ValueError, match="sae.safetensors: W_enc"):
        SAE.load(tmp_path)
