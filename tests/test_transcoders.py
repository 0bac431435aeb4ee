"""Transcoders (docs/metrics.md, "Transcoders"): an SAE that reads one hook and reconstructs another, for every
architecture; its params, its pair of caches, its training, resampling, scale fold, evaluation and SAELens export."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from saelab.config import SAEConfig, parse_params, transcoder_input
from saelab.data import cache as acts
from saelab.errors import InputError
from saelab.io import write_json
from saelab.registry import REGISTRY, build
from saelab.saes import BUILTINS as ARCHITECTURES
from saelab.saes.base import SAE, mse_loss
from saelab.section import ConfigError
from saelab.training.resample import resample_
from saelab.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
IN, OUT = "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out"
KW = {"topk": {"k": 3}, "batchtopk": {"k": 3}, "jumprelu": {"threshold_init": 0.05}}


def _transcoder(arch: str, d: int = 6, d_sae: int = 12) -> SAE:
    sae = REGISTRY[arch](d, d_sae, seed=0, **KW.get(arch, {}))
    sae.transcoder = True
    return sae


# ---------------------------------------------------------------- params


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        (
            {IN: OUT},
            f"its input {OUT} comes after it in the forward pass; a transcoder maps an earlier hook to a "
            f"later one, written {{target: input}}: {{{OUT}: {IN}}}",
        ),  # fmt: skip
        ([OUT, IN], "must be a mapping {target hook: input hook}"),
        ({OUT: OUT}, "a transcoder from a hook to itself is an SAE"),
        ({OUT: "blocks.0.mlp.hook_pre"}, "differ in width (d_mlp vs d_model)"),
        ({OUT: "blocks.0.hook_resid_mid"}, "is not supported"),
        ({OUT: "blocks.0.ln3.hook_normalized"}, "is not a hook name of the form"),
        ({"blocks.2.hook_mlp_out": "blocks.2.ln2.hook_normalized"}, "the embedded LM has lm.n_layers: 1"),
        ({IN: "blocks.0.hook_resid_pre"}, f"{IN!r} cannot be a site"),  # an input-only hook as a target
    ],
)
def test_a_bad_transcoder_pair_is_refused_at_params_load_naming_the_fix(pairs, expected):
    with pytest.raises(ConfigError, match="activations.transcoders") as err:
        parse_params({"activations": {"transcoders": pairs}})
    assert expected in str(err.value)


@pytest.mark.parametrize("acts", [{"hook": IN}, {"extra_hooks": ["blocks.0.ln1.hook_normalized"]}])
def test_a_layernorm_output_is_a_transcoder_input_only(acts):
    with pytest.raises(ConfigError, match="cannot be a site: TransformerLens 4's bridge hooks the LayerNorm"):
        parse_params({"activations": acts})


def test_transcoders_beside_a_functional_loss_are_refused_at_params_load():
    with pytest.raises(ConfigError, match="a transcoder trains on the MSE to its target, but sae.loss is kl"):
        parse_params({"activations": {"transcoders": {OUT: IN}}, "sae": {"loss": "kl", "source": "stream"}})


def test_a_transcoder_may_read_an_earlier_block_and_its_hooks_are_cached_once():
    p = parse_params({"lm": {"n_layers": 2}, "activations": {
        "extra_hooks": ["blocks.1.hook_mlp_out"],
        "transcoders": {"blocks.1.hook_mlp_out": "blocks.0.hook_resid_post", OUT: IN}}})  # fmt: skip
    assert p.activations.cached_hooks == (
        "blocks.0.mlp.hook_post", "blocks.1.hook_mlp_out", "blocks.0.hook_resid_post", OUT, IN)  # fmt: skip
    assert transcoder_input(p.activations, OUT) == IN and transcoder_input(p.activations, None) is None
    with pytest.raises(ConfigError, match=r"--transcoder blocks.1.hook_resid_post is not a transcoder"):
        transcoder_input(p.activations, "blocks.1.hook_resid_post")


def test_the_activations_stage_refuses_a_pair_in_the_wrong_order_before_any_work(tmp_path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["activations"]["transcoders"] = {IN: OUT}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    outs = [a for k in ("out", "sites", "metrics", "timing") for a in (f"--{k}", str(tmp_path / k))]
    cmd = [sys.executable, "-m", "stages.activations", "--params", str(tmp_path / "params.yaml"),
           "--lm", str(tmp_path / "lm"), "--tokens", str(tmp_path / "tokens"), *outs]  # fmt: skip
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert f"{{{OUT}: {IN}}}" in res.stderr, res.stderr
    assert not any((tmp_path / k).exists() for k in ("out", "sites", "metrics"))


# ---------------------------------------------------------------- the architecture side


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_a_transcoder_encodes_x_uncentred_and_its_loss_is_against_the_target(arch):
    """pre = x @ W_enc + b_enc whatever b_dec is (an SAE's moves with b_dec), and the training MSE (and AuxK's
    residual) is against ``target``: the loss by hand from the inference maps, on a target unlike x."""
    sae = _transcoder(arch)
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(1))
    y = torch.randn(8, 6, generator=torch.Generator().manual_seed(2)) * 3
    with torch.no_grad():
        sae.b_enc.add_(0.3)
        before = sae.pre_acts(x).clone()
        sae.transcoder, b_dec = False, sae.b_dec.clone()
        sae.b_dec.zero_()
        torch.testing.assert_close(before, sae.pre_acts(x))  # an SAE whose b_dec is 0
        sae.transcoder = True
        sae.b_dec.copy_(b_dec)
        sae.b_dec.add_(1.0)
        torch.testing.assert_close(sae.pre_acts(x), before)
        out = sae(x, train=True, progress=0.0, target=y)
    torch.testing.assert_close(out.mse, mse_loss(out.x_hat, y))
    assert float(out.mse) != pytest.approx(float(mse_loss(out.x_hat, x)))
    sae.transcoder = False
    with torch.no_grad():
        assert not torch.allclose(sae.pre_acts(x), before)  # an SAE centres x on b_dec


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_auxk_reconstructs_the_residual_of_the_target(arch):
    """With half the latents dead, AuxK is the MSE of the dead latents' decode against y - ŷ (not x - ŷ), by hand."""
    sae = _transcoder(arch, d=6, d_sae=12)
    sae.k_aux, sae.since_fired[::2] = 4, sae.dead_tokens + 1  # latents 0, 2, ... dead: AuxK on
    x = torch.randn(16, 6, generator=torch.Generator().manual_seed(1))
    y = 5 + torch.randn(16, 6, generator=torch.Generator().manual_seed(2))  # far from x
    with torch.no_grad():
        out = sae(x, train=True, progress=1.0, target=y)
        pre = sae.pre_acts(x)
        aux = sae.dense_aux_acts(pre, sae.auxk_dead()) @ sae.dec_rows()
    assert float(out.terms[0]) > 0
    torch.testing.assert_close(out.terms[0], mse_loss(aux, y - out.x_hat), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["topk", "jumprelu"])
