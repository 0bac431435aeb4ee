"""SAELens export and seed-checkpoint import, against the formats' documented key names and shapes."""

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from saelab.interop.saelens import export_saelens, load_reference, main
from saelab.saes import BUILTINS as ARCHITECTURES
from saelab.saes.base import SAE


def test_saelens_export_keys_shapes_and_config(tmp_path):
    """cfg.json has SAELens's standard fields; the weights file has W_enc [d_in, d_sae] etc., equal to ours."""
    sae = SAE(8, 32, seed=0)
    export_saelens(sae, tmp_path, "blocks.0.mlp.hook_post", "gelu-1l", 128)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["architecture"] == "standard" and cfg["apply_b_dec_to_input"] is True
    assert (cfg["d_in"], cfg["d_sae"], cfg["dtype"]) == (8, 32, "float32")
    assert cfg["normalize_activations"] == "none" and cfg["metadata"]["hook_name"] == "blocks.0.mlp.hook_post"
    w = load_file(str(tmp_path / "sae_weights.safetensors"))
    assert {k: tuple(v.shape) for k, v in w.items()} == {
        "W_enc": (8, 32),
        "W_dec": (32, 8),
        "b_enc": (32,),
        "b_dec": (8,),
    }
    assert torch.equal(w["W_dec"], sae.W_dec.detach())


def _seed_files(tmp_path, d_mlp=16, mult=4):
    g = torch.Generator().manual_seed(0)
    state = {
        "W_enc": torch.randn(d_mlp, d_mlp * mult, generator=g),
        "W_dec": torch.randn(d_mlp * mult, d_mlp, generator=g),
        "b_enc": torch.randn(d_mlp * mult, generator=g),
        "b_dec": torch.randn(d_mlp, generator=g),
    }
    torch.save(state, tmp_path / "25.pt")
    (tmp_path / "25_cfg.json").write_text(
        json.dumps({"d_mlp": d_mlp, "dict_mult": mult, "l1_coeff": 3e-4, "layer": 0, "site": "post"})
    )
    return state


def test_seed_import_round_trip(tmp_path):
    """A seed checkpoint imports with identical tensors and computes the same forward pass."""
    state = _seed_files(tmp_path)
    main(["import-reference", str(tmp_path / "25.pt"), str(tmp_path / "25_cfg.json"), str(tmp_path / "out")])
    sae, meta = SAE.load(tmp_path / "out")
    assert meta["hook"] == "blocks.0.mlp.hook_post" and meta["reference_config"]["dict_mult"] == 4
    for k, v in state.items():
        assert torch.equal(getattr(sae, k).detach(), v)
    x = torch.randn(3, 16)
    f = torch.relu((x - state["b_dec"]) @ state["W_enc"] + state["b_enc"])
    assert torch.allclose(sae(x).x_hat, f @ state["W_dec"] + state["b_dec"], atol=1e-5)


def test_seed_import_rejects_wrong_shapes(tmp_path):
    """A state dict with a transposed decoder is refused, naming the tensor."""
    state = _seed_files(tmp_path)
    state["W_dec"] = state["W_dec"].T.contiguous()
    torch.save(state, tmp_path / "25.pt")
    with pytest.raises(ValueError, match="W_dec has shape"):
        load_reference(tmp_path / "25.pt", tmp_path / "25_cfg.json")


@pytest.mark.parametrize("force_no_weights_only", ["0", "1"])
def test_seed_import_refuses_pickled_objects(tmp_path, monkeypatch, force_no_weights_only):
    """A checkpoint that needs arbitrary unpickling is refused (weights_only=True, passed explicitly: torch's own
    default is overridden by TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 where the call leaves weights_only unset)."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", force_no_weights_only)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"W_enc": Evil()}, tmp_path / "evil.pt")
    (tmp_path / "cfg.json").write_text("{}")
    with pytest.raises(ValueError, match="not a loadable tensor-only state dict"):
        load_reference(tmp_path / "evil.pt", tmp_path / "cfg.json")


def test_export_cli_from_our_format(tmp_path):
    """The CLI exports a saved models/sae folder into SAELens's layout."""
    SAE(8, 16, seed=0).save(tmp_path / "sae", {"hook": "blocks.0.hook_resid_post"})
    main(["export-saelens", str(tmp_path / "sae"), str(tmp_path / "sl")])
    assert sorted(p.name for p in (tmp_path / "sl").iterdir()) == ["cfg.json", "sae_weights.safetensors"]


