import numpy as np
import pytest
import torch
import torch.nn.functional as F

from saelab.config import EvaluateConfig
from saelab.data.hooks import activation
from saelab.data.lm import load_lm
from saelab.eval.evaluate import evaluate, token_ce
from saelab.eval.metrics import ce_recovered, explained_variance, l2_ratios
from saelab.saes.base import SAE, SAEOutput
from tests.conftest import identity_sae


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


def test_perfect_sae_recovers_all_loss(tiny_lm):
    """Splicing an exact reconstruction gives CE recovered 1, EV 1, L2 ratio 1 and clean == sae CE."""
    path, rows = tiny_lm
    lm = load_lm(path)
    tokens = torch.from_numpy(rows[:8].astype(np.int64))
    mean = activation(lm.model, tokens, "blocks.0.mlp.hook_post").reshape(-1, 64).mean(0)
    m, per_feature = evaluate(
        lm.model,
        identity_sae(64),
        rows,
        "blocks.0.mlp.hook_post",
        mean,
        EvaluateConfig(ce_max_tokens=64, batch_rows=4),
        "cpu",
    )
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
    m, per_feature = evaluate(
        lm.model,
        sae,
        rows,
        "blocks.0.mlp.hook_post",
        torch.zeros(64),
        EvaluateConfig(ce_max_tokens=64, batch_rows=4),
        "cpu",
    )
    assert m["ce_recovered_zero"] == pytest.approx(0.0, abs=1e-6)
    assert m["l0"] == 0 and m["frac_dead"] == 1.0 and (per_feature["fired"] == 0).all()


def test_topk_all_equals_ce_recovered_zero_on_the_same_sample(tiny_lm):
    """Analysis top-k "all" and evaluate's ce_recovered_zero go through one CE path on one seeded
    sample: equal to 1e-9, and the analysis MSE equals evaluate's on those rows, for an imperfect SAE."""
    from saelab.analysis.passes import run_pass
    from saelab.config import AnalysisConfig
    from saelab.eval.evaluate import EvalSample

    path, rows = tiny_lm
    lm = load_lm(path)
    sae = SAE(64, 128, seed=3)
    cfg = EvaluateConfig(max_tokens=96, ce_max_tokens=96, batch_rows=4, seed=5)
    m, _ = evaluate(lm.model, sae, rows, "blocks.0.mlp.hook_post", torch.zeros(64), cfg, "cpu", lm.bos_token_id)
    sample = EvalSample.draw(len(rows), rows.shape[1], None, cfg)
    res = run_pass(
        lm.model,
        sae,
        rows,
        "blocks.0.mlp.hook_post",
        torch.zeros(128, dtype=torch.bool),
        AnalysisConfig(topk=(1, 3), batch_rows=4),
        sample,
        "cpu",
        lm.bos_token_id,
    )
    assert abs(m["ce_recovered_zero"] - 1) > 1e-3  # an imperfect SAE: the equality below is not 1 == 1
    assert ce_recovered(res.ce_clean, res.topk["all"]["ce"], res.ce_zero) == pytest.approx(
        m["ce_recovered_zero"], abs=1e-9
    )
    assert res.topk["all"]["mse"] == pytest.approx(m["mse"], rel=1e-6)
    assert res.topk[1]["mse"] != pytest.approx(res.topk["all"]["mse"])  # k = 1 really drops features


def test_eval_sample_is_seeded_spread_and_nested():
    """The eval sample is a seeded random draw over the whole split (not its first rows); CE rows are a
    subset of the statistics rows; another seed draws other rows."""
    from saelab.eval.evaluate import EvalSample

    ev = EvaluateConfig(max_tokens=2000, ce_max_tokens=500, seed=0)
    a = EvalSample.draw(1000, 10, 2000, ev)
    stats = EvalSample.draw(1000, 10, 2000, ev.model_copy(update={"ce_max_tokens": 1}))  # the statistics rows alone
    assert len(a.ce) == 50 and a.n_rows == 200 and set(a.ce) < set(stats.ce) | set(stats.rest)
    assert a.ce.max() > 500 and a.ce.min() < 500  # spread over the split, not a prefix
    assert not set(a.ce) & set(a.rest)
    assert set(EvalSample.draw(1000, 10, None, ev, seed=1).ce) != set(a.ce)
    small = EvalSample.draw(1000, 10, 100, ev)  # an analysis with fewer tokens than the CE sample: CE rows unchanged
    assert set(small.ce) == set(a.ce) and len(small.rest) == 0