def test_data_dependent_initialisation_starts_b_dec_at_the_target_mean(arch):
    """TopK and JumpReLU start b_dec at the first batch's mean of what they reconstruct: the target's."""
    cfg = SAEConfig(architecture=arch, expansion=2, batch_size=32, n_tokens=32, lr=1e-12, lr_warmup_tokens=0,
                    checkpoint_every=0, topk={"k": 2}, jumprelu={"threshold_init": 0.05})  # fmt: skip
    sae = build(cfg, 4, seed=0)
    sae.transcoder = True
    x, y = torch.randn(32, 4), 7 + torch.randn(32, 4)
    Trainer(sae, cfg, torch.device("cpu")).run(lambda skip: iter([torch.cat([x, y], -1)]))
    torch.testing.assert_close(sae.b_dec.detach(), y.mean(0), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("decoder", ["unit", "free"])
def test_topk_transcoder_sparse_step_equals_the_dense_step_with_gradients(decoder):
    """The fused sparse encoder (CPU default) reads x uncentred for a transcoder as the dense path does: same
    loss, AuxK and gradients; b_dec gets its gradient from the output side only."""
    from saelab.saes.topk import TopK

    x, y = torch.randn(32, 8), torch.randn(32, 8) * 2
    grads, losses = {}, {}
    for sparse in (True, False):
        sae = TopK(8, 16, seed=0, k=3, k_aux=4, aux_coeff=0.5, dead_tokens=1, decoder=decoder)
        sae.transcoder, sae.sparse_path = True, sparse
        sae.since_fired[::2] = 5  # AuxK on
        out = sae(x, train=True, target=y)
        out.loss.backward()
        losses[sparse] = (out.loss.detach(), out.terms[0].detach())
        grads[sparse] = {n: p.grad.clone() for n, p in sae.named_parameters()}
    assert losses[True][1] > 0
    torch.testing.assert_close(losses[True], losses[False])
    for name in grads[False]:
        torch.testing.assert_close(grads[True][name], grads[False][name], rtol=1e-4, atol=1e-5, msg=name)
    # the output side alone: d loss / d b_dec = d mse / d x_hat summed (+ AuxK's residual, detached)
    torch.testing.assert_close(grads[True]["b_dec"], (2 * (_x_hat(x, y, decoder) - y)).sum(0) / 32, rtol=1e-4,
                               atol=1e-5)  # fmt: skip


def _x_hat(x, y, decoder):
    from saelab.saes.topk import TopK

    sae = TopK(8, 16, seed=0, k=3, k_aux=4, aux_coeff=0.5, dead_tokens=1, decoder=decoder)
    sae.transcoder = True
    with torch.no_grad():
        return sae(x, train=True, target=y).x_hat


def test_anthropic_resampling_of_a_transcoder_points_decoder_rows_at_targets_and_encoder_columns_at_inputs():
    sae = _transcoder("standard", d=6, d_sae=10)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 6, generator=gen), torch.randn(40, 6, generator=gen)
    y[[5, 17, 30]] *= 1000  # the targets reconstructed worst: the only likely picks (their inputs are ordinary)
    with torch.no_grad():
        sae.b_dec.fill_(0.5)
    opt = torch.optim.Adam(sae.parameters())
    dead = torch.zeros(10, dtype=torch.bool)
    dead[[1, 4, 7]] = True
    enc_norm = sae.W_enc[:, ~dead].norm(dim=0).mean()
    assert resample_(sae, opt, dead, torch.cat([x, y], -1), torch.Generator().manual_seed(3)) == 3
    unit = lambda v: v / v.norm(dim=-1, keepdim=True)  # noqa: E731
    for i in (1, 4, 7):
        cos_dec = unit(y - 0.5) @ sae.W_dec[i].detach()
        j = int(cos_dec.argmax())
        assert j in (5, 17, 30) and float(cos_dec[j]) == pytest.approx(1, abs=1e-5)  # a worst target's direction...
        enc = sae.W_enc[:, i].detach()
        torch.testing.assert_close(enc, unit(x[j]) * 0.2 * enc_norm)  # ...whose input the encoder reads


