"""Splicing every site at once (saelab.eval.sites): each set's CE by hand, propagation by hand, one metric path
with evaluate, and the degenerate cases (a perfect splice, one site)."""

import numpy as np
import pytest
import torch

from saelab.config import HOOK_SUFFIXES, EvaluateConfig, hook_position
from saelab.data.hooks import covered_positions, grab_into, splice
from saelab.data.lm import load_lm
from saelab.eval.evaluate import EvalSample, evaluate, token_ce
from saelab.eval.sites import (
    evaluate_sites,
    live_splice,
    splice_sets,
    worst_overlap,
)
from saelab.saes.base import SAE
from tests.conftest import identity_sae

PRE, POST, RESID = "blocks.0.hook_resid_pre", "blocks.0.mlp.hook_post", "blocks.0.hook_resid_post"
CFG = EvaluateConfig(ce_max_tokens=8 * 16, max_tokens=8 * 16, batch_rows=4)


def _sae(d, seed):
    sae = SAE(d, 4 * d, seed=seed)
    with torch.no_grad():
        sae.W_enc.mul_(3.0)  # a lossy but non-trivial reconstruction
    return sae


@pytest.fixture(scope="module")
def setup(tiny_lm):
    path, rows = tiny_lm
    lm = load_lm(path)
    saes = {RESID: _sae(32, 2), PRE: _sae(32, 0), POST: _sae(64, 1)}  # deliberately not in forward order
    return lm, rows, saes


def test_forward_order_is_the_order_the_lm_fires_its_hooks(setup):
    """HOOK_SUFFIXES (propagation's "later", a transcoder's input before its target) is the order a forward pass of
    the LM reaches the hook points."""
    lm, rows, _ = setup
    fired = []
    hooks = [(f"blocks.0.{suffix}", lambda x, hook, name=suffix: fired.append(name)) for suffix in HOOK_SUFFIXES]
    lm.model.run_with_hooks(torch.from_numpy(rows[:2].astype(np.int64)), fwd_hooks=hooks[::-1])
    assert fired == list(HOOK_SUFFIXES)


def test_a_splice_at_resid_mid_would_miss_the_residual_stream_so_it_is_refused(setup):
    """Why hook_resid_mid is refused: TransformerLens 4's bridge aliases it to ln2.hook_in, and zeroing it leaves the
    residual stream's clean value in resid_post (resid_post - mlp_out is the clean resid_mid, not 0)."""
    from saelab.config import hook_layer
    from saelab.data.hooks import check_hook
    from saelab.errors import InputError

    lm, rows, _ = setup
    tokens = torch.from_numpy(rows[:2].astype(np.int64))
    clean, got = {}, {}
    lm.model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_resid_mid", grab_into(clean, "mid"))])
    lm.model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_resid_mid", lambda x, hook: torch.zeros_like(x)),
                                               ("blocks.0.hook_mlp_out", grab_into(got, "mlp")),
                                               ("blocks.0.hook_resid_post", grab_into(got, "post"))])  # fmt: skip
    torch.testing.assert_close(got["post"] - got["mlp"], clean["mid"])
    assert clean["mid"].abs().max() > 0
    with pytest.raises(ValueError, match="aliases it to ln2.hook_in"):
        hook_layer("blocks.0.hook_resid_mid")
    with pytest.raises(InputError, match="aliases it to ln2.hook_in"):
        check_hook("blocks.0.hook_resid_mid", lm.config["tl_config"])


def test_sites_sort_in_forward_order_and_sets_cover_alone_all_and_leave_one_out():
    assert sorted([RESID, POST, "blocks.1.hook_resid_pre", PRE], key=hook_position) == [
        PRE, POST, RESID, "blocks.1.hook_resid_pre"]  # fmt: skip
    assert splice_sets([PRE]) == {f"alone:{PRE}": (PRE,)}  # one site: all is that site alone, not spliced twice
    sets = splice_sets([PRE, POST])
    assert sets["all"] == (PRE, POST) and sets[f"without:{PRE}"] == (POST,) and sets[f"alone:{POST}"] == (POST,)


