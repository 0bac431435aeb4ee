"""Synthetic worlds: the generator, the recovery metrics on hand-built cases, and the tiny pipeline."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from research.interpolate import at_l0
from research.synthetic.recovery import (
    absorption,
    by_decile,
    chance_mcc,
    firing_pr,
    hungarian,
    matched_l0,
    mcc,
    pos_cos,
    recovered,
    score,
    shrinkage,
    task_usage,
    verdict,
)
from research.synthetic.worlds import (
    EVAL,
    TRAIN,
    RecoverConfig,
    SynthParams,
    World,
    WorldConfig,
    firing_probs,
    load_world,
    write_world,
)
from saelab.data.cache import ActivationCache
from saelab.saes.base import SAE
from tests.test_pipeline import copy_code

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- the generator


def test_firing_laws_sum_to_l0_and_zipf_decreases():
    z = firing_probs(WorldConfig(n_features=100, l0=3.0, zipf_exponent=1.0))
    assert (
        z.sum() == pytest.approx(3.0, rel=1e-6)
        and (np.diff(z) <= 0).all()
        and z[0] / z[9] == pytest.approx(10, rel=1e-6)
    )
    c = firing_probs(WorldConfig(n_features=10, firing="constant", l0=2.0))
    np.testing.assert_allclose(c, 0.2)
    capped = firing_probs(WorldConfig(n_features=10, l0=9.0, zipf_exponent=2.0))  # c r_0 > 1: clipped, sum still l0
    assert capped.max() == 1.0 and capped.sum() == pytest.approx(9.0, rel=1e-6)


@pytest.mark.parametrize("geometry, kw", [("orthogonal", {}), ("random", {}), ("overlap", {"overlap": 0.5})])
def test_geometry(geometry, kw):
    w = World(WorldConfig(d=32, n_features=16, geometry=geometry, **kw))
    g = w.D @ w.D.T
    torch.testing.assert_close(g.diagonal(), torch.ones(16))
    off = g - torch.eye(16)
    if geometry == "orthogonal":
        assert off.abs().max() < 1e-5
    if geometry == "overlap":  # pairs (0,1), (2,3), ... share a direction: cosine ≈ 0.5, others ≈ 0
        pairs = torch.tensor([g[i, i + 1] for i in range(0, 16, 2)])
        assert pairs.mean() == pytest.approx(0.5, abs=0.1) and off[0, 2:].abs().mean() < 0.25
    if geometry == "random":  # independent directions: off-diagonal cosines spread around 0 at ~1/sqrt(d)
        assert off.abs().max() > 0.05 and off.abs().sum() / (16 * 15) == pytest.approx(
            (2 / math.pi / 32) ** 0.5, rel=0.35
        )
        assert not torch.equal(w.D, World(WorldConfig(d=32, n_features=16, geometry=geometry, seed=1)).D)


def test_hierarchy_tasks_and_correlation_follow_their_laws():
    cfg = WorldConfig(
        d=32,
        n_features=8,
        l0=4.0,
        firing="constant",
        n_parents=2,
        children=2,
        child_prob=0.5,
        n_tasks=2,
        task_size=3,
        task_prob=0.2,
        correlation=0.5,
        correlation_group=2,
    )
    w = World(cfg)
    x, c = w.sample(20000)
    on = c > 0
    lay = w.layout()
    for p, kids in zip(lay["parents"], lay["children"]):
        for ch in kids:
            assert not (on[:, ch] & ~on[:, p]).any()  # a child never fires without its parent
            assert (on[:, ch] & on[:, p]).sum() / on[:, p].sum() == pytest.approx(0.5, abs=0.05)
    for idx in lay["tasks"]:
        assert (on[:, idx].all(1) == on[:, idx].any(1)).all()  # a task's features fire together
        assert on[:, idx[0]].float().mean() == pytest.approx(0.2, abs=0.02)
        assert c[on[:, idx[0]]][:, idx].std(1).min() > 0  # ... with their own magnitudes
    member = 1  # leader 0; member fires alone w.p. 0.5, and with its leader's fires w.p. 0.5
    assert on[:, member].float().mean() == pytest.approx(0.5 + 0.5 * 0.5 * 0.5, abs=0.02)
    torch.testing.assert_close(x, c @ w.D)  # no noise: x is exactly the codes times the dictionary


def test_samples_are_reproducible_per_chunk_and_streams_differ():
    w = World(WorldConfig(d=8, n_features=16, noise=0.1))
    a, b = w.sample(100, TRAIN, 3), w.sample(100, TRAIN, 3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(w.sample(100, EVAL, 3)[0], a[0]) and not torch.equal(w.sample(100, TRAIN, 4)[0], a[0])


def test_written_world_is_an_ordinary_cache_and_reloads(tmp_path):
    cfg = WorldConfig(d=8, n_features=16, n_tokens=5000, chunk_tokens=2048, eval_tokens=1000)
    w = World(cfg)
    write_world(w, tmp_path)
    cache = ActivationCache(tmp_path)
    assert cache.n_tokens == 5000 and cache.d == 8 and len(cache.files) == 3
    got = torch.cat([g["x"] for g in cache.iter_tokens(("x",))])
    want = torch.cat([w.sample(n, TRAIN, i)[0] for i, n in enumerate([2048, 2048, 904])])
    torch.testing.assert_close(got.float(), want)
    back, info = load_world(tmp_path)
    assert torch.equal(back.D, w.D) and info["n_total"] == 16
    torch.testing.assert_close(cache.mean, want.mean(0))


def test_bad_worlds_and_runs_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="use geometry: random"):
        WorldConfig(d=4, n_features=8, geometry="orthogonal")
    with pytest.raises(ValueError, match="both n_tasks and task_size"):
        WorldConfig(n_tasks=2)
    with pytest.raises(ValueError, match="is not one of worlds"):
        SynthParams(worlds={"a": WorldConfig()}, runs={"r": {"world": "b"}})
    with pytest.raises(ValueError, match="runs.r.sae"):
        SynthParams(worlds={"a": WorldConfig()}, runs={"r": {"world": "a", "sae": {"architecture": "gated"}}})


# ---------------------------------------------------------------- recovery metrics, hand-built


def _perm_dictionary(D, seed=0):
    return D[torch.randperm(len(D), generator=torch.Generator().manual_seed(seed))]


def test_mcc_is_one_for_the_true_dictionary_in_any_order_and_scale_but_not_flipped():
    D = World(WorldConfig(d=32, n_features=20)).D
    assert mcc(pos_cos(D, D)) == pytest.approx(1.0)
    W = _perm_dictionary(D) * (
        torch.rand(20, 1, generator=torch.Generator().manual_seed(1)) * 3 + 0.1
    )  # permuted, rescaled
    assert mcc(pos_cos(W, D)) == pytest.approx(1.0)
    feats, lats = hungarian(pos_cos(W, D))
    assert torch.allclose(W[lats] / W[lats].norm(dim=-1, keepdim=True), D[feats], atol=1e-6)
    # a row pointing against d_i cannot reconstruct a non-negative feature: it earns nothing
    flipped = D.clone()
    flipped[:5] *= -1
    assert mcc(pos_cos(flipped, D)) == pytest.approx(15 / 20, abs=0.05)
    assert not recovered(pos_cos(flipped, D), 0.9)[:5].any()


def test_chance_mcc_is_the_floor_of_a_random_dictionary_and_rises_with_width():
    D = World(WorldConfig(d=32, n_features=64)).D
    lo, hi = chance_mcc(64, D), chance_mcc(1024, D)
    assert 0.1 < lo < hi < 0.9 and mcc(pos_cos(D, D)) > 0.999


def test_mcc_counts_missing_features_as_zero_and_rewards_no_duplicates():
    D = torch.eye(4)
    assert mcc(pos_cos(D[:2], D)) == pytest.approx(0.5)  # 2 latents for 4 features
    dup = torch.stack([D[0], D[0], D[0], D[0]])  # four copies of one feature: one-to-one matching credits it once
    assert mcc(pos_cos(dup, D)) == pytest.approx(0.25)
    assert recovered(pos_cos(dup, D), 0.9).tolist() == [True, False, False, False]


def test_recovery_by_frequency_decile_is_rarest_first():
    freq = np.arange(20) / 20.0
    hit = (np.arange(20) >= 10).astype(float)  # only the frequent half recovered
    assert by_decile(hit, freq, n=10) == [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
    assert by_decile(np.ones(3), np.arange(3), n=10)[3:] == [None] * 7  # fewer features than deciles


def test_firing_precision_recall_and_shrinkage_on_a_hand_built_latent():
    c = torch.tensor([[1.0], [2.0], [0.0], [0.0], [4.0], [2.0]])  # the true feature's magnitudes
    f = torch.tensor([[0.5], [1.0], [0.3], [0.9], [0.0], [1.8]])  # fires on 5 tokens, 3 of them right; misses one of 4
    prec, rec = firing_pr(f, c, np.array([0]), np.array([0]))
    assert prec[0] == pytest.approx(3 / 5) and rec[0] == pytest.approx(3 / 4)  # asymmetric: a swap fails
    D, W = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.6, 0.8]])  # W·d = 0.6
    # f/c on the three co-active tokens: 0.5, 0.5, 0.9 -> median 0.5 (the mean would be 0.633); the
    # latent-only tokens (f 0.3, 0.9 where c = 0) and the missed one must not enter
    assert shrinkage(f, c, W, D, np.array([0]), np.array([0]))[0] == pytest.approx(0.5 * 0.6)


def test_absorption_counts_child_latent_on_and_parent_latent_off_against_a_control():
    c = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 0.0], [1.0, 1.0], [1.0, 0.0]])  # parent 0, child 1
    f = torch.tensor([[0.0, 1.0], [1.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])  # latent 0 = parent's, 1 = child's
    absorbed, control = absorption(f, c, [(0, 1)], {0: 0, 1: 1})
    assert absorbed[0] == pytest.approx(2 / 3)  # 2 of the 3 joint tokens: child latent on, parent latent off
    assert control[0] == pytest.approx(1 / 2)  # the parent latent misses 1 of its 2 parent-only tokens
    assert np.isnan(absorption(f, c, [(0, 1)], {0: 0})[0][0])  # child unmatched: not measured


def test_task_usage_tells_directions_from_combinations():
    D = torch.eye(8)[:3]  # a task of m = 3 directions in R^8
    on = torch.ones(6, dtype=torch.bool)
    codes = torch.rand(6, 3, generator=torch.Generator().manual_seed(0)) + 0.5
    # directions: one latent per true direction
    u = task_usage(codes, D.clone(), D, on, 0.5)
    assert (
        u["n_eff"] == pytest.approx(3, rel=0.2)
        and u["dir_align"] == pytest.approx(1.0)
        and u["span_align"] == pytest.approx(1.0)
    )
    assert u["sum_align"] == pytest.approx(3**-0.5)  # each direction has cos 1/sqrt(3) with the sum
    assert verdict(u["dir_align"], u["span_align"], u["n_eff_per_direction"], 0.8) == "directions"
    # combinations: one latent per sign pattern of two directions (sums), all inside the span
    combos = torch.stack([D[0] + D[1], D[1] + D[2], D[0] + D[2], D.sum(0)])
    f = torch.rand(6, 4, generator=torch.Generator().manual_seed(1))
    u = task_usage(f, combos, D, on, 0.5)
    assert u["dir_align"] < 0.8 and u["span_align"] == pytest.approx(1.0) and u["n_eff_per_direction"] >= 1
    assert verdict(u["dir_align"], u["span_align"], u["n_eff_per_direction"], 0.8) == "combinations"
    # merged: one latent on the task's sum direction, fewer latents than directions
    u = task_usage(torch.ones(6, 1), D.sum(0, keepdim=True), D, on, 0.5)
    assert u["n_eff_per_direction"] == pytest.approx(1 / 3) and u["dir_align"] == pytest.approx(3**-0.5)
    assert u["sum_align"] == pytest.approx(1.0)  # the merged code is measured, not inferred from n_eff
    assert verdict(u["dir_align"], u["span_align"], u["n_eff_per_direction"], 0.8) == "merged"
    # latents outside the task's span do not count; mostly-outside latents give "neither"
    out = torch.eye(8)[5:7]
    assert task_usage(torch.ones(6, 2), out, D, on, 0.5)["n_latents"] == 0
    tilted = torch.stack([D[0] + 1.5 * torch.eye(8)[6]])  # 55% of its norm in the span: a task latent, poorly aligned
    u = task_usage(torch.ones(6, 1), tilted, D, on, 0.5)
    assert (
        u["span_align"] < 0.8 and verdict(u["dir_align"], u["span_align"], u["n_eff_per_direction"], 0.8) == "neither"
    )
    assert verdict(None, None, None, 0.8) == "neither"


def test_matched_l0_interpolation():
    assert at_l0([(1, 0.5), (4, 0.9)], 2) == pytest.approx(0.7)
    assert at_l0([(1, 0.5), (4, 0.9)], 8) is None


def test_matched_l0_never_interpolates_across_dictionary_sizes():
    """Two runs that bracket the true L0 but differ in d_sae are two groups, neither bracketed."""
    row = {"world": "w", "architecture": "topk", "true_l0": 2.0}
    rows = [{**row, "d_sae": 32, "l0": 1.0, "mcc": 0.5}, {**row, "d_sae": 128, "l0": 4.0, "mcc": 0.9}]
    m = matched_l0(rows)
    assert [(g["d_sae"], g["mcc_at_true_l0"]) for g in m] == [(32, None), (128, None)]
    m = matched_l0(rows + [{**row, "d_sae": 32, "l0": 4.0, "mcc": 0.7}])
    assert m[0]["mcc_at_true_l0"] == pytest.approx(0.6) and m[0]["n_runs"] == 2


def test_score_of_the_true_dictionary_as_an_sae():
    """An SAE whose decoder is the true dictionary and whose encoder reads the codes back exactly
    (orthogonal world, no noise; a bias of -1e-4 keeps float round-off from firing latents): MCC 1, every
    feature recovered, precision = recall = 1, no shrinkage."""
    w = World(WorldConfig(d=16, n_features=12, firing="constant", l0=1.0, geometry="orthogonal"))
    x, c = w.eval_sample(4000)
    sae = SAE(16, 12, seed=None)
    with torch.no_grad():
        sae.W_dec.copy_(w.D), sae.W_enc.copy_(w.D.T), sae.b_enc.fill_(-1e-4), sae.b_dec.zero_()
    m = score(sae, w, x, c, RecoverConfig())
    assert m["mcc"] == pytest.approx(1.0) and m["recovered_0.9"] == 1.0
    assert m["precision"] == pytest.approx(1.0) and m["recall"] == pytest.approx(1.0)
    assert m["shrinkage"] == pytest.approx(1.0, abs=1e-3) and m["mse"] < 1e-4 and m["l0"] == pytest.approx(m["true_l0"])


# ---------------------------------------------------------------- the pipeline


def _run(cmd, cwd, root=None, check=True):
    """``cmd`` with this venv's dvc and python, importing saelab from ``root``/src (the copy under test)."""
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "PYTHONPATH": f"{Path(root or cwd) / 'src'}:{Path(root or cwd)}",
    }
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and res.returncode:
        raise AssertionError(f"{cmd} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


@pytest.mark.slow(27)
def test_tiny_synthetic_pipeline_runs_with_dvc_repro(tmp_path):
    """`dvc repro` inside research/synthetic/ (tiny params): generate -> train matrix -> recover; nothing left to rerun;
    the orthogonal sanity world is recovered by the standard recipe."""
    copy_code(tmp_path)
    shutil.copy(REPO / "tests/synthetic_tiny_params.yaml", tmp_path / "research/synthetic/params.yaml")
    _run(["git", "init", "-q"], tmp_path)
    _run(["dvc", "init", "-q"], tmp_path)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny", "--allow-empty"], tmp_path)
    _run(["dvc", "repro"], tmp_path / "research/synthetic", tmp_path)
    out = json.loads((tmp_path / "research/synthetic/results/recovery.json").read_text())
    runs = {r["run"]: r for r in out["runs"]}
    assert set(runs) == set(yaml.safe_load((REPO / "tests/synthetic_tiny_params.yaml").read_text())["runs"])
    assert runs["ortho-standard"]["mcc"] > 0.9
    assert runs["mixed-topk"]["architecture"] == "topk" and runs["mixed-topk"]["task_size"] == 3
    for r in runs.values():  # the mixed world's hierarchy and tasks reach the scores
        assert (r.get("absorption_pairs") is not None) == (r["world"] == "mixed")
        assert (r.get("task_n_eff") is not None) == (r["world"] == "mixed")
        # every task_usage measure reaches the row
        assert (r.get("task_sum_align") is not None) == (r["world"] == "mixed")
        assert 0 < r["mcc_chance"] < 1 and 0 <= r["mcc"] <= 1
    for f in ("recovery.md", "recovery.csv", "compositional.png", "mcc_vs_l0_mixed.png"):
        assert (tmp_path / "research/synthetic/results" / f).exists(), f
    metrics = json.loads((tmp_path / "research/synthetic/metrics.json").read_text())
    assert "ortho-standard.mcc" in metrics
    assert "up to date" in _run(["dvc", "status"], tmp_path / "research/synthetic", tmp_path).stdout
    assert not list(tmp_path.rglob(".*.tmp"))


def test_bad_synthetic_params_stop_before_any_work(tmp_path):
    bad = yaml.safe_load((REPO / "tests/synthetic_tiny_params.yaml").read_text())
    bad["runs"]["oops"] = {"world": "nowhere"}
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(bad))
    res = _run(
        [
            sys.executable,
            "-m",
            "research.synthetic.stages.generate",
            "--params",
            str(p),
            "--world",
            "ortho",
            "--out",
            str(tmp_path / "out"),
        ],
        tmp_path,
        REPO,
        check=False,
    )
    assert res.returncode == 2 and "runs.oops.world" in res.stderr and not (tmp_path / "out").exists()
