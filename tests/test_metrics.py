"""One reconstruction-metrics path: hand values, the zero-norm rule of the L2 ratio, and every caller using it."""

import numpy as np
import pytest
import torch

from saelab.config import EvaluateConfig
from saelab.data.lm import load_lm
from saelab.eval import metrics
from saelab.eval.evaluate import evaluate
from saelab.eval.metrics import ReconSums, reconstruction_metrics
from saelab.saes.base import SAE


def test_metrics_by_hand():
    """Two tokens, x = (3, 4) and (0, 0), x̂ = (3, 0) and (1, 0), f with 1 and 2 active features: MSE, EV, L0 and
    the L2 ratio equal the values worked out by hand; the zero token has no ratio and is left out of its mean."""
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    x_hat = torch.tensor([[3.0, 0.0], [1.0, 0.0]])
    f = torch.tensor([[0.0, 1.0, 0.0], [2.0, 0.5, 0.0]])
    m = reconstruction_metrics(x, x_hat, f)
    assert m["mse"] == pytest.approx((16 + 1) / 2)
    # Σ‖x − mean‖²: mean (1.5, 2) -> (1.5² + 2²) · 2 = 12.5
    assert m["explained_variance"] == pytest.approx(1 - 17 / 12.5)
    assert m["l0"] == pytest.approx(1.5)
    assert m["l2_ratio"] == pytest.approx(3 / 5)  # only the first token has a ratio
    assert m["eval_tokens"] == 2


def test_streamed_sums_equal_one_batch():
    """Adding tokens in batches gives the metrics of adding them at once (to float64 round-off)."""
    g = torch.Generator().manual_seed(0)
    x, x_hat, f = torch.randn(50, 6, generator=g), torch.randn(50, 6, generator=g), torch.rand(50, 9, generator=g)
    f[f < 0.5] = 0
    whole = reconstruction_metrics(x, x_hat, f)
    s = ReconSums()
    for i in range(0, 50, 7):
        s.add(x[i : i + 7], x_hat[i : i + 7], f[i : i + 7])
    for k, v in s.result().items():
        assert v == pytest.approx(whole[k], rel=1e-12), k
    np.testing.assert_array_equal(s.freq(), (f > 0).double().mean(0).numpy())


def test_every_caller_reads_the_one_function(monkeypatch, tiny_lm):
    """evaluate, the questions' eval set and the synthetic recovery score all report what ReconSums.result
    returns: a key added there reaches all three outputs."""
    from research.questions.experiment import EvalSet
    from research.synthetic import recovery
    from research.synthetic.worlds import RecoverConfig, World, WorldConfig

    original = ReconSums.result
    monkeypatch.setattr(metrics.ReconSums, "result", lambda self: original(self) | {"probe_key": 1.0})
    path, rows = tiny_lm
    lm = load_lm(path)
    sae = SAE(64, 128, seed=0)
    ev = EvaluateConfig(max_tokens=64, ce_max_tokens=32, batch_rows=4)
    hook = "blocks.0.mlp.hook_post"
    m, _ = evaluate(lm.model, sae, rows, hook, torch.zeros(64), ev, "cpu", lm.bos_token_id, progress=False)
    assert m["probe_key"] == 1.0  # evaluate
    for key in ("mse", "l0"):
        assert key in m
    assert EvalSet(lm.model, rows, hook, ev, 64, 4, "cpu").score(sae)["probe_key"] == 1.0
    w = World(WorldConfig(d=16, n_features=12))
    x, c = w.eval_sample(200)
    assert recovery.score(SAE(16, 24, seed=0), w, x, c, RecoverConfig())["probe_key"] == 1.0


def test_analysis_topk_reads_the_one_function(monkeypatch, tiny_lm):
    """The analysis pass's top-k MSE and ReconSums' MSE are one function (SquaredError, which ReconSums extends): a
    changed one reaches both (the splice's relative errors divide ReconSums' sse by its sum_sq: tests/test_sites.py)."""
    from saelab.analysis.passes import run_pass
    from saelab.config import AnalysisConfig
    from saelab.eval.evaluate import EvalSample

    monkeypatch.setattr(metrics.SquaredError, "mse", lambda self: 1234.5)
    x = torch.ones(3, 4)
    assert ReconSums().add(x, x, x).result()["mse"] == 1234.5
    path, rows = tiny_lm
    lm = load_lm(path)
    cfg = EvaluateConfig(max_tokens=64, ce_max_tokens=64, batch_rows=4)
    sample = EvalSample.draw(len(rows), rows.shape[1], None, cfg)
    ultra = torch.zeros(128, dtype=torch.bool)
    res = run_pass(lm.model, SAE(64, 128, seed=0), rows, "blocks.0.mlp.hook_post", ultra,
                   AnalysisConfig(topk=(1,), batch_rows=4), sample, "cpu", lm.bos_token_id)  # fmt: skip
    assert {k: v["mse"] for k, v in res.topk.items()} == {1: 1234.5, "all": 1234.5}


def test_evaluate_reports_the_function_values(tiny_lm):
    """evaluate's MSE, EV, L0 and L2 ratio are ReconSums' on the same covered tokens (no second formula)."""
    path, rows = tiny_lm
    lm = load_lm(path)
    sae = SAE(64, 128, seed=1)
    ev = EvaluateConfig(max_tokens=64, ce_max_tokens=32, batch_rows=4)
    seen = []
    original = ReconSums.add

    def spy(self, x, x_hat, f):
        seen.append((x.clone(), x_hat.clone(), f.clone()))
        return original(self, x, x_hat, f)

    ReconSums.add = spy
    try:
        m, _ = evaluate(lm.model, sae, rows, "blocks.0.mlp.hook_post", torch.zeros(64), ev, "cpu", None, progress=False)
    finally:
        ReconSums.add = original
    x, x_hat, f = (torch.cat(t) for t in zip(*seen))
    want = reconstruction_metrics(x, x_hat, f)
    for k in ("mse", "explained_variance", "l0", "l2_ratio", "eval_tokens"):
        assert m[k] == pytest.approx(want[k], rel=1e-9), k