def test_each_set_and_the_propagation_equal_a_hand_computation(setup):
    lm, rows, saes = setup
    m, arrays = evaluate_sites(lm.model, saes, rows, CFG, "cpu", lm.bos_token_id)
    assert m["sites"] == [PRE, POST, RESID]
    sample = EvalSample.draw(len(rows), rows.shape[1], CFG.ce_max_tokens, CFG)
    tokens = torch.from_numpy(rows[sample.ce].astype(np.int64))  # the CE rows, in one batch
    covered = covered_positions(tokens, lm.bos_token_id)
    clean = {}
    ce_clean = token_ce(lm.model.run_with_hooks(tokens, fwd_hooks=[(h, grab_into(clean, h)) for h in saes]), tokens)
    # all three by hand: each SAE reads what the earlier splices made of its input, computed pass by pass
    values, hooks = {}, []
    for h in (PRE, POST, RESID):
        got = {}
        lm.model.run_with_hooks(tokens, fwd_hooks=[*hooks, (h, grab_into(got, h))])
        values[h] = saes[h](got[h].reshape(-1, got[h].shape[-1]))[0]
        hooks.append((h, splice(values[h], keep=~covered)))
    ce_all = token_ce(lm.model.run_with_hooks(tokens, fwd_hooks=hooks), tokens)
    torch.testing.assert_close(m["ce_clean"], ce_clean.double().mean().item(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(m["all"]["ce"], ce_all.double().mean().item(), rtol=1e-5, atol=1e-5)
    assert m["all"]["ce_increase"] == pytest.approx(m["all"]["ce"] - m["ce_clean"])
    # leave-one-out without POST: PRE and RESID only, RESID reading what PRE's splice made of it
    pair = [(PRE, live_splice(saes[PRE], covered)), (RESID, live_splice(saes[RESID], covered))]
    ce_wo = token_ce(lm.model.run_with_hooks(tokens, fwd_hooks=pair), tokens)
    row = m["per_site"][POST]
    assert row["ce_increase_without"] == pytest.approx(ce_wo.double().mean().item() - m["ce_clean"], abs=1e-5)
    assert row["marginal_ce_increase"] == pytest.approx(m["all"]["ce"] - ce_wo.double().mean().item(), abs=1e-5)
    # propagation: PRE alone, relative error at POST and RESID (covered tokens), against their clean activations
    got = {}
    lm.model.run_with_hooks(tokens, fwd_hooks=[(PRE, live_splice(saes[PRE], covered)), (POST, grab_into(got, POST)),
                                               (RESID, grab_into(got, RESID))])  # fmt: skip
    keep = covered.reshape(-1)
    for h in (PRE, POST, RESID):  # the mean activation norm over covered tokens
        want = clean[h].reshape(-1, clean[h].shape[-1])[keep].double().norm(dim=-1).mean().item()
        assert m["per_site"][h]["mean_norm"] == pytest.approx(want, rel=1e-5), h
    for to in (POST, RESID):
        a, c = (t.reshape(-1, t.shape[-1])[keep].double() for t in (got[to], clean[to]))
        want = (a - c).pow(2).sum().item() / c.pow(2).sum().item()
        assert m["per_site"][PRE]["propagated_relative_error"][to] == pytest.approx(want, rel=1e-5)
    assert set(m["per_site"][POST]["propagated_relative_error"]) == {RESID}
    assert m["per_site"][RESID]["propagated_relative_error"] == {}
    # per token: the arrays are in CE-row order; covered = predictions made from a non-BOS position
    assert (arrays["covered"] == (tokens[:, :-1] != lm.bos_token_id).reshape(-1).numpy()).all()
    torch.testing.assert_close(torch.from_numpy(arrays["ce:clean"]).float(), ce_clean.reshape(-1), rtol=1e-5, atol=1e-5)
    alone = {}
    for h in (PRE, POST, RESID):
        ce_h = token_ce(lm.model.run_with_hooks(tokens, fwd_hooks=[(h, live_splice(saes[h], covered))]), tokens)
        zero = token_ce(lm.model.run_with_hooks(tokens, fwd_hooks=[(h, lambda x, hook: torch.where(
            covered[..., None], torch.zeros_like(x), x))]), tokens)  # fmt: skip
        alone[h] = (ce_h - ce_clean).detach().reshape(-1).double().numpy()
        want = (zero.double().mean() - ce_h.double().mean()) / (zero.double().mean() - ce_clean.double().mean())
        assert m["per_site"][h]["ce_recovered_zero_alone"] == pytest.approx(want.item(), abs=1e-5), h
    keep = arrays["covered"]
    want = np.corrcoef(alone[PRE][keep], alone[RESID][keep])[0, 1]
    assert m["ce_diff_corr"][PRE][RESID] == pytest.approx(want, abs=1e-4)
    n = round(0.01 * keep.sum())
    top = [set(np.argsort(-alone[h][keep], kind="stable")[: max(1, n)]) for h in (PRE, POST)]
    assert m["worst_token_overlap"]["jaccard"][PRE][POST] == pytest.approx(len(top[0] & top[1]) / len(top[0] | top[1]))
    assert m["all"]["additivity"] == pytest.approx(
        m["all"]["ce_increase"] / sum(m["per_site"][h]["ce_increase_alone"] for h in saes)
    )


def test_a_transcoder_is_spliced_from_its_input_as_the_spliced_pass_computes_it(setup):
    """A transcoder member ``input->target`` replaces its target with its output on the input the pass computes: in
    ``all`` after an earlier SAE's splice (by hand, pass by pass); its statistics are against the clean target; it
    counts as a site at its target for propagation and zero ablation; in the continuations it is spliced too."""
    from saelab.config import SpliceConfig
    from saelab.eval.sites import generations

    lm, rows, saes = setup
    src, tgt = "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out"
    tc = _sae(32, 3)
    tc.transcoder = True
    name = f"{src}->{tgt}"
    m, _ = evaluate_sites(lm.model, {PRE: saes[PRE], name: tc}, rows, CFG, "cpu", lm.bos_token_id)
    assert m["sites"] == [PRE, name]
    sample = EvalSample.draw(len(rows), rows.shape[1], CFG.ce_max_tokens, CFG)
    tokens = torch.from_numpy(rows[sample.ce].astype(np.int64))
    covered = covered_positions(tokens, lm.bos_token_id)
    keep = covered.reshape(-1)
    clean = {}
    lm.model.run_with_hooks(tokens, fwd_hooks=[(h, grab_into(clean, h)) for h in (PRE, src, tgt)])
    flat = lambda t: t.reshape(-1, t.shape[-1])  # noqa: E731
    pre_hook = (PRE, live_splice(saes[PRE], covered))
    got = {}
    lm.model.run_with_hooks(tokens, fwd_hooks=[pre_hook, (src, grab_into(got, src))])
    assert not torch.allclose(got[src][covered], clean[src][covered])  # the input the earlier splice moved
    out = tc(flat(got[src]))[0]
    ce_all = token_ce(lm.model.run_with_hooks(tokens, fwd_hooks=[pre_hook, (tgt, splice(out, keep=~covered))]), tokens)
    assert m["all"]["ce"] == pytest.approx(ce_all.double().mean().item(), abs=1e-5)
    alone = token_ce(lm.model.run_with_hooks(tokens, fwd_hooks=[(tgt, splice(tc(flat(clean[src]))[0], keep=~covered))]),
                     tokens)  # fmt: skip
    row = m["per_site"][name]
    assert row["ce_increase_alone"] == pytest.approx(alone.double().mean().item() - m["ce_clean"], abs=1e-5)
    x, x_hat = flat(clean[tgt])[keep], tc(flat(clean[src])[keep])[0]
    assert row["mse"] == pytest.approx((x_hat - x).pow(2).sum(-1).mean().item(), rel=1e-5)
    assert row["mean_norm"] == pytest.approx(x.norm(dim=-1).mean().item(), rel=1e-5)
    zero = token_ce(lm.model.run_with_hooks(tokens, fwd_hooks=[(tgt, lambda a, hook: torch.where(
        covered[..., None], torch.zeros_like(a), a))]), tokens)  # fmt: skip
    assert row["ce_zero_ablation"] == pytest.approx(zero.double().mean().item(), abs=1e-5)
    assert set(m["per_site"][PRE]["propagated_relative_error"]) == {name} and row["propagated_relative_error"] == {}
    # an SAE at the transcoder's target: in all, the transcoder replaces the target after it, so it costs nothing
    tie, _ = evaluate_sites(lm.model, {tgt: _sae(32, 4), name: tc}, rows, CFG, "cpu", lm.bos_token_id)
    assert tie["all"]["ce"] == pytest.approx(alone.double().mean().item(), abs=1e-5)
    assert tie["per_site"][tgt]["marginal_ce_increase"] == pytest.approx(0, abs=1e-6)
    assert tie["per_site"][tgt]["ce_increase_alone"] != pytest.approx(row["ce_increase_alone"], abs=1e-4)
    gen = SpliceConfig(n_prompts=2, prompt_tokens=6, new_tokens=3, seed=1)
    _, with_tc = generations(lm.model, {name: tc}, rows, CFG, gen, "cpu", lm.bos_token_id, lm.tokenizer.decode)
    _, perfect = generations(lm.model, {PRE: identity_sae(32)}, rows, CFG, gen, "cpu", lm.bos_token_id,
                             lm.tokenizer.decode)  # fmt: skip
    assert perfect["greedy_diverged_share"] == 0 and with_tc["greedy_diverged_share"] > 0  # the transcoder is in


def test_splice_hooks_order_members_the_same_way_whatever_order_they_come_in(setup):
    """SAE splices first, then transcoders by target: a transcoder reads its input after an SAE spliced there and
    after an earlier transcoder's output replaced it, in `all` and in the continuations alike."""
    from saelab.config import SpliceConfig
    from saelab.eval.sites import generations, splice_hooks

    lm, rows, saes = setup
    x, y, z = "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out", PRE.replace("pre", "post")
    first, second = _sae(32, 5), _sae(32, 6)
    first.transcoder = second.transcoder = True
    chain = {f"{y}->{z}": second, f"{x}->{y}": first, x: _sae(32, 7)}  # listed against forward order
    covered = torch.ones(1, 4, dtype=torch.bool)
    for order in (list(chain), list(chain)[::-1]):
        assert [h for h, _ in splice_hooks(chain, order, covered)] == [x, x, y, y, z]  # SAE, grab, out, grab, out
    gen = SpliceConfig(n_prompts=2, prompt_tokens=6, new_tokens=4, seed=1)
    outs = [generations(lm.model, dict(items), rows, CFG, gen, "cpu", lm.bos_token_id, lm.tokenizer.decode)[0]
            for items in (list(chain.items()), list(chain.items())[::-1])]  # fmt: skip
    assert [r["greedy"]["spliced_ids"] for r in outs[0]] == [r["greedy"]["spliced_ids"] for r in outs[1]]


def test_one_site_alone_agrees_with_evaluate(setup):
    """The single-SAE numbers come from the same definitions as evaluate's: CE of the splice, zero ablation,
    CE recovered and the reconstruction statistics, on the same rows."""
    lm, rows, saes = setup
    ev, _ = evaluate(lm.model, saes[POST], rows, POST, torch.zeros(64), CFG, "cpu", lm.bos_token_id, progress=False)
    m, _ = evaluate_sites(lm.model, {POST: saes[POST]}, rows, CFG, "cpu", lm.bos_token_id)
    row = m["per_site"][POST]
    assert m["ce_clean"] == pytest.approx(ev["ce_clean"], rel=1e-6)
    assert row["ce_increase_alone"] == pytest.approx(ev["ce_sae"] - ev["ce_clean"], abs=1e-5)
    assert row["ce_recovered_zero_alone"] == pytest.approx(ev["ce_recovered_zero"], abs=1e-5)
    for k in ("mse", "explained_variance", "l0", "l2_ratio", "frac_dead", "eval_tokens"):
        assert row[k] == pytest.approx(ev[k], rel=1e-6), k
    assert m["all"]["ce"] == pytest.approx(ev["ce_sae"], abs=1e-5)  # one site: all is that site alone
    assert m["all"]["additivity"] == pytest.approx(1.0) and "ce_increase_without" not in row
    wider = EvaluateConfig(ce_max_tokens=CFG.ce_max_tokens, max_tokens=4 * CFG.max_tokens, batch_rows=4)
    m2, _ = evaluate_sites(lm.model, {POST: saes[POST]}, rows, wider, "cpu", lm.bos_token_id)
    assert m2["ce_eval_tokens"] == m["ce_eval_tokens"] and m2["per_site"][POST]["l0"] == row["l0"]  # CE rows only


def test_perfect_splices_cost_nothing_and_leave_correlations_undefined(setup):
    """Exact reconstructions at every site: every CE equals the clean one, no propagated error, additivity and
    the CE-difference correlations undefined (None), never a crash."""
    lm, rows, _ = setup
    saes = {PRE: identity_sae(32), POST: identity_sae(64)}
    m, _ = evaluate_sites(lm.model, saes, rows, CFG, "cpu", lm.bos_token_id)
    assert abs(m["all"]["ce_increase"]) < 1e-5 and m["per_site"][PRE]["propagated_relative_error"][POST] < 1e-10
    assert m["all"]["additivity"] is None and m["ce_diff_corr"][PRE][POST] is None
    assert m["worst_token_overlap"]["jaccard"][PRE][POST] is None
    assert m["per_site"][POST]["explained_variance"] == pytest.approx(1.0, abs=1e-6)


def test_worst_overlap_by_hand():
    a, b = np.array([5.0, 4, 3, 2, 1, 0]), np.array([0.0, 4, 5, 2, 1, 3])
    assert worst_overlap(a, b, 2 / 6) == pytest.approx(1 / 3)  # {0,1} vs {2,1}: one shared of three
    assert worst_overlap(a, a, 0.5) == 1.0


def test_argmax_changed_is_the_share_of_predictions_whose_top_token_moves(setup):
    lm, rows, saes = setup
    m, arrays = evaluate_sites(lm.model, {POST: saes[POST]}, rows, CFG, "cpu", lm.bos_token_id)
    sample = EvalSample.draw(len(rows), rows.shape[1], CFG.ce_max_tokens, CFG)
    tokens = torch.from_numpy(rows[sample.ce].astype(np.int64))
    covered = covered_positions(tokens, lm.bos_token_id)
    with torch.no_grad():
        clean = lm.model(tokens)[:, :-1].argmax(-1)
        spliced = lm.model.run_with_hooks(tokens, fwd_hooks=[(POST, live_splice(saes[POST], covered))])[:, :-1]
    moved = (spliced.argmax(-1) != clean)[covered[:, :-1]].float().mean().item()
    assert 0 < moved < 1
    assert m["per_site"][POST]["argmax_changed_alone"] == pytest.approx(moved) == m["all"]["argmax_changed"]


def test_generations_follow_the_models_and_mark_where_they_part(setup):
    """Greedy continuations equal a hand decoding loop; perfect SAEs never change a continuation (greedy or sampled,
    the shared random stream); a lossy SAE's spliced continuation parts from the clean one at first_divergence."""
    from saelab.config import SpliceConfig
    from saelab.eval.sites import first_divergence, generations

    lm, rows, saes = setup
    gen = SpliceConfig(n_prompts=3, prompt_tokens=6, new_tokens=5, seed=1)
    decode = lm.tokenizer.decode
    perfect = {PRE: identity_sae(32), POST: identity_sae(64)}
    records, summary = generations(lm.model, perfect, rows, CFG, gen, "cpu", lm.bos_token_id, decode)
    assert summary["greedy_diverged_share"] == 0 and summary["sampled_diverged_share"] == 0
    assert all(r[m]["clean_ids"] == r[m]["spliced_ids"] for r in records for m in ("greedy", "sampled"))
    records, summary = generations(lm.model, saes, rows, CFG, gen, "cpu", lm.bos_token_id, decode)
    sample = EvalSample.draw(len(rows), rows.shape[1], CFG.ce_max_tokens, CFG)
    seq = torch.from_numpy(rows[sample.ce[:3], :6].astype(np.int64))
    for _ in range(5):  # greedy by hand, clean model
        with torch.no_grad():
            seq = torch.cat([seq, lm.model(seq)[:, -1].argmax(-1, keepdim=True)], 1)
    for r, want in zip(records, seq[:, 6:].tolist()):
        g = r["greedy"]
        assert g["clean_ids"] == want and g["clean"] == decode(want)
        first = g["first_divergence"]
        assert first == first_divergence(g["clean_ids"], g["spliced_ids"])
        if first is not None:
            assert g["clean_ids"][:first] == g["spliced_ids"][:first] and g["agreed"] == decode(want[:first])
        # the browser's token-by-token view: the hand-run greedy tokens one at a time, and as many on the spliced side
        assert g["clean_pieces"] == [decode([t]) for t in want] and len(g["spliced_pieces"]) == 5
        assert (
            g["spliced_pieces"][:first] == g["clean_pieces"][:first]
            if first is not None
            else g["spliced_pieces"] == g["clean_pieces"]
        )
    assert first_divergence([1, 2, 3], [1, 2, 4]) == 2 and first_divergence([1, 2], [1, 2]) is None
    assert 0 < summary["greedy_diverged_share"] <= 1 and summary["n_prompts"] == 3  # the lossy SAEs do part
    assert summary["prompt_tokens"] == 6 and summary["new_tokens"] == 5
    for mode in ("greedy", "sampled"):
        firsts = [r[mode]["first_divergence"] for r in records]
        parted = [f for f in firsts if f is not None]
        assert summary[f"{mode}_diverged_share"] == pytest.approx(len(parted) / 3)
        assert summary[f"{mode}_first_divergence_median"] == (float(np.median(parted)) if parted else None)
    prompts = torch.from_numpy(rows[sample.ce[:3], :6].astype(np.int64))
    seq, rng = prompts, torch.Generator().manual_seed(1)  # sampled by hand, clean model, temperature 1
    for _ in range(5):
        with torch.no_grad():
            p = torch.softmax(lm.model(seq)[:, -1].float(), -1)
        seq = torch.cat([seq, torch.multinomial(p, 1, generator=rng)], 1)
    for r, row, want in zip(records, sample.ce[:3], seq[:, 6:].tolist()):
        assert r["row"] == int(row) and r["prompt"] == decode(rows[row, :6].tolist())
        assert r["sampled"]["clean_ids"] == want
        assert r["greedy"]["spliced"] == decode(r["greedy"]["spliced_ids"])


def test_summarize_sites_by_hand_on_small_arrays():
    """Every summary field from hand-made per-token arrays and sums: CE means and increases, CE recovered with
    each set's own zero ablation, additivity, leave-one-out and marginal costs, uncentred relative errors,
    propagated errors, argmax changes, and the correlations and overlaps over covered predictions only."""
    from saelab.eval.metrics import ReconSums
    from saelab.eval.sites import SiteSums, summarize_sites

    a, b = "blocks.0.hook_resid_pre", "blocks.0.hook_resid_post"
    covered = np.array([1, 1, 1, 0, 1, 1], dtype=bool)
    clean = np.array([1.0, 2.0, 3.0, 9.0, 1.0, 2.0])
    arrays = {
        "covered": covered,
        "ce:clean": clean,
        f"ce:alone:{a}": clean + [0.5, 0.0, 1.0, 7.0, 0.0, 0.1],
        f"ce:alone:{b}": clean + [0.2, 0.4, 0.0, -0.3, 0.6, 0.2],
        "ce:all": clean + [0.6, 0.4, 1.0, 5.0, 0.6, 0.3],
        f"ce:without:{a}": clean + [0.2, 0.4, 0.0, 1.0, 0.6, 0.2],
        f"ce:without:{b}": clean + [0.5, 0.0, 1.0, 2.0, 0.0, 0.1],
        "ce:zero:all": clean + 10.0,
        f"ce:zero:{a}": clean + 4.0,
        f"ce:zero:{b}": clean + 8.0,
        "argmax:clean": np.array([1, 2, 3, 4, 5, 6]),
        "argmax:all": np.array([1, 0, 3, 0, 0, 6]),  # changes at positions 1, 3 (uncovered) and 4
        f"argmax:alone:{a}": np.array([1, 2, 3, 0, 5, 6]),  # only the uncovered one changes
        f"argmax:alone:{b}": np.array([0, 2, 3, 4, 5, 6]),
    }
    s = SiteSums()
    x = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    for h, x_hat in ((a, torch.tensor([[3.0, 3.0], [0.0, 2.0]])), (b, torch.tensor([[0.0, 4.0], [0.0, 0.0]]))):
        s.recon[h] = ReconSums().add(x, x_hat, torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
        s.norm_sum[h] = 7.0  # ‖(3,4)‖ + ‖(0,2)‖
        assert s.recon[h].sum_sq == 29.0  # 25 + 4: the relative errors' denominator
    s.prop_err[(a, b)] = 2.9
    m = summarize_sites([a, b], arrays, s, EvaluateConfig())
    inc = {h: float((arrays[f"ce:alone:{h}"] - clean).mean()) for h in (a, b)}
    all_inc = float((arrays["ce:all"] - clean).mean())
    assert m["ce_clean"] == pytest.approx(clean.mean()) and m["ce_eval_tokens"] == 6
    assert m["all"]["ce_increase"] == pytest.approx(all_inc) and m["all"]["ce"] == pytest.approx(clean.mean() + all_inc)
    assert m["all"]["ce_zero_ablation"] == pytest.approx(clean.mean() + 10)
    assert m["all"]["ce_recovered_zero"] == pytest.approx((10 - all_inc) / 10)
    assert m["all"]["sum_of_alone_increases"] == pytest.approx(inc[a] + inc[b])
    assert m["all"]["additivity"] == pytest.approx(all_inc / (inc[a] + inc[b]))
    ra, rb = m["per_site"][a], m["per_site"][b]
    assert ra["ce_increase_alone"] == pytest.approx(inc[a]) and rb["ce_increase_alone"] == pytest.approx(inc[b])
    assert ra["ce_recovered_zero_alone"] == pytest.approx((4 - inc[a]) / 4)
    assert rb["ce_recovered_zero_alone"] == pytest.approx((8 - inc[b]) / 8) and rb["ce_zero_ablation"] == pytest.approx(
        clean.mean() + 8)  # fmt: skip
    wo = float((arrays[f"ce:without:{a}"] - clean).mean())
    assert ra["ce_increase_without"] == pytest.approx(wo) and ra["marginal_ce_increase"] == pytest.approx(all_inc - wo)
    assert ra["relative_error"] == pytest.approx(1 / 29) and rb["relative_error"] == pytest.approx((9 + 4) / 29)
    assert ra["mean_norm"] == pytest.approx(3.5) and ra["l0"] == pytest.approx(0.5) and ra["frac_dead"] == 0.5
    assert ra["propagated_relative_error"] == {b: pytest.approx(0.1)} and rb["propagated_relative_error"] == {}
    assert m["all"]["argmax_changed"] == pytest.approx(2 / 5) and ra["argmax_changed_alone"] == 0.0
    assert rb["argmax_changed_alone"] == pytest.approx(1 / 5)
    da, db = (arrays[f"ce:alone:{h}"][covered] - clean[covered] for h in (a, b))
    d_all = arrays["ce:all"][covered] - clean[covered]
    assert m["ce_diff_corr"][a][b] == pytest.approx(np.corrcoef(da, db)[0, 1])
    assert ra["ce_diff_corr_with_all"] == pytest.approx(np.corrcoef(da, d_all)[0, 1])
    assert m["worst_token_overlap"]["share"] == 0.01
    assert m["worst_token_overlap"]["jaccard"][a][b] == 0.0  # worst covered token: index 2 for a, 3 (of 5) for b
    assert summarize_sites([a, b], arrays | {f"ce:alone:{b}": clean.copy()}, s, EvaluateConfig())["all"][
        "additivity"] is None  # a free SAE: no ratio  # fmt: skip


def test_degenerate_series_and_zero_activations_give_none_not_a_crash():
    """A constant series (either one) has no correlation and no worst tokens; a series of std exactly 1 is not
    constant; a site whose clean activations are all zero has no relative error; the worst share is a count."""
    from saelab.eval.metrics import ReconSums
    from saelab.eval.sites import SiteSums, correlation, summarize_sites

    flat, unit, other = np.zeros(4), np.array([0.0, 2.0, 0.0, 2.0]), np.array([1.0, 3.0, 0.0, 2.0])
    assert unit.std() == 1.0
    for f in (correlation, lambda x, y: worst_overlap(x, y, 0.5)):
        assert f(flat, unit) is None and f(unit, flat) is None and f(unit, other) is not None
    a, b = np.array([3.0, 2.0, 1.0, 0.0]), np.array([3.0, 0.0, 2.0, 1.0])
    assert worst_overlap(a, b, 0.25) == 1.0 and worst_overlap(a, b, 0.5) == pytest.approx(1 / 3)
    h, g = "blocks.0.hook_resid_pre", "blocks.0.hook_resid_post"
    arrays = {"covered": np.ones(2, dtype=bool), "ce:clean": np.array([1.0, 1.0])}
    for name in ("all", f"alone:{h}", f"alone:{g}", f"without:{h}", f"without:{g}", "zero:all", f"zero:{h}",
                 f"zero:{g}"):  # fmt: skip
        arrays[f"ce:{name}"] = np.array([1.5, 2.0])
    for name in ("clean", "all", f"alone:{h}", f"alone:{g}"):
        arrays[f"argmax:{name}"] = np.array([0, 0])
    s = SiteSums()
    for site, x in ((h, torch.zeros(1, 2)), (g, torch.tensor([[0.5, 0.5]]))):  # Σ‖x‖² 0 and 0.5, x̂ = x
        s.recon[site] = ReconSums().add(x, x.clone(), torch.zeros(1, 2))
        s.norm_sum[site] = 0.0
    s.prop_err[(h, g)], s.prop_err[(g, h)] = 0.25, 0.25
    m = summarize_sites([h, g], arrays, s, EvaluateConfig())
    assert m["per_site"][h]["relative_error"] is None and m["per_site"][g]["relative_error"] == 0.0
    assert m["per_site"][h]["propagated_relative_error"] == {g: 0.5}
    assert m["per_site"][g]["propagated_relative_error"] == {h: None}
