"""Each analysis against a hand-built SAE whose answers are known."""

import numpy as np
import pytest
import torch

from saelab.analysis import weights as W
from saelab.analysis.passes import merge_topk, topk_mask
from saelab.eval.metrics import frequency_fractions
from saelab.saes.base import SAE


def test_one_hot_decoder_row_is_1_sparse():
    """A one-hot decoder row has fve_top_1 = 1, fve_next_9 = 0 and is classed 1-sparse."""
    W_dec = torch.zeros(3, 20)
    W_dec[0, 4] = -2.0
    W_dec[1] = 1.0  # uniform over 20 neurons: top_1 = 0.05, next_9 = 0.45 -> 10-ish
    W_dec[2, :100] = torch.randn(20, generator=torch.Generator().manual_seed(0))
    top1, next9 = W.neuron_sparsity(W_dec)
    assert top1[0] == 1 and next9[0] == 0
    assert top1[1] == pytest.approx(0.05) and next9[1] == pytest.approx(0.45)
    assert W.sparsity_class(top1, next9)[:2].tolist() == ["1-sparse", "10-ish"]


def test_dense_row_is_classed_dense():
    """A row spread evenly over 1,000 neurons is dense (top_1 + next_9 = 0.01)."""
    top1, next9 = W.neuron_sparsity(torch.ones(1, 1000))
    assert W.sparsity_class(top1, next9).tolist() == ["dense"]


def test_identical_cluster_rows_have_cosine_1():
    """Identical ultra-low encoder vectors give cosine 1 with their mean and share 1."""
    v = torch.randn(1, 16).repeat(5, 1) * torch.tensor([[1.0], [2.0], [0.5], [3.0], [1.0]])
    mean, cos, share = W.cluster_sameness(v)
    assert torch.allclose(cos, torch.ones(5)) and share == 1.0


def test_orthogonal_cluster_rows_share_0():
    """Mutually orthogonal vectors have cosine 1/sqrt(n) with their mean: none above 0.95."""
    _, cos, share = W.cluster_sameness(torch.eye(4))
    assert torch.allclose(cos, torch.full((4,), 0.5)) and share == 0.0


def test_gaussian_decoder_has_kurtosis_near_zero():
    """Rows of a Gaussian matrix have excess kurtosis near 0; a spiky row is far above."""
    k = W.gaussian_kurtosis_baseline((200, 2048), seed=1)
    assert abs(np.median(k)) < 0.1
    spiky = torch.zeros(1, 2048)
    spiky[0, :3] = 1.0
    assert W.excess_kurtosis(spiky)[0] > 100


def test_null_space_share():
    """A vector in the span of W_out's columns has share 0; one orthogonal to them has 1; random ~ 1 - d_model/d_mlp."""
    g = torch.Generator().manual_seed(0)
    W_out = torch.randn(64, 16, generator=g)
    inside = (W_out @ torch.randn(16, 3, generator=g)).T
    assert torch.allclose(W.null_space_share(inside, W_out), torch.zeros(3), atol=1e-5)
    Q, _ = torch.linalg.qr(W_out.double())
    v = torch.randn(64, dtype=torch.float64, generator=g)
    ortho = (v - Q @ (Q.T @ v)).float()[None]
    assert W.null_space_share(ortho, W_out).item() == pytest.approx(1.0, abs=1e-5)
    rand = W.null_space_share(torch.randn(500, 64, generator=g), W_out)
    assert rand.mean().item() == pytest.approx(1 - 16 / 64, abs=0.02)


def test_enc_dec_cosine_and_de_projection():
    """D/E is the un-normalised W_enc[:, i]·W_dec[i]: an encoder of norm 2 along its unit decoder gives 2, cosine 1."""
    W_enc = torch.tensor([[2.0, 1.0], [0.0, 0.0]])  # columns (2, 0) and (1, 0)
    W_dec = torch.tensor([[1.0, 0.0], [0.5, 3**0.5 / 2]])
    assert torch.allclose(W.enc_dec_cosine(W_enc, W_dec), torch.tensor([1.0, 0.5]))
    assert torch.allclose(W.de_projection(W_enc, W_dec), torch.tensor([2.0, 0.5]))


def test_pairwise_cosines():
    """Orthonormal rows have mean 0 and variance 0; two equal rows have mean 1."""
    assert W.pairwise_cosine_stats(torch.eye(5))[:2] == (0.0, 0.0)
    assert W.pairwise_cosine_stats(torch.ones(2, 3))[0] == pytest.approx(1.0)
    mean, var, _ = W.pairwise_cosine_stats(torch.randn(300, 64, generator=torch.Generator().manual_seed(0)))
    assert abs(mean) < 0.01 and var == pytest.approx(1 / 64, rel=0.1)


def test_logit_lens_moments():
    """A feature that writes one unembedding direction promotes exactly that token, with high kurtosis."""
    W_U = torch.eye(8, 50)  # d_model 8, vocab 50: token t reads residual dim t
    W_dec = torch.zeros(2, 8)
    W_dec[0, 3] = 1.0
    W_dec[1] = 1.0
    eff = W.logit_effects(W_dec, W_U)
    assert eff[0].argmax() == 3
    m = W.moments(eff)
    assert m["logit_kurtosis"][0] > 40 and m["logit_mean"][1] == pytest.approx(8 / 50)
    W_out = torch.eye(4, 8)  # neuron-space hook: goes through W_out first
    assert W.logit_effects(torch.eye(4)[:1], W_U, W_out)[0].argmax() == 0


