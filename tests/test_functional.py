"""Functional losses (sae.loss: kl | kl_ds): the KL and downstream MSE by hand on the tiny LM, an identity splice
costs nothing, gradients reach the SAE and never the LM, and bad combinations are refused before any work."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from saelab.config import FunctionalParams, SAEConfig
from saelab.data.lm import load_lm
from saelab.errors import InputError
from saelab.registry import build
from saelab.saes import BUILTINS as ARCHITECTURES
from saelab.saes.base import TrainOutput
from saelab.training.objective import Functional, downstream_hooks, prompt_batches
from saelab.training.trainer import Trainer

HOOK = "blocks.0.mlp.hook_post"


def _functional(tiny_lm, loss="kl", **weights):
    lm = load_lm(tiny_lm[0], torch.device("cpu"))
    return lm, Functional(lm.model, HOOK, 0, 1, loss, FunctionalParams(**weights), lm.bos_token_id)


def _weight(model, suffix):
    return next(p for n, p in model.named_parameters() if n.endswith(suffix)).detach()


def _out(x_hat, loss=0.0, mse=0.0, aux=None):
    z = torch.zeros(())
    aux = None if aux is None else torch.tensor(aux)
    return TrainOutput(torch.tensor(loss), torch.tensor(mse), (z,), z, z, x_hat, aux)


def _prepared(lm, fn, rows, n=4):
    tokens = torch.from_numpy(rows[:n].astype(np.int64))
    x, batch = fn.prepare(tokens)
    got = {}
    lm.model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_resid_post", lambda t, hook: got.setdefault("r", t))])
    return x, batch, got["r"].detach()  # the clean residual stream, from a pass of its own


def test_kl_and_downstream_mse_equal_a_hand_computation(tiny_lm):
    lm, fn = _functional(tiny_lm, "kl_ds", kl_coeff=2.0, mse_coeff=0.5, ds_coeff=3.0)
    x, batch, resid_clean = _prepared(lm, fn, tiny_lm[1])
    assert fn.sites == ["blocks.0.hook_resid_post"]
    assert batch.covered.sum() == batch.covered.numel() - (batch.tokens == lm.bos_token_id).sum() > 0
    torch.testing.assert_close(x, batch.acts[batch.tokens != lm.bos_token_id])
    x_hat = x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    loss, (kl, ds) = fn.loss(_out(x_hat, loss=1.25, mse=1.0), batch)

    # by hand: the MLP's output moves by (x̂ − x) W_outᵀ at covered positions, then the final LayerNorm and unembed
    delta = torch.zeros_like(batch.acts)
    delta[batch.covered] = x_hat - x
    resid = resid_clean + delta @ _weight(lm.model, "fc_out._original_component.weight").T
    normed = F.layer_norm(resid, (resid.shape[-1],), _weight(lm.model, "ln_out._original_component.weight"),
                          _weight(lm.model, "ln_out._original_component.bias"), eps=1e-5)  # fmt: skip
    logits = normed @ _weight(lm.model, "head._original_component.weight").T
    clean = batch.log_probs  # the clean run's, checked against the clean logits below
    with torch.no_grad():
        torch.testing.assert_close(clean, lm.model(batch.tokens).float().log_softmax(-1), rtol=1e-5, atol=1e-5)
    kl_hand = F.kl_div(logits.log_softmax(-1), clean, log_target=True, reduction="none").sum(-1)
    kl_hand = kl_hand[batch.covered].mean()
    ds_hand = (resid - resid_clean).pow(2).sum(-1)[batch.covered].mean()
    torch.testing.assert_close(kl, kl_hand, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ds, ds_hand, rtol=1e-4, atol=1e-6)
    assert kl > 1e-4 and ds > 1e-3  # the splice moved something
    # 2 KL + the architecture's own terms (1.25 − 1.0) + 0.5 MSE + 3 downstream MSE
    torch.testing.assert_close(loss, 2 * kl_hand + 0.25 + 0.5 * 1.0 + 3 * ds_hand, rtol=1e-4, atol=1e-6)
    # AuxK (0.75 of the 1.25 here) is activation-space: it takes the MSE's weight 0.5, not weight 1
    aux_loss, _ = fn.loss(_out(x_hat, loss=2.0, mse=1.0, aux=0.75), batch)
    torch.testing.assert_close(aux_loss, 2 * kl_hand + 0.25 + 0.5 * (1.0 + 0.75) + 3 * ds_hand, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_auxk_is_reported_and_a_pure_kl_run_drops_it(arch, tiny_lm):
    """TopK's AuxK (MSE-scale) reaches a functional loss only through mse_coeff: with mse_coeff 0 the loss is
    KL alone even when dead latents exist; with mse_coeff 1 it adds MSE + aux_coeff x AuxK, both by hand."""
    cfg = _kl_cfg(arch, **{arch: {"k": 4, "dead_tokens": 1, "aux_coeff": 0.5}})
    sae = build(cfg, 64, seed=0)
    sae.since_fired.fill_(10)  # every latent dead: AuxK is on
    lm, fn = _functional(tiny_lm, mse_coeff=0.0)
    x, batch, _ = _prepared(lm, fn, tiny_lm[1])
    out = sae.train_forward(x, progress=0.5)
    auxk = out.terms[0]
    assert auxk > 0 and torch.equal(out.aux_mse, 0.5 * auxk) and torch.equal(out.loss, out.mse + out.aux_mse)
    hand_auxk = F.mse_loss(sae.dense_aux_acts(sae.pre_acts(x), sae.since_fired > 0) @ sae.dec_rows(),
                           (x - out.x_hat).detach(), reduction="none").sum(-1).mean()  # fmt: skip
    torch.testing.assert_close(auxk, hand_auxk, rtol=1e-4, atol=1e-5)
    kl_only, (kl,) = fn.loss(out, batch)
    torch.testing.assert_close(kl_only, kl)
    _, with_mse = _functional(tiny_lm, mse_coeff=1.0)
    both, _ = with_mse.loss(out, batch)
    torch.testing.assert_close(both, kl + out.mse + 0.5 * auxk, rtol=1e-5, atol=1e-5)


def test_an_identity_splice_costs_nothing(tiny_lm):
    lm, fn = _functional(tiny_lm, "kl_ds")
    x, batch, _ = _prepared(lm, fn, tiny_lm[1])
    loss, (kl, ds) = fn.loss(_out(x.clone()), batch)
    assert abs(kl.item()) < 1e-6 and abs(ds.item()) < 1e-8 and abs(loss.item()) < 1e-6


def test_input_scale_is_undone_before_the_splice(tiny_lm):
    """The trainer's x̂ is in s · x units (normalize_activations); the LM must see x̂ / s."""
    lm, fn = _functional(tiny_lm)
    x, batch, _ = _prepared(lm, fn, tiny_lm[1])
    _, (kl,) = fn.loss(_out(3.0 * x), batch, input_scale=3.0)
    assert abs(kl.item()) < 1e-6