# ---------------------------------------------------------------- the real SAELens

# SAELAB_SAELENS_PYTHON: another venv's python (benchmarks/mutation.py runs the tests in a copy of the tree)
SAELENS_PY = Path(
    os.environ.get("SAELAB_SAELENS_PYTHON") or Path(__file__).resolve().parents[1] / ".venv-saelens" / "bin" / "python"
)


def saelens_ready() -> str | None:
    """Why the real-SAELens test cannot run here, or None when it can."""
    if not SAELENS_PY.exists():
        return f"{SAELENS_PY} not found: `make test` creates it (pip install sae-lens==6.54.12); it could not here"
    res = subprocess.run([str(SAELENS_PY), "-c", "import sae_lens"], capture_output=True, text=True)
    return None if res.returncode == 0 else f"sae_lens does not import in {SAELENS_PY}: {res.stderr[-300:]}"


@pytest.mark.skipif(saelens_ready() is not None, reason=str(saelens_ready()))
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_real_saelens_loads_every_export_with_its_metadata(tmp_path, arch):
    """SAELens 6.54's SAE.load_from_disk reads our export of each architecture: hook_name, model_name and
    context_size survive in cfg.metadata, and its encode/decode equal ours within 1e-5 on cached activations."""
    from saelab.config import SAEConfig
    from saelab.data.cache import ActivationCache
    from saelab.registry import build
    from saelab.training.trainer import train_sae
    from tests.conftest import make_cache

    make_cache(tmp_path / "cache", n_tokens=4000, d=16)
    cache = ActivationCache(tmp_path / "cache")
    cfg = SAEConfig(
        architecture=arch,
        expansion=4,
        l1_coeff=0.05,
        batch_size=128,
        n_tokens=128 * 30,
        lr_warmup_tokens=0,
        checkpoint_every=0,
        topk={"k": 6},
        batchtopk={"k": 6, "threshold_frac": 0.5},
        jumprelu={"l0_coeff": 0.05, "threshold_init": 0.05},
    )
    sae = build(cfg, cache.d, seed=0)
    train_sae(sae, cache.batches(128, seed=0), cfg, torch.device("cpu"))  # trained: thresholds and norms not at init
    x = next(cache.batches(512, seed=1)).float()
    export_saelens(sae, tmp_path / "export", "blocks.0.mlp.hook_post", "gelu-1l", 128)
    save_file({"x": x.contiguous()}, str(tmp_path / "x.safetensors"))
    res = subprocess.run(
        [
            str(SAELENS_PY),
            str(Path(__file__).parent / "saelens_roundtrip.py"),
            str(tmp_path / "export"),
            str(tmp_path / "x.safetensors"),
            str(tmp_path / "out.safetensors"),
            str(tmp_path / "meta.json"),
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert (
        meta["hook_name"] == "blocks.0.mlp.hook_post"
        and meta["model_name"] == "gelu-1l"
        and meta["context_size"] == 128
    )
    assert meta["architecture"] == {"standard_april": "standard", "batchtopk": "jumprelu"}.get(arch, arch)
    theirs = load_file(str(tmp_path / "out.safetensors"))
    with torch.no_grad():
        x_hat, f = sae(x)
    assert (f > 0).float().sum(-1).mean() > 0
    torch.testing.assert_close(theirs["f"], f, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(theirs["x_hat"], x_hat, atol=1e-5, rtol=1e-5)
