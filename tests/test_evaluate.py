import numpy as np
import pytest
import torch
import torch.nn.functional as F

from saelab.hooks import hook_activations
from saelab.config import EvaluateConfig
from saelab.evaluate import ce_recovered, evaluate, explained_variance, l2_ratios, token_ce
from saelab.lm import load_lm
from saelab.sae import SAE


def test_ce_recovered_by_hand():
    """(zero - sae) / (zero - clean): 3.0 clean, 3.5 sae, 8.0 zero -> 0.9."""
    assert ce_recovered(3.0, 3.5, 8.0) == pytest.approx(0.9)
    assert ce_recovered(3.0, 3.0, 8.0) == 1.0 and ce_recovered(3.0, 8.0, 8.0) == 0.0


def test_explained_variance_is_centred():
    """EV uses Σ‖x - mean‖², not Σ‖x‖²: predicting the mean scores 0, not close to 1."""
    x = torch.tensor([[10.0, 1.0], [12.0, -1.0], [11.0, 0.0]], dtype=torch.float64)
    mean_pred = x.mean(0).expand_as(x)
    sse = (x - mean_pred).pow(2).sum().item()
    ev = explained_variance(sse, x.pow(2).sum().item(), x.sum(0).numpy(), 3)
    assert ev == pytest.approx(0.0, abs=1e-12)
    # hand value: residual 1 on one coordinate; total centred variance = 2 + 2 = 4
    assert explained_variance(1.0, x.pow(2).sum().item(), x.sum(0).numpy(), 3) == pytest.approx(0.75)


def test_l2_ratio_by_hand():
    """‖x̂‖/‖x‖ per token: (3,4)->(0,2.5) is 0.5; zero inputs are dropped."""
    r = l2_ratios(torch.tensor([[0.0, 2.5], [1.0, 1.0]]), torch.tensor([[3.0, 4.0], [0.0, 0.0]]))
    assert r.tolist() == [0.5]


def test_token_ce_matches_torch():
    """token_ce equals F.cross_entropy on shifted targets."""
    logits, tokens = torch.randn(2, 5, 11), torch.randint(0, 11, (2, 5))
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, 11), tokens[:, 1:].reshape(-1), reduction="none").view(2, 4)
    assert torch.allclose(token_ce(logits, tokens), ref, atol=1e-6)


def _identity_sae(d):
    """An SAE that reconstructs exactly: f = [relu(x), relu(-x)], W_dec = [I; -I]."""
    sae = SAE(d, 2 * d, seed=0)
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def test_perfect_sae_recovers_all_loss(tiny_lm):
    """Splicing an exact reconstruction gives CE recovered 1, EV 1, L2 ratio 1 and clean == sae CE."""
    path, rows = tiny_lm
    lm = load_lm(path)
    tokens = torch.from_numpy(rows[:8].astype(np.int64))
    mean = hook_activations(lm.model, tokens, "blocks.0.mlp.hook_post", 0).reshape(-1, 64).mean(0)
    m, per_feature = evaluate(lm.model, _identity_sae(64), rows, "blocks.0.mlp.hook_post", mean,
                              EvaluateConfig(ce_max_tokens=64, batch_rows=4), "cpu")
    assert m["ce_sae"] == pytest.approx(m["ce_clean"], abs=1e-5)
    assert m["ce_recovered_zero"] == pytest.approx(1.0, abs=1e-4)
    assert m["explained_variance"] == pytest.approx(1.0, abs=1e-6) and m["l2_ratio"] == pytest.approx(1.0)
    assert m["eval_tokens"] == rows.size and m["ce_eval_tokens"] == 4 * 15
    assert m["ce_zero_ablation"] != m["ce_clean"]


def test_zero_sae_recovers_nothing(tiny_lm):
    """An SAE whose output is always 0 scores CE recovered (zero) of exactly 0 and L0 of 0."""
    path, rows = tiny_lm
    lm = load_lm(path)
    sae = SAE(64, 128, seed=0)
    with torch.no_grad():
        sae.b_enc.fill_(-1e6)
    m, per_feature = evaluate(lm.model, sae, rows, "blocks.0.mlp.hook_post", torch.zeros(64),
                              EvaluateConfig(ce_max_tokens=64, batch_rows=4), "cpu")
    assert m["ce_recovered_zero"] == pytest.approx(0.0, abs=1e-6)
    assert m["l0"] == 0 and m["frac_dead"] == 1.0 and (per_feature["fired"] == 0).all()