def _kl_cfg(arch, **kw):
    params = {
        "topk": {"k": 4, "dead_tokens": 2000},
        "batchtopk": {"k": 4, "dead_tokens": 2000},
        "jumprelu": {"l0_coeff": 1e-3, "threshold_init": 0.01},
    }
    base = dict(architecture=arch, expansion=2, l1_coeff=1e-3, lr=3e-3, batch_size=64, n_tokens=64 * 25,
                lr_warmup_tokens=0, log_every=5, checkpoint_every=0, source="stream", loss="kl",
                resample="none")  # fmt: skip
    if arch in params:
        base[arch] = params[arch]
    return SAEConfig(**(base | kw))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_trains_on_kl_and_the_lm_never_moves(arch, tiny_lm):
    lm, fn = _functional(tiny_lm)
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    cfg = _kl_cfg(arch)
    sae = build(cfg, 64, seed=0)
    w0 = sae.W_enc.detach().clone()
    rows_logged = []
    trainer = Trainer(sae, cfg, torch.device("cpu"), objective=fn)
    trainer.run(
        lambda skip: prompt_batches(tiny_lm[1], cfg.batch_size // 16, 0, skip), lambda s, r: rows_logged.append(r)
    )
    assert not torch.equal(sae.W_enc.detach(), w0), "the SAE did not move"
    for n, p in lm.model.named_parameters():
        assert p.grad is None and not p.requires_grad, n
        assert torch.equal(p.detach(), before[n]), f"the LM's {n} moved"
    assert all(np.isfinite(r["kl"]) for r in rows_logged) and "kl" in rows_logged[-1]
    assert rows_logged[-1]["kl"] < rows_logged[0]["kl"], (rows_logged[0]["kl"], rows_logged[-1]["kl"])
    # a step sees the covered positions of batch_size // n_ctx prompts (BOS left out), not batch_size tokens
    seen = sum(int((b != lm.bos_token_id).sum()) for _, b in zip(range(25), prompt_batches(tiny_lm[1], 4, 0)))
    assert trainer.state.tokens == seen < 25 * 64


def test_prompt_batches_are_seeded_whole_prompts_and_resume_in_place():
    rows = np.arange(10 * 4).reshape(10, 4)
    a = [b.clone() for _, b in zip(range(7), prompt_batches(rows, 3, seed=1))]
    assert all(b.shape == (3, 4) and b.dtype == torch.int64 for b in a)
    first_pass = torch.cat(a[:3])[:, 0] // 4
    assert len(first_pass.unique()) == 9  # 3 batches of 3 distinct prompts, the tenth left for the pass's end
    assert not torch.equal(a[0], a[3])  # a new order each pass
    resumed = [b for _, b in zip(range(3), prompt_batches(rows, 3, seed=1, skip_steps=4))]
    for x, y in zip(a[4:], resumed):
        assert torch.equal(x, y)


def test_bad_combinations_are_refused_with_the_fix(tiny_lm):
    with pytest.raises(ValueError, match="set sae.source: stream"):
        SAEConfig(loss="kl")  # the cache has no LM in it
    with pytest.raises(InputError, match="not a functional loss"):
        Functional(None, HOOK, 0, 1, "mse", FunctionalParams(), None)
    with pytest.raises(InputError, match="no block after it"):  # the last block's resid_post: nothing downstream
        Functional(None, "blocks.0.hook_resid_post", 0, 1, "kl_ds", FunctionalParams(), None)
    later = ["blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]
    assert downstream_hooks("blocks.0.hook_resid_post", 0, 3) == later  # its own site left out
    assert downstream_hooks("blocks.1.mlp.hook_post", 1, 3) == later
    lm, fn = _functional(tiny_lm)
    cfg = _kl_cfg("standard")

    class Probe:
        pass

    with pytest.raises(InputError, match="needs a functional objective"):  # KL params, activation batches
        Trainer(build(cfg, 64, seed=0), cfg, torch.device("cpu"))
    with pytest.raises(InputError, match="needs no functional objective"):
        Trainer(build(SAEConfig(), 64, seed=0), SAEConfig(), torch.device("cpu"), objective=fn)
    with pytest.raises(InputError, match="without probes"):
        Trainer(build(cfg, 64, seed=0), cfg, torch.device("cpu"), probes=(Probe(),), objective=fn)


def test_a_batch_size_that_splits_prompts_is_refused_before_the_lm_loads(tiny_lm, tmp_path, monkeypatch):
    from saelab.config import ActivationsConfig
    from saelab.data import stream
    from saelab.data.tokens import write_rows

    write_rows(tmp_path / "train.parquet", tiny_lm[1])
    monkeypatch.setattr("saelab.data.lm.load_lm", lambda *a: pytest.fail("the LM loaded before the check"))
    cfg = _kl_cfg("standard", batch_size=60)
    with pytest.raises(InputError, match="multiple of the prompts' 16 tokens"):
        stream.open_data(cfg, ActivationsConfig(), torch.device("cpu"), tmp_path, tiny_lm[0], tmp_path)


def test_an_architecture_without_x_hat_is_told_how_to_add_it(tiny_lm):
    lm, fn = _functional(tiny_lm)
    x, batch, _ = _prepared(lm, fn, tiny_lm[1])
    with pytest.raises(InputError, match=r"TrainOutput\(\.\.\., x_hat\)"):
        fn.loss(_out(None), batch)


def test_mse_configs_dump_as_before():
    """SAEs and checkpoints of MSE runs keep their train_params: the functional keys appear only when used."""
    assert "loss" not in SAEConfig().model_dump() and "functional" not in SAEConfig().model_dump()
    dumped = SAEConfig(loss="kl", source="stream").model_dump()
    assert dumped["loss"] == "kl" and dumped["functional"] == FunctionalParams().model_dump()


def test_finetune_config_turns_warmups_off_and_keeps_a_batchtopk_threshold_window():
    """The fine-tune trains at full sparsity from step 0; BatchTopK's θ window keeps the source's share when it
    holds a fine-tune step, and widens to the whole fine-tune when it would hold none (a short fine-tune)."""
    from saelab.config import FinetuneConfig
    from saelab.training.finetune import finetune_config

    src = SAEConfig(architecture="batchtopk", batch_size=64, n_tokens=64 * 400,
                    batchtopk={"k": 4, "k_anneal_start": 32, "threshold_frac": 0.1})  # fmt: skip
    long = finetune_config(src, FinetuneConfig(frac_tokens=0.25), 1.0, 0.5)  # 100 steps: 10 in the window
    assert long.n_tokens == 64 * 100 and long.batchtopk.threshold_frac == 0.1
    assert long.batchtopk.k_anneal_start is None and long.loss == "kl" and long.source == "stream"
    assert long.resample == "none" and long.lr_warmup_tokens == 0 and long.functional.mse_coeff == 0.5
    short = finetune_config(src, FinetuneConfig(frac_tokens=0.01), 1.0, 0.5)  # 4 steps: 0.1 x 4 holds none
    assert short.n_tokens == 64 * 4 and short.batchtopk.threshold_frac == 1.0
    april = finetune_config(SAEConfig(architecture="standard_april", batch_size=64, n_tokens=64 * 400),
                            FinetuneConfig(frac_tokens=0.01), 2.0, 0.0)  # fmt: skip
    assert april.standard_april.l1_warmup_frac == 0.0 and april.functional.kl_coeff == 2.0
    # only the architecture's own θ window is widened; another architecture's section is left as configured
    assert april.batchtopk.threshold_frac == SAEConfig().batchtopk.threshold_frac != 1.0
    with pytest.raises(InputError, match="normalize_activations: none"):
        finetune_config(SAEConfig(normalize_activations="mean_norm"), FinetuneConfig(), 1.0, 0.5)


@pytest.mark.parametrize("share", [0.5, 0.8, 1.0])
def test_balanced_weights_start_kl_at_its_share_of_the_sae_mse(share, tiny_lm):
    """kl_share · MSE₀ / KL₀ and 1 − kl_share: the weighted terms start at share · MSE₀ and (1 − share) · MSE₀,
    with KL₀ and MSE₀ the SAE's own on those prompts (recomputed here from its forward and the objective)."""
    from saelab.training.finetune import balanced_weights

    lm, fn = _functional(tiny_lm)
    sae = build(_kl_cfg("standard"), 64, seed=0)
    tokens = torch.from_numpy(tiny_lm[1][:4].astype(np.int64))
    w = balanced_weights(sae, fn, tokens, share)
    x, batch = fn.prepare(tokens)
    with torch.no_grad():
        out = sae(x, train=True)
        _, (kl,) = fn.loss(out, batch)
    torch.testing.assert_close(w["kl_first_batch"], float(kl))
    torch.testing.assert_close(w["mse_first_batch"], float(out.mse))
    torch.testing.assert_close(w["kl_coeff"] * float(kl), share * float(out.mse))
    assert w["mse_coeff"] == pytest.approx(1 - share)
    with pytest.raises(ValueError, match="kl_share"):
        balanced_weights(sae, fn, tokens, 0.0)


def test_finetune_weights_are_measured_on_the_finetune_copy_at_its_sparsity(tiny_lm):
    """``weights`` measures KL₀ and MSE₀ on the source's fine-tune copy: a TopK SAE trained with k annealing
    (k 32 at step 0) is weighed at its final k 4, and kl_share reaches the weights; fixed weights pass through."""
    from saelab.config import FinetuneConfig
    from saelab.training.finetune import balanced_weights, finetune_config, finetuned_copy, weights

    lm, fn = _functional(tiny_lm)
    src_cfg = SAEConfig(architecture="topk", d_sae=128, batch_size=64, n_tokens=64 * 400,
                        topk={"k": 4, "k_anneal_start": 32})  # fmt: skip
    source = build(src_cfg, 64, seed=0)
    tokens = torch.from_numpy(tiny_lm[1][:4].astype(np.int64))
    ft = FinetuneConfig(kl_share=0.8)
    probe = finetune_config(src_cfg, ft, 1.0, 0.0)
    w = weights(ft, source, probe, fn, tokens)
    x, _ = fn.prepare(tokens)
    with torch.no_grad():
        at_k4 = float(finetuned_copy(source, probe)(x, train=True, progress=0.0).mse)
        at_k32 = float(source(x, train=True, progress=0.0).mse)  # the source's own schedule at step 0
    assert at_k32 < at_k4  # the test can tell the two apart
    torch.testing.assert_close(w["mse_first_batch"], at_k4)
    assert w["mse_coeff"] == pytest.approx(0.2)
    assert w == balanced_weights(finetuned_copy(source, probe), fn, tokens, 0.8)
    fixed = FinetuneConfig(mse_coeff=0.3, kl_coeff=2.0)
    assert weights(fixed, source, probe, fn, tokens) == {
        "kl_coeff": 2.0, "mse_coeff": 0.3, "kl_first_batch": None, "mse_first_batch": None}  # fmt: skip


def test_balanced_weights_refuse_a_non_finite_first_batch(tiny_lm):
    from saelab.training.finetune import balanced_weights

    lm, fn = _functional(tiny_lm)
    sae = build(_kl_cfg("standard"), 64, seed=0)
    with torch.no_grad():
        sae.W_dec.fill_(float("nan"))
    tokens = torch.from_numpy(tiny_lm[1][:4].astype(np.int64))
    with pytest.raises(ValueError, match="not finite"):
        balanced_weights(sae, fn, tokens)