def _pair_lm(d: int):
    """A fake LM with two hooks: the input is FakeLM's activation, the target a fixed linear map of it."""
    from tests.conftest import FakeLM, run_fake_pass

    M = torch.randn(d, d, generator=torch.Generator().manual_seed(7)) / d**0.5

    class PairLM:
        def run_with_hooks(self, tokens, fwd_hooks):
            x = FakeLM.expected(tokens, d)
            return run_fake_pass(fwd_hooks, lambda name: x if name == IN else x @ M)

    return PairLM(), M


def _pair_cache(path: Path, d: int = 8, n_tokens: int = 3000, seeds=(0, 0), groups=(250, 250)):
    """A pair written by two one-hook passes (alike unless seeds or row-group sizes differ)."""
    lm, M = _pair_lm(d)
    n_ctx = 10
    rows = np.arange(n_tokens, dtype=np.int32).reshape(-1, n_ctx)
    for side, hook, seed, group in zip(acts.PAIR, (IN, OUT), seeds, groups):
        spec = acts.CacheSpec(hook, 0, d, "fp32", n_tokens, seed, 7, 1000, group)
        (path / side).mkdir(parents=True)
        manifest = acts.write_caches(lm, rows, np.arange(len(rows)), [spec], [path / side], "cpu")[0]
        write_json(path / side / acts.MANIFEST, manifest | {"bos": "include", "inputs": {"lm": "x"}})
    return M


