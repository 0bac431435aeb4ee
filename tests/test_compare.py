"""Cross-seed matching against SAEs whose answers are known."""

import numpy as np
import pytest
import torch

from saelab.eval.compare import compare_pair, greedy_matching, match


def _sae(W_dec, W_enc=None, freq=None):
    n = len(W_dec)
    return {
        "W_dec": W_dec,
        "W_enc": W_dec.T.clone() if W_enc is None else W_enc,
        "freq": np.full(n, 0.01) if freq is None else freq,
    }


def test_permuted_copy_matches_perfectly():
    """An SAE and a permutation of its features: every feature matched at cosine 1, frequencies agree."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(50, 16, generator=g)
    perm = torch.randperm(50, generator=g)
    freq = np.linspace(1e-3, 0.1, 50)
    m, best = compare_pair(_sae(W, freq=freq), _sae(W[perm], freq=freq[perm.numpy()]), 4096, 1e-4)
    assert m["share_matched_above_0.9"] == 1.0 and np.allclose(best, 1.0)
    assert m["matched_freq_spearman"] == pytest.approx(1.0) and m["matched_log10_freq_ratio_median"] == 0.0


def test_random_saes_match_poorly():
    """Two independent random decoders in 64 dims have no feature matched above 0.7."""
    g = torch.Generator().manual_seed(1)
    m, _ = compare_pair(_sae(torch.randn(100, 64, generator=g)), _sae(torch.randn(100, 64, generator=g)), 4096, 1e-4)
    assert m["share_matched_above_0.7"] == 0.0 and m["best_cos_median"] < 0.5


def test_ultra_low_direction_cosine():
    """Ultra-low clusters sharing an encoder direction give cosine 1 between their mean directions."""
    g = torch.Generator().manual_seed(2)
    W = torch.randn(20, 8, generator=g)
    d = torch.randn(8, generator=g)
    enc_a, enc_b = torch.randn(8, 20, generator=g), torch.randn(8, 20, generator=g)
    freq = np.r_[np.zeros(10), np.full(10, 0.01)]
    enc_a[:, :10] = d[:, None] * 2
    enc_b[:, :10] = d[:, None] * 0.5
    m, _ = compare_pair(_sae(W, enc_a, freq), _sae(W, enc_b, freq), 4096, 1e-4)
    assert m["ultra_low_direction_cos"] == pytest.approx(1.0)


def test_greedy_is_one_to_one_and_used_above_the_limit():
    """Greedy matching pairs each row with a distinct column; above hungarian_max it replaces Hungarian."""
    cos = np.array([[0.9, 0.8], [0.85, 0.1]])
    r, c = greedy_matching(cos)
    assert sorted(r.tolist()) == [0, 1] and sorted(c.tolist()) == [0, 1]
    assert list(zip(r.tolist(), c.tolist())) == [(0, 0), (1, 1)]  # the largest cosine (0.9) first
    assert match(cos, 1)[2] == "greedy" and match(cos, 2)[2] == "hungarian"
    assert cos[match(cos, 2)[0], match(cos, 2)[1]].sum() >= cos[r, c].sum()


def test_matched_share_splits_by_ultra_low():
    """A copy whose ultra-low features are replaced by random rows: ultra-low matched share 0, others 1."""
    g = torch.Generator().manual_seed(3)
    W = torch.randn(40, 32, generator=g)
    freq = np.r_[np.zeros(10), np.full(30, 0.01)]
    other = W.clone()
    other[:10] = torch.randn(10, 32, generator=g)
    m, _ = compare_pair(_sae(W, freq=freq), _sae(other, freq=freq), 4096, 1e-4)
    assert m["share_matched_above_0.9_ultra_low"] == 0.0 and m["share_matched_above_0.9_non_ultra_low"] == 1.0


def test_direction_baselines_by_hand():
    """An ultra-low direction equal to the mean activation scores cosine 1 with it; one along b_dec scores 1
    with b_dec; one along the second principal component scores |cos| 1 with the top components."""
    from saelab.eval.compare import direction_baselines

    mean, b_dec = torch.tensor([1.0, 0, 0, 0]), torch.tensor([0, 1.0, 0, 0])
    pcs = torch.tensor([[0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    acts = {"mean": mean, "pcs": pcs}
    assert direction_baselines(mean * 3, b_dec, acts)["ultra_low_dir_cos_mean_activation"] == pytest.approx(1.0)
    assert direction_baselines(b_dec, b_dec, acts)["ultra_low_dir_cos_b_dec"] == pytest.approx(1.0)
    b = direction_baselines(torch.tensor([0, 0, 0, -2.0]), b_dec, acts)
    assert (
        b["ultra_low_dir_max_abs_cos_top_pcs"] == pytest.approx(1.0) and b["ultra_low_dir_cos_mean_activation"] == 0.0
    )


def test_agreement_without_the_mean_activation():
    """Two ultra-low directions that share only the mean activation direction agree raw but not once it is
    removed: (5, 1, 0) and (5, -1, 0) around mean (1, 0, 0) give raw cos 0.92 and residual cos -1."""
    from saelab.eval.compare import compare_all

    W_dec = torch.eye(3)
    freq = np.array([0.0, 0.01, 0.01])
    enc_a, enc_b = torch.eye(3), torch.eye(3)
    enc_a[:, 0], enc_b[:, 0] = torch.tensor([5.0, 1, 0]), torch.tensor([5.0, -1, 0])
    acts = {"mean": torch.tensor([1.0, 0, 0]), "pcs": torch.eye(3)[:2]}
    saes = {s: {"W_dec": W_dec, "W_enc": e, "b_dec": torch.zeros(3), "freq": freq} for s, e in ((0, enc_a), (1, enc_b))}
    m, _ = compare_all(saes, 4096, 1e-4, acts)
    assert m["seed0_vs_seed1_ultra_low_direction_cos"] == pytest.approx(24 / 26)
    assert m["seed0_vs_seed1_ultra_low_direction_cos_without_mean_activation"] == pytest.approx(-1.0)
