"""The reference post's open questions: training probes, the answer functions on hand-built cases, the
params checks, and the tiny questions pipeline end to end."""

from __future__ import annotations

import csv
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from research.questions import answers as A
from research.questions.experiment import QParams, load_question_params, rates_after
from research.questions.probes import DensityHistory, EncoderPenalty, GradientSum, Holdout, Orthogonalize, Tie
from saelab.config import SAEConfig
from saelab.errors import InputError
from saelab.saes.base import SAE
from saelab.section import ConfigError
from saelab.training.trainer import Trainer
from tests.test_pipeline import REPO, run_cmd
from tests.test_train import train_batches, train_cfg

CPU = torch.device("cpu")


def _train(probes=(), sae=None, **kw):
    sae = sae or SAE(16, 64, seed=0, l1_coeff=0.05)
    cfg = train_cfg(checkpoint_every=0, **kw)
    Trainer(sae, cfg, CPU, probes=probes).run(lambda skip: train_batches())
    return sae


# ------------------------------------------------------------------ probes


def test_observing_probes_leave_training_bit_identical():
    """Density history and gradient sums only watch: the weights equal a run without probes."""
    plain = _train()
    watched = _train([DensityHistory(640), GradientSum()])
    for k, v in plain.state_dict().items():
        assert torch.equal(v, watched.state_dict()[k]), k


def test_density_history_counts_every_fire_and_every_resampling(tmp_path):
    sae = SAE(16, 64, seed=0, l1_coeff=0.05)
    with torch.no_grad():
        sae.b_enc[:5] = -1e6  # five features that never fire until resampled
    dh = DensityHistory(64 * 25)
    _train([dh], sae=sae, n_tokens=64 * 100, resample_stop=1.0)
    dh.outputs(tmp_path)
    t = pq.read_table(tmp_path / "density.parquet")
    assert sorted(set(t["tokens"].to_pylist())) == [64 * 25 * i for i in (1, 2, 3, 4)]
    assert set(t["interval_tokens"].to_pylist()) == {64 * 25}
    ev = pq.read_table(tmp_path / "resamples.parquet")
    assert {0, 1, 2, 3, 4} <= set(ev["feature"].to_pylist())  # the killed features were resampled
    first = np.asarray(t.filter(pa.compute.equal(t["tokens"], 64 * 25))["fires"])
    assert (first[:5] == 0).all() and first[5:].sum() > 0


def test_holdout_features_are_never_resampled():
    h = Holdout(100, 0.25, seed=3)
    assert h.held.sum() == 25
    dead = torch.ones(100, dtype=torch.bool)
    assert torch.equal(h.keep(dead), ~h.held)
    sae = SAE(16, 64, seed=0, l1_coeff=0.05)
    held = Holdout(64, 0.5, seed=0)
    with torch.no_grad():
        sae.b_enc[:] = -1e6  # everything dead: resampling would touch every feature
    _train([held], sae=sae, n_tokens=64 * 101, resample_stop=1.0)
    assert (sae.b_enc[held.held] == -1e6).all() and (sae.b_enc[~held.held] > -1e3).all()
    with pytest.raises(InputError):
        Holdout(10, 1.5, 0)


def test_gradient_sum_is_the_sum_of_encoder_gradients():
    sae = SAE(8, 12, seed=0)
    g = GradientSum()
    total = torch.zeros(8, 12)
    for _ in range(3):
        sae(torch.randn(5, 8)).x_hat.pow(2).sum().backward()
        g.before_step(sae)
        total += sae.W_enc.grad
        sae.zero_grad()
    assert torch.allclose(g.sum, total) and (g.steps == 3).all()
    g.after_resample(sae, torch.tensor([2]), 0)
    assert g.sum[:, 2].abs().sum() == 0 and g.steps[2] == 0 and g.steps[3] == 3