def test_a_pair_of_caches_is_read_in_one_order_and_a_misaligned_pair_is_refused(tmp_path):
    M = _pair_cache(tmp_path / "pair")
    inp, tgt = acts.open_pair(tmp_path / "pair")
    batch = next(acts.paired_batches(inp, tgt, 64, seed=3))
    assert batch.shape == (64, 16)
    torch.testing.assert_close(batch[:, 8:], batch[:, :8] @ M, rtol=1e-5, atol=1e-5)  # each row: one token's pair
    _pair_cache(tmp_path / "shuffled", seeds=(0, 1))  # written by two passes in different orders
    with pytest.raises(acts.CacheError, match=r"differ in \['seed'\]"):
        acts.open_pair(tmp_path / "shuffled")
    _pair_cache(tmp_path / "regrouped", groups=(250, 200))  # the same tokens in other row groups
    with pytest.raises(acts.CacheError, match=r"differ in \['row-group layout'\]"):
        acts.open_pair(tmp_path / "regrouped")
    _pair_cache(tmp_path / "relabelled")  # then the last row group of the target's last shard reordered
    import pyarrow as pa
    import pyarrow.parquet as pq

    last = tmp_path / "relabelled/target" / json.loads((tmp_path / "relabelled/target/manifest.json").read_text())[
        "shards"][-1]["file"]  # fmt: skip
    table = pq.read_table(last)
    order = np.r_[np.arange(len(table) - 250), np.arange(len(table) - 250, len(table))[::-1]]
    pq.write_table(table.take(pa.array(order)), last, row_group_size=250)
    with pytest.raises(acts.CacheError, match="different tokens at the same rows"):
        acts.open_pair(tmp_path / "relabelled")


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_trains_a_transcoder_and_the_input_scale_folds_into_it(tmp_path, arch):
    """Trained on (input | target) batches a transcoder reconstructs the target well below its variance; with
    sae.normalize_activations: mean_norm one scale serves input and target, so a transcoder trained on data x10
    is the one trained on the data, read in the data's units x10 (the fold is exact for a transcoder too)."""
    _pair_cache(tmp_path / "pair")
    inp, tgt = acts.open_pair(tmp_path / "pair")
    cfg = SAEConfig(architecture=arch, expansion=4, l1_coeff=0.01, batch_size=64, n_tokens=64 * 60, lr=3e-3,
                    lr_warmup_tokens=0, checkpoint_every=0, normalize_activations="mean_norm",
                    resample_every=64 * 20, resample_window=64 * 10, topk={"k": 6},
                    batchtopk={"k": 6, "threshold_frac": 0.5},
                    jumprelu={"l0_coeff": 0.01, "threshold_init": 0.05})  # fmt: skip
    saes = []
    for scale in (1.0, 10.0):
        sae = build(cfg, 8, seed=0)
        sae.transcoder = True
        batches = (b * scale for b in acts.paired_batches(inp, tgt, 64, seed=0))
        Trainer(sae, cfg, torch.device("cpu")).run(lambda skip, b=batches: b)
        saes.append(sae)
    xy = next(acts.paired_batches(inp, tgt, 512, seed=1))
    x, y = xy[:, :8], xy[:, 8:]
    with torch.no_grad():
        y_hat = saes[0](x).x_hat
        torch.testing.assert_close(saes[1](10 * x).x_hat, 10 * y_hat, rtol=1e-3, atol=1e-3)
    assert float(mse_loss(y_hat, y)) < 0.5 * float((y - y.mean(0)).pow(2).sum(-1).mean())