def test_scaled_reconstruction_gives_hand_ev_and_l2_ratio(tiny_lm):
    """An SAE whose output is exactly x/2: L2 ratio 0.5, and EV = 1 - 0.25 Σ‖x‖² / Σ‖x - mean‖² by hand."""
    path, rows = tiny_lm
    lm = load_lm(path)
    sae = identity_sae(64)
    with torch.no_grad():
        sae.W_dec.mul_(0.5)
    cfg = EvaluateConfig(max_tokens=64, ce_max_tokens=32, batch_rows=4)
    m, _ = evaluate(lm.model, sae, rows, "blocks.0.mlp.hook_post", torch.zeros(64), cfg, "cpu", lm.bos_token_id)
    from saelab.eval.evaluate import EvalSample

    s = EvalSample.draw(len(rows), rows.shape[1], 64, cfg)
    tokens = torch.from_numpy(rows[np.sort(np.r_[s.ce, s.rest])].astype(np.int64))
    x = activation(lm.model, tokens, "blocks.0.mlp.hook_post")[tokens != lm.bos_token_id].double()
    ev = 1 - 0.25 * x.pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert m["l2_ratio"] == pytest.approx(0.5, abs=1e-5)
    assert m["explained_variance"] == pytest.approx(ev.item(), abs=1e-5)
    assert m["eval_tokens"] == len(x)  # BOS positions are outside the SAE's domain


def test_bos_positions_stay_clean_in_every_splice(tiny_lm):
    """Under the exclude policy a splice leaves BOS positions untouched: zero ablation of every other
    position changes CE, and ablating only covered positions of an all-BOS row changes nothing."""
    from saelab.data.hooks import covered_positions
    from saelab.eval.evaluate import clean_pass, spliced_ce

    path, rows = tiny_lm
    lm = load_lm(path)
    tokens = torch.full((2, 8), lm.bos_token_id, dtype=torch.long)
    clean, x = clean_pass(lm.model, tokens, "blocks.0.mlp.hook_post")
    cov = covered_positions(tokens, lm.bos_token_id)
    assert not cov.any()
    assert torch.equal(spliced_ce(lm.model, tokens, "blocks.0.mlp.hook_post", torch.zeros_like(x), cov), clean)
    everywhere = torch.ones_like(cov)
    assert not torch.equal(
        spliced_ce(lm.model, tokens, "blocks.0.mlp.hook_post", torch.zeros_like(x), everywhere), clean
    )


def test_evaluate_feeds_a_transcoder_its_input_and_scores_and_splices_it_at_its_target(tiny_lm):
    """A "transcoder" that is the LM's own ln2 scale and bias and MLP (ln2.hook_normalized, in TransformerLens 4's
    bridge before the scale and bias, -> hook_mlp_out) is perfect: MSE 0, EV 1, CE recovered 1. Fed the target
    instead of the input, or scored against its input, it would not be."""
    IN, OUT = "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out"
    lm_dir, rows = tiny_lm
    lm = load_lm(lm_dir)
    mlp, ln2 = lm.model.blocks[0].mlp, dict(lm.model.blocks[0].ln2.named_parameters())
    scale, bias = ln2["_original_component.weight"], ln2["_original_component.bias"]

    class TheMLP(torch.nn.Module):
        d_sae = 4

        def forward(self, x):
            out = mlp((x * scale + bias)[:, None, :])[:, 0, :]  # (N, d_model) through the block's own LN affine, MLP
            return SAEOutput(out, torch.ones(len(x), 4))

    cfg = EvaluateConfig(max_tokens=None, ce_max_tokens=None, batch_rows=4)
    mean = torch.zeros(lm.config["tl_config"]["d_model"])
    m, _ = evaluate(lm.model, TheMLP(), rows[:8], OUT, mean, cfg, "cpu", None, progress=False, input_hook=IN)
    assert m["mse"] < 1e-8 and m["explained_variance"] == pytest.approx(1, abs=1e-6)
    assert m["ce_recovered_zero"] == pytest.approx(1, abs=1e-5) and m["ce_zero_ablation"] > m["ce_clean"]
    wrong, _ = evaluate(lm.model, TheMLP(), rows[:8], OUT, mean, cfg, "cpu", None, progress=False, input_hook=OUT)
    assert wrong["mse"] > 1e-3