def test_orthogonalize_keeps_encoder_columns_orthogonal():
    u = torch.randn(16)
    sae = _train([Orthogonalize(u)], resample_stop=1.0)
    assert (u / u.norm() @ sae.W_enc).abs().max() < 1e-5
    assert (u / u.norm() @ _train().W_enc).abs().max() > 1e-2  # not so without the probe
    with pytest.raises(InputError):
        Orthogonalize(torch.zeros(4))


def test_encoder_penalty_adds_its_term_and_shrinks_the_encoder():
    sae = SAE(8, 12, seed=0)
    assert torch.isclose(EncoderPenalty("l2", 0.5).loss(sae), 0.5 * sae.W_enc.pow(2).sum())
    assert torch.isclose(EncoderPenalty("l1", 2.0).loss(sae), 2.0 * sae.W_enc.abs().sum())
    free, penalised = _train(n_tokens=64 * 100), _train([EncoderPenalty("l2", 1.0)], n_tokens=64 * 100)
    assert penalised.W_enc.norm() < 0.9 * free.W_enc.norm()
    with pytest.raises(InputError):
        EncoderPenalty("l3", 1.0)


def test_tied_sae_keeps_w_enc_equal_to_w_dec_transposed_and_learns():
    rows = []
    sae = SAE(16, 64, seed=0, l1_coeff=0.05)
    cfg = train_cfg(checkpoint_every=0, resample_stop=1.0)
    Trainer(sae, cfg, CPU, probes=[Tie(sae)]).run(lambda skip: train_batches(), log=lambda s, r: rows.append(r))
    assert torch.equal(sae.W_enc, sae.W_dec.T)
    # learns: about 343 -> 13 here, against 236 -> 4 untied; the strides bug of a85f687 (fused Adam
    # updating a transposed gradient) left it at 428 -> 379
    assert rows[-1]["mse"] < 0.1 * rows[0]["mse"]
    untied = []
    Trainer(SAE(16, 64, seed=0, l1_coeff=0.05), cfg, CPU).run(
        lambda skip: train_batches(), log=lambda s, r: untied.append(r)
    )
    assert rows[-1]["mse"] < 5 * untied[-1]["mse"]
    from saelab.registry import build

    with pytest.raises(InputError, match="standard"):
        Tie(build(SAEConfig(architecture="topk"), 16))


def test_tied_gradient_is_the_gradient_of_one_shared_matrix():
    """The summed gradient Tie puts on W_dec equals autograd's through a single shared matrix."""
    g = torch.Generator().manual_seed(1)
    sae = SAE(8, 12, seed=0, l1_coeff=0.3)
    tie = Tie(sae)
    tie.start(sae)
    with torch.no_grad():
        sae.b_dec.normal_(generator=g)
        sae.b_enc.normal_(generator=g)
    x = torch.randn(32, 8, generator=g)
    sae.train_forward(x, 1.0).loss.backward()
    tie.before_step(sae)
    assert sae.W_dec.grad.stride() == sae.W_dec.stride()  # fused Adam reads the gradient in the parameter's layout
    P = sae.W_dec.detach().clone().requires_grad_(True)
    f = torch.relu((x - sae.b_dec.detach()) @ P.T + sae.b_enc.detach())
    x_hat = f @ P + sae.b_dec.detach()
    ((x_hat - x).pow(2).sum(-1).mean() + 0.3 * f.sum(-1).mean()).backward()
    assert sae.W_enc.grad is None and torch.allclose(sae.W_dec.grad, P.grad, atol=1e-5)


def test_probes_refuse_checkpointing():
    with pytest.raises(InputError, match="checkpoint_every"):
        Trainer(SAE(16, 64, l1_coeff=0.05), train_cfg(checkpoint_every=10), CPU, probes=[GradientSum()])


# ------------------------------------------------------------------ answer functions