def test_the_trainer_refuses_a_transcoder_batch_of_the_wrong_width():
    cfg = SAEConfig(architecture="standard", expansion=2, batch_size=8, n_tokens=16, lr_warmup_tokens=0,
                    checkpoint_every=0)  # fmt: skip
    sae = build(cfg, 4, seed=0)
    sae.transcoder = True
    with pytest.raises(InputError, match="needs \\(input \\| target\\) batches of width 8, got 4"):
        Trainer(sae, cfg, torch.device("cpu")).run(lambda skip: iter([torch.randn(8, 4)] * 2))


def test_save_and_load_keep_the_transcoder_and_its_input_hook(tmp_path):
    sae = _transcoder("topk")
    sae.save(tmp_path / "t", {"hook": OUT, "input_hook": IN})
    loaded, meta = SAE.load(tmp_path / "t")
    assert loaded.transcoder and meta["input_hook"] == IN
    sae.transcoder = False
    with pytest.raises(ValueError, match="input_hook"):
        sae.save(tmp_path / "s", {"hook": OUT, "input_hook": IN})


# ---------------------------------------------------------------- SAELens


def test_a_topk_transcoder_has_no_saelens_format_and_says_so(tmp_path):
    from saelab.interop.saelens import export_saelens, saelens_unsupported

    sae = _transcoder("topk")
    assert "SAELens 6.54 has" in saelens_unsupported(sae)
    with pytest.raises(InputError, match="no SAELens format"):
        export_saelens(sae, tmp_path / "x", IN, "m", 16, OUT)
    assert not (tmp_path / "x").exists()


def test_real_saelens_loads_our_transcoder_exports_and_computes_what_we_do(tmp_path):
    """SAELens 6.54 loads a transcoder of each architecture it has a format for (one process: it imports slowly),
    as its transcoder class, with our input hook, and encodes and decodes as we do (to 1e-5)."""
    from tests.test_interchange import SAELENS_PY, saelens_ready

    if (why := saelens_ready()) is not None:
        pytest.skip(why)
    from saelab.interop.saelens import export_saelens

    archs, args, saes = ["standard", "standard_april", "jumprelu", "batchtopk"], [], {}
    torch.manual_seed(0)  # b_dec's draw below
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))
    save_file({"x": x.contiguous()}, str(tmp_path / "x.safetensors"))
    for arch in archs:
        sae = saes[arch] = _transcoder(arch, d=8, d_sae=16)
        with torch.no_grad():
            sae.b_enc.add_(0.2)
            sae.b_dec.normal_()  # an output bias an SAE export would also subtract from the input
            if arch == "batchtopk":  # rows folded to unit norm as training ends; θ at the mean positive pre-act
                sae.fold_decoder_norms_()
                pre = sae.pre_acts(x)
                sae.threshold.fill_(float(pre[pre > 0].mean()))  # not any pre-activation itself
        export_saelens(sae, tmp_path / arch, IN, "saelab-embedded", 16, OUT)
        cfg = json.loads((tmp_path / arch / "cfg.json").read_text())
        assert cfg["apply_b_dec_to_input"] is False and cfg["d_out"] == 8 and cfg["metadata"]["hook_name_out"] == OUT
        args += [str(tmp_path / arch), str(tmp_path / "x.safetensors"), str(tmp_path / f"{arch}.safetensors"),
                 str(tmp_path / f"{arch}.json")]  # fmt: skip
    res = subprocess.run([str(SAELENS_PY), str(Path(__file__).parent / "saelens_roundtrip.py"), *args],
                         capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    for arch in archs:
        meta = json.loads((tmp_path / f"{arch}.json").read_text())
        want = "transcoder" if arch.startswith("standard") else "jumprelu_transcoder"
        assert meta["architecture"] == want and meta["hook_name"] == IN, (arch, meta)
        theirs = load_file(str(tmp_path / f"{arch}.safetensors"))
        with torch.no_grad():
            x_hat, f = saes[arch](x)
        assert (f > 0).any() and (f == 0).any(), arch
        torch.testing.assert_close(theirs["f"], f, atol=1e-5, rtol=1e-5, msg=arch)
        torch.testing.assert_close(theirs["x_hat"], x_hat, atol=1e-5, rtol=1e-5, msg=arch)