def test_frequency_fractions():
    """Dead = never fired, ultra-low = below 1e-4 (dead included), dense = above 1e-2."""
    f = frequency_fractions(np.array([0.0, 5e-5, 1e-3, 0.5]), 1e-4, 1e-2)
    assert f == {"frac_dead": 0.25, "frac_ultra_low": 0.5, "frac_dense": 0.25}


def test_topk_all_is_the_plain_reconstruction():
    """Top-k with k = all (None or >= d_sae) equals the plain reconstruction; k = 1 keeps the max."""
    sae = SAE(6, 12, seed=0)
    x = torch.randn(5, 6)
    f = sae.encode(x)
    assert torch.equal(sae.decode(topk_mask(f, None)), sae(x).x_hat)
    assert torch.equal(topk_mask(f, 12), f)
    one = topk_mask(f, 1)
    assert ((one > 0).sum(-1) <= 1).all() and torch.equal(one.max(-1).values, f.max(-1).values)


def test_merge_topk_keeps_the_best_across_batches():
    """Running top-k over two batches equals top-k over their union, with the right token ids."""
    v1, v2 = torch.tensor([[1.0, 5.0]]), torch.tensor([[3.0, 4.0, 0.5]])
    best_v, best_i = merge_topk(torch.zeros(1, 2), torch.full((1, 2), -1), v1, torch.tensor([[10, 11]]), 2)
    best_v, best_i = merge_topk(best_v, best_i, v2, torch.tensor([[20, 21, 22]]), 2)
    assert best_v.tolist() == [[5.0, 4.0]] and best_i.tolist() == [[11, 21]]


def test_logit_lens_folds_the_final_layernorm_scale():
    """A final-LN weight that is not all ones changes which token a feature promotes; ones change nothing
    but the centring, which removes a direction's mean over d_model."""
    W_U = torch.eye(4, 6)  # token t reads residual dim t (t < 4)
    W_dec = torch.tensor([[1.0, 0.8, 0.0, 0.0]])
    assert W.logit_effects(W_dec, W_U)[0].argmax() == 0
    ln_w = torch.tensor([1.0, 10.0, 1.0, 1.0])
    assert W.logit_effects(W_dec, W_U, ln_weight=ln_w)[0].argmax() == 1
    centred = W.logit_effects(torch.ones(1, 4), W_U, ln_weight=torch.ones(4))
    assert torch.allclose(centred, torch.zeros(1, 6))


def _inputs(tiny_lm, freq, W_enc=None):
    from saelab.analysis.run import Inputs
    from saelab.data.lm import load_lm

    path, rows = tiny_lm
    lm = load_lm(path)
    sae = SAE(64, len(freq), seed=0)
    if W_enc is not None:
        with torch.no_grad():
            sae.W_enc.copy_(W_enc)
    return Inputs(
        lm.model,
        lm.tokenizer,
        sae,
        "blocks.0.mlp.hook_post",
        0,
        np.asarray(freq, dtype=np.float64),
        1000,
        rows,
        lm.model.state_dict()["ln_final.weight"],
        1e-4,
        1e-2,
        lm.bos_token_id,
    )


@pytest.mark.parametrize(
    "case", ["cluster of one", "no ultra-low", "every feature dense", "cluster of identical vectors"]
)
def test_analysis_survives_degenerate_saes(tiny_lm, tmp_path, case):
    """Weight analyses, the pass and every figure run on a one-member cluster, no cluster, all-dense
    features and a cluster whose encoder vectors are identical (zero-width histograms)."""
    from saelab.analysis.run import pass_analyses, weight_analyses, write_figures, write_tables
    from saelab.config import AnalysisConfig, EvaluateConfig
    from saelab.eval.evaluate import EvalSample

    n, W_enc = 16, None
    freq = {
        "cluster of one": [0.0] + [0.05] * (n - 1),
        "no ultra-low": [0.001] * n,
        "every feature dense": [0.5] * n,
        "cluster of identical vectors": [0.0] * 4 + [0.05] * (n - 4),
    }[case]
    if case == "cluster of identical vectors":
        W_enc = torch.randn(64, n)
        W_enc[:, :4] = W_enc[:, :1]
    inp = _inputs(tiny_lm, freq, W_enc)
    cfg = AnalysisConfig(topk=(1, 2), batch_rows=4, max_tokens=64)
    weights, cols, extra = weight_analyses(inp, cfg)
    sample = EvalSample.draw(len(inp.rows), inp.rows.shape[1], 64, EvaluateConfig(ce_max_tokens=32))
    passed, res = pass_analyses(inp, cfg, sample, "cpu")
    m, pm = weights.as_dict(), passed.as_dict()
    (tmp_path / "png").mkdir()
    (tmp_path / "csv").mkdir()
    write_tables(tmp_path, inp, cfg, cols, extra, res)
    write_figures(tmp_path / "png", tmp_path / "csv", cols, extra, res, m | pm, cfg)
    assert (tmp_path / "png/cluster_cosines.png").exists() and (tmp_path / "csv/topk.csv").exists()
    assert m["frac_ultra_low"] == float(np.mean(np.asarray(freq) < 1e-4))


def test_bin_edges_never_fail():
    """Identical values, one value or none get finite increasing edges (numpy: "Too many bins")."""
    from saelab.analysis.plots import bin_edges

    for v in (np.array([1.0, 1.0 + 1e-15]), np.array([0.3]), np.zeros(0), np.array([-2.0, 5.0])):
        e = bin_edges(v, 60)
        assert len(e) == 61 and np.all(np.diff(e) > 0)