def test_drop_lowest_zeroes_the_k_smallest_active_only():
    f = torch.tensor([[0.0, 3.0, 1.0, 2.0], [0.5, 0.0, 0.0, 0.0]])
    assert torch.equal(A.drop_lowest(1)(f), torch.tensor([[0.0, 3.0, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0]]))
    assert torch.equal(A.drop_lowest(2)(f), torch.tensor([[0.0, 3.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    assert torch.equal(A.drop_lowest(0)(f), f)


def test_superset_shares_follow_the_bias_order():
    sets = [{1, 2, 3, 4}, {1, 2}, {2}, set()]  # nested: a lower threshold fires on a superset
    higher_bias_fires_more = np.array([3.0, 2.0, 1.0, 0.0])
    m = A.superset_shares(sets, higher_bias_fires_more)
    assert m["n_pairs"] == 3 and m["share_higher_bias_superset"] == 1.0 and m["share_lower_bias_superset"] == 0.0
    m = A.superset_shares(sets, -higher_bias_fires_more)
    assert m["share_lower_bias_superset"] == 1.0
    m = A.superset_shares([{1}, {2}], np.array([0.0, 1.0]))
    assert m["share_lower_bias_superset"] == 0.0 and m["share_higher_bias_superset"] == 0.0


def _sae_with_rows(W_dec: torch.Tensor) -> SAE:
    sae = SAE(W_dec.shape[1], W_dec.shape[0], seed=None)
    with torch.no_grad():
        sae.W_dec.copy_(W_dec / W_dec.norm(dim=-1, keepdim=True))
        sae.W_enc.copy_(sae.W_dec.T)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def test_consensus_needs_a_match_in_every_sae():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(20, 16, generator=g)
    same = [_sae_with_rows(W), _sae_with_rows(W[torch.randperm(20, generator=g)]), _sae_with_rows(W.flip(0))]
    ok, m = A.consensus(same, 0.9)
    assert ok.all() and m["n_consensus"] == 20
    other = W.clone()
    other[:5] = torch.randn(5, 16, generator=g)  # five features missing from the third SAE
    ok, m = A.consensus(same[:2] + [_sae_with_rows(other)], 0.9)
    assert m["n_consensus"] == 15 and not ok[:5].any()


def test_consensus_needs_every_pair_not_only_pairs_with_the_first():
    e = torch.eye(8)
    base = _sae_with_rows(e[:4].clone())
    a, b = e[:4].clone(), e[:4].clone()
    a[0] = e[0] + 0.45 * e[5]  # cos 0.91 with base's row 0
    b[0] = e[0] - 0.45 * e[5]  # cos 0.91 with base's, but 0.66 with a's
    ok, m = A.consensus([base, _sae_with_rows(a), _sae_with_rows(b)], 0.9)
    assert not ok[0] and ok[1:].all() and m["n_consensus"] == 3


def test_superset_random_baseline_counts_nesting_of_same_size_sets():
    m = A.superset_shares([{1, 2}, {1, 2}], np.array([0.0, 1.0]))  # both sets are the whole union
    assert m["share_nested_random_sets"] == 1.0 and m["share_lower_bias_superset"] == 1.0


class _DirEv:
    """The slice of EvalSet that direction_origin reads, over FakeLM-free hand-built activations."""

    def __init__(self, x, model):
        self.x, self.covered = [x], [torch.ones(x.shape[:2], dtype=torch.bool)]
        self.tokens, self.model, self.hook = [torch.zeros(x.shape[:2], dtype=torch.long)], model, "h"


def test_direction_origin_signs_on_a_hand_built_cluster():
    """Ultra-low encoder columns point against the mean activation and training pushed them that way:
    u has cos ~ -1 with the mean, and the descent direction (minus the gradient sum) cos ~ +1 with u."""
    from tests.conftest import FakeLM

    g = torch.Generator().manual_seed(0)
    d, n = 8, 6
    m = torch.linspace(1.0, 2.0, d)
    x = m + 0.1 * torch.randn(4, 16, d, generator=g)
    sae = SAE(d, n, seed=0)
    with torch.no_grad():
        sae.W_enc[:, :4] = -m[:, None] + 0.05 * torch.randn(d, 4, generator=g)  # the cluster
        sae.b_dec.zero_()
    freq = np.array([0.0, 1e-6, 0.0, 1e-6, 0.2, 0.3])
    grad = {"grad_sum": m[:, None].expand(d, n).clone(), "steps": torch.ones(n, dtype=torch.long)}
    res, u = A.direction_origin(sae, freq, _DirEv(x, FakeLM(d)), m.double(), None, grad, 1e-4)
    assert res["n_ultra_low"] == 4
    assert res["cos_mean_activation_eval"] < -0.95 and res["cos_mean_activation_cache"] < -0.95
    assert res["cos_mean_descent_direction"] > 0.95  # fails if the descent sign is flipped
    assert res["max_abs_cos_top_singular_vectors"] > 0.95 and res["share_in_span_mean_b_dec"] > 0.9


class _Ev:
    """The slice of EvalSet that splitting and firing_sets read."""

    def __init__(self, x):
        self.x = x

    def activations(self):
        yield self.x


def test_splitting_finds_a_partition():
    e = torch.eye(4)
    narrow = _sae_with_rows(torch.stack([e[0] + e[1], e[2]]))  # one feature spans two directions
    wide = _sae_with_rows(torch.stack([e[0] + 0.3 * e[1], 0.3 * e[0] + e[1], e[2], e[3]]))
    with torch.no_grad():
        wide.b_enc.fill_(-0.5)  # each child fires on its own direction only
    x = torch.cat([e[0].expand(5, 4), e[1].expand(5, 4), e[2].expand(3, 4)])  # children fire apart
    m, rows = A.splitting(narrow, wide, _Ev(x), 0.7)
    assert m["n_split"] == 1 and rows[0]["narrow"] == 0 and rows[0]["n_children"] == 2
    assert m["split_coverage_median"] == 1.0 and m["split_exclusivity_median"] == 1.0
    assert m["share_split_partitions"] == 1.0
    both = torch.cat([x, (e[0] + e[1]).expand(10, 4)])  # now mostly both children fire together
    m, _ = A.splitting(narrow, wide, _Ev(both), 0.7)
    assert m["split_exclusivity_median"] < 0.6 and m["share_split_partitions"] == 0.0
    live = np.array([True, True, False, True])  # wide feature 2 ultra-low: not a child
    m, rows = A.splitting(narrow, wide, _Ev(x), 0.7, np.array([False, True]), live)
    assert m["n_split"] == 0 and m["n_narrow_live"] == 1  # narrow feature 0 out of the pool: no parent for 0 and 1


def test_density_curve_and_held_dying_on_a_hand_built_history():
    # 4 features over 6 intervals of 1000 tokens; checks at 2000 and 4000 (window 2000)
    fires = {
        0: [0, 1, 0, 0, 0, 0],  # dying at the first check, then silent: steadily rarer
        1: [50, 60, 55, 40, 50, 50],  # healthy
        2: [0, 0, 3, 2, 20, 50],  # dying at the first check, then revives
        3: [9, 9, 0, 0, 0, 0],
    }  # healthy at the first check, dying at the second
    T = 6
    t = pa.table(
        {
            "tokens": [1000 * (i + 1) for i in range(T) for _ in range(4)],
            "feature": [f for _ in range(T) for f in range(4)],
            "fires": [fires[f][i] for i in range(T) for f in range(4)],
            "interval_tokens": [1000] * (4 * T),
        }
    )
    curve = A.density_curve(t, 1e-2)
    assert [c["frac_ultra_low"] for c in curve] == pytest.approx([0.75, 0.75, 0.75, 0.75, 0.5, 0.5])
    assert [c["frac_zero_fires"] for c in curve] == pytest.approx([0.5, 0.25, 0.5, 0.5, 0.5, 0.5])
    m, rows = A.held_dying(t, np.array([0, 1, 2, 3]), [2000, 4000], 2000, 1e-3, ultra_low=1e-2)
    assert m["n_held_dying"] == 3 and {r["feature"]: r["dying_since"] for r in rows} == {0: 2000, 2: 2000, 3: 4000}
    assert m["share_revived_above_ultra_low"] == pytest.approx(1 / 3)  # feature 2 (rate 0.05 later)
    assert m["share_fewer_fires_second_half"] == 0.0 and m["share_more_fires_second_half"] == pytest.approx(1 / 3)
    assert m["share_silent_throughout"] == pytest.approx(2 / 3)  # 0 and 3 never fire after their check
    assert m["control"]["watched_from"] == 2000 and m["control"]["n_watched"] == 1  # feature 1, never dying
    assert m["control"]["share_silent_throughout"] == 0.0
    m, _ = A.held_dying(t, np.array([0, 1]), [2000, 4000], 2000, 1e-3, ultra_low=1e-2)  # 2 and 3 not held
    assert m["n_held_dying"] == 1 and m["share_revived_above_ultra_low"] == 0.0
    rates = rates_after(t, 4000)
    assert rates == pytest.approx([0.0, 0.05, 0.035, 0.0])
    with pytest.raises(ValueError, match="one per feature"):  # a history with a missing row is refused
        rates_after(t.slice(1), 4000)


def test_watch_compares_equal_halves():
    """Fires 1, 5, 1 after the check: with the middle interval left out the halves are equal (an
    uneven split, 1 against 5 + 1, would call it 'more fires later')."""
    times, width = np.array([1000, 2000, 3000, 4000]), np.full(4, 1000)
    fires = np.array([[0, 1, 5, 1], [0, 1, 2, 3]])
    m = A.watch(times, fires, width, {0: 1000, 1: 1000}, ultra_low=1e-2)
    assert m["share_more_fires_second_half"] == 0.5 and m["share_fewer_fires_second_half"] == 0.0  # only feature 1
    assert m["fires_first_half_total"] == 2 and m["fires_second_half_total"] == 4
    assert m["median_fires_per_interval_first_half"] == 1.0 and m["median_fires_per_interval_second_half"] == 2.0


def test_cluster_stats_live_variant_leaves_dead_features_out():
    """Two live ultra-low features share a direction; three dead ones point anywhere. The
    all-features sameness is the dead columns' (the median is one of them), the live one is 1."""
    g = torch.Generator().manual_seed(3)
    sae = SAE(8, 6, seed=0)
    u = torch.randn(8, generator=g)
    with torch.no_grad():
        sae.W_enc[:, :2] = u[:, None]
        sae.W_enc[:, 2:5] = torch.randn(8, 3, generator=g)
    freq = np.array([1e-6, 2e-6, 0.0, 0.0, 0.0, 0.1])
    m = A.cluster_stats(sae, freq, 1e-4)
    assert (m["n_ultra_low"], m["n_ultra_low_live"]) == (5, 2)
    assert m["cluster_live_enc_cos_median"] == pytest.approx(1.0)
    assert m["cluster_enc_cos_median"] < 0.9
    m = A.cluster_stats(sae, np.array([1e-6, 0.0, 0.0, 0.0, 0.0, 0.1]), 1e-4)  # one live: no live sameness
    assert m["n_ultra_low_live"] == 1 and "cluster_live_enc_cos_median" not in m


def test_finetune_keeps_l0_and_cuts_the_error_of_a_shrunk_decoder():
    sae = _train()
    with torch.no_grad():
        sae.W_dec.mul_(0.5)  # a decoder that undershoots
    x = torch.cat([next(train_batches(seed=9)) for _ in range(4)])
    before = (sae(x).x_hat - x).pow(2).sum(-1).mean()
    for mode in ("scale", "decoder"):
        tuned = A.finetune(sae, train_batches(seed=5), 64 * 200, 1e-2, mode)
        assert torch.equal(tuned.encode(x) > 0, sae.encode(x) > 0)  # encoder frozen: same firing
        assert (tuned(x).x_hat - x).pow(2).sum(-1).mean() < 0.7 * before


# ------------------------------------------------------------------ params


def _params(**over) -> dict:
    q = yaml.safe_load((REPO / "research/questions/params.yaml").read_text())
    for k, v in over.items():
        q[k] = v
    return q


def test_committed_question_params_load(tmp_path):
    q = load_question_params(REPO / "research/questions/params.yaml")
    assert q.sae_config("base") == q.default.sae.model_copy(update={"checkpoint_every": 0})
    assert q.sae_config("width-8").expansion == 8 and q.sae_config("seed-3").seed == 3
    assert q.hook("mlp-out-a") == "blocks.0.hook_mlp_out" and q.hook("base") == q.default.activations.hook


@pytest.mark.parametrize(
    "change, match",
    [
        ({"derived_runs": {"orthogonal": {"probes": {"orthogonalize": "seed-1"}}}}, "density: true"),
        ({"derived_runs": {"orthogonal": {"probes": {"density": True}}}}, "orthogonalize exactly"),
        ({"hook_runs": {"mlp-out-a": {"sae": {"l1_coeff": 1.0}}}}, "hook"),
        ({"runs": {"base": {"probes": {"density": True}}}}, "grad_sum"),
    ],
)
def test_bad_question_params_are_refused_with_the_fix(change, match):
    q = _params()
    for section, runs in change.items():
        q[section] = {**q[section], **runs}
    q["runs"] = {**q["runs"]}
    with pytest.raises(Exception, match=match):
        QParams.model_validate(q)


@pytest.mark.parametrize(
    "answer, match",
    [
        ({"q10_drop_k": {"drop_k": [1], "drop_kk": 2}}, r"answer\.q10_drop_k\.drop_kk: unknown key"),
        ({"q10_dropk": {"drop_k": [1]}}, r"answer\.q10_dropk: not a registered question"),
        ({"q12_consensus": {"consensus_cos": 1.5}}, r"answer\.q12_consensus\.consensus_cos"),
        ({"q11_width": {"widths": ["width-1", "width-3"]}}, r"answer\.q11_width\.widths: \['width-3'\] are not runs"),
        ({"q4_dying": {"holdout": "seed-1"}}, r"answer\.q4_dying: runs\.seed-1\.probes: the holdout run needs"),
        ({"q2_orthogonal": {"run": "tied"}}, r"answer\.q2_orthogonal: run 'tied' sets no probes\.orthogonalize"),
        ({"q4_dying": {"unresampled": "seed-2"}}, r"answer\.q4_dying: runs\.seed-2\.probes: the unresampled run"),
    ],
)
def test_each_question_checks_its_own_section(answer, match):
    """A question's section is validated by its own module's Params (research/questions/registry.py): a typo, an
    unknown question, a bad value and a run that is missing or lacks the question's probe are refused by name."""
    q = _params()
    q["answer"] = {**q["answer"], **answer}
    with pytest.raises(Exception, match=match):
        QParams.model_validate(q)


def test_question_params_reach_the_question():
    """Each registered question gets its own validated section; a key left out takes the module's default."""
    q = _params()
    q["answer"] = {**q["answer"], "q10_drop_k": {"drop_k": [3]}}
    a = QParams.model_validate(q).answer
    assert a.params("q10_drop_k").drop_k == (3,)
    assert a.params("q12_consensus") == A.PARAMS["q12_consensus"].model_validate(q["answer"]["q12_consensus"])
    assert set(A.PARAMS) == set(A.QUESTIONS) and all(isinstance(a.params(k), A.PARAMS[k]) for k in A.QUESTIONS)


def test_a_bad_run_override_is_named(tmp_path):
    q = _params()
    q["runs"]["width-1"] = {"sae": {"expansion": -1}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(q))
    (tmp_path / "base.yaml").write_text((REPO / "params.yaml").read_text())
    q["base"] = "base.yaml"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(q))
    with pytest.raises(ConfigError, match="runs.width-1.sae"):
        load_question_params(tmp_path / "params.yaml")


# ------------------------------------------------------------------ the tiny pipeline


TINY_QUESTIONS = {
    "density_every": 2048,
    "hook_runs": {
        f"mlp-out-{c}": {"hook": "blocks.0.hook_mlp_out", "sae": {"d_sae": 64, "l1_coeff": v}}
        for c, v in zip("abc", (0.3, 1.0, 3.0))
    },
    "answer": {
        "eval_tokens": 2048,
        "batch_rows": 16,
        "q1_direction": {"n_contexts": 3},
        "q9_shrinkage": {"finetune_tokens": 4096},
        "q10_drop_k": {"drop_k": [1, 2]},
    },
}


@pytest.mark.slow(90)
def test_tiny_questions_pipeline_runs_with_dvc_repro(repo):
    """The default tiny pipeline (a copy of the session's), then `dvc repro` in research/questions/ (every stage,
    every question answered, the base run bit-identical to the default pipeline's SAE), then nothing left to rerun."""
    q = _params(**TINY_QUESTIONS)
    (repo / "research/questions/params.yaml").write_text(yaml.safe_dump(q, sort_keys=False))
    run_cmd(["dvc", "repro"], repo / "research/questions")
    res = json.loads((repo / "research/questions/results/answers.json").read_text())
    for key in (
        "q1_direction",
        "q2_orthogonal",
        "q3_resampling",
        "q4_dying",
        "q5_cluster_ablation",
        "q6_bias_supersets",
        "q7_hook",
        "q8_encoder",
        "q9_shrinkage",
        "q10_drop_k",
        "q11_width",
        "q12_consensus",
        "q4_dying_unresampled",
    ):
        assert res[key], key
    assert set(res["runs"]) == set(load_question_params(repo / "research/questions/params.yaml").every)
    for name, r in res["runs"].items():  # every run scored on the sample
        assert np.isfinite(r["ce_recovered_zero"]) and r["l0"] > 0 and 0 <= r["frac_ultra_low"] <= 1, name
    # the tiny params' own sections reach their questions (drop_k [1, 2]; 3 contexts): not the defaults
    assert set(res["q10_drop_k"]) == {"none_0"} | {f"{m}_{k}" for m in ("drop_lowest", "keep_top") for k in (1, 2)}
    top = repo / "research/questions/results/q1_top_contexts.csv"  # written when base has an ultra-low direction
    assert not top.exists() or len(list(csv.DictReader(top.open()))) == 3
    assert {"width-1_to_width-2", "width-2_to_base", "base_to_width-8"} <= set(res["q11_width"])
    assert res["q12_consensus"]["n_saes"] == 5 and len(res["q3_resampling"]) == 3
    assert res["q9_shrinkage"]["after_decoder"]["l0"] == pytest.approx(res["q9_shrinkage"]["before"]["l0"])
    base = SAE.load(repo / "research/questions/models/base")[0].state_dict()
    default = SAE.load(repo / "models/saes/seed-0")[0].state_dict()
    assert all(torch.equal(v, default[k]) for k, v in base.items())
    assert (repo / "research/questions/results/q4_ultra_low_share.png").exists()
    status = run_cmd(["dvc", "status", "dvc.yaml"], repo / "research/questions").stdout  # this pipeline's stages only
    assert "changed" not in status and "modified" not in status, status


def test_every_question_is_one_registered_module():
    """The twelve questions are registered in order, each by its own module, and the answer stage names none."""
    import importlib

    keys = list(A.QUESTIONS)
    assert [int(k.split("_")[0][1:]) for k in keys] == list(range(1, 13))
    mods = [A.QUESTIONS[k].__module__ for k in keys]
    assert len(set(mods)) == 12 and all(m.rsplit(".", 1)[1].startswith(f"q{i:02d}_") for i, m in enumerate(mods, 1))
    for m in mods:
        assert [k for k, fn in A.QUESTIONS.items() if fn.__module__ == m] == [keys[mods.index(m)]]
        assert importlib.import_module(m).__doc__.startswith("Question")
    stage = (REPO / "research/questions/stages/answer.py").read_text()
    assert not any(k in stage for k in keys), "the stage loops over the registry; a question lives in its module"


def test_a_question_key_cannot_be_registered_twice():
    """Registering a second answer under a taken key is refused (two modules would write one entry)."""
    with pytest.raises(ValueError, match="registered twice"):
        A.question("q1_direction")(lambda c, p: None)
