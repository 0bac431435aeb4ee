"""Interchange with other SAE tools.

* **SAELens** (6.x on-disk format, every architecture): a folder with ``cfg.json`` and
  ``sae_weights.safetensors`` holding ``W_enc`` [d_in, d_sae], ``W_dec`` [d_sae, d_in],
  ``b_enc`` [d_sae], ``b_dec`` [d_in] (+ ``threshold`` [d_sae] for JumpReLU);
  ``sae_lens.SAE.load_from_disk(folder)`` loads it. Every architecture subtracts b_dec before
  encoding (``apply_b_dec_to_input: true``). standard and standard_april export as SAELens's
  ``standard``, topk as ``topk`` (with ``k``), batchtopk as ``jumprelu`` with its global
  threshold in every entry, jumprelu as ``jumprelu`` with its learned θ.
  A transcoder exports as SAELens's ``transcoder`` (standard, standard_april) or ``jumprelu_transcoder``
  (jumprelu, batchtopk), with ``d_out``, ``apply_b_dec_to_input: false`` and ``metadata.hook_name`` its input
  hook (``hook_name_out`` its target); SAELens 6.54 has no TopK transcoder, so a topk transcoder is refused.
  ``metadata.sae_lens_version`` must be present: without it SAELens 6 treats the file as a
  pre-6.0 config and rebuilds ``metadata`` from top-level keys only, dropping hook_name,
  model_name and context_size (sae_lens/loading/pretrained_sae_loaders.py,
  handle_config_defaulting -> handle_pre_6_0_config).
* **The reference code's checkpoints** (Neel Nanda's gelu-1l replication): a torch state dict with
  ``W_enc``, ``W_dec``, ``b_enc``, ``b_dec`` plus a JSON config (``d_mlp``, ``dict_mult``,
  ``l1_coeff``, ...). Read with ``torch.load(weights_only=True)``: never unpickled.

CLI::

    python -m saelab.interop.saelens export-saelens models/sae out/saelens --context-size 128
    python -m saelab.interop.saelens import-reference 25.pt 25_cfg.json models/reference-sae
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from saelab.errors import InputError
from saelab.io import atomic_dir, save_weights, write_json
from saelab.saes.base import SAE

SAELENS_WEIGHTS = "sae_weights.safetensors"
SAELENS_CFG = "cfg.json"
KEYS = ("W_enc", "W_dec", "b_enc", "b_dec")


SAELENS_FORMAT_VERSION = "6.54.12"  # the SAELens release whose format we write and test against


# SAELens 6.54's transcoder classes (sae_lens/saes/transcoder.py) by the architecture our SAE exports as
TRANSCODERS = {"standard": "transcoder", "jumprelu": "jumprelu_transcoder"}


def saelens_unsupported(sae: SAE) -> str | None:
    """Why SAELens 6.54 cannot load ``sae`` (None when it can): only a TopK transcoder has no format there."""
    if sae.transcoder and sae.saelens()[0]["architecture"] not in TRANSCODERS:
        return (
            f"a {sae.architecture} transcoder has no SAELens format: SAELens 6.54 has {sorted(TRANSCODERS.values())} "
            "transcoders only; train it as standard, standard_april, jumprelu or batchtopk to load it in SAELens"
        )
    return None


def saelens_config(sae: SAE, hook: str, model_name: str, context_size: int, hook_out: str | None = None) -> dict:
    """cfg.json of the export; a transcoder's ``hook`` is the hook it reads, ``hook_out`` the one it writes."""
    if (why := saelens_unsupported(sae)) is not None:
        raise InputError(why)
    arch_fields, _ = sae.saelens()
    transcoder = {"architecture": TRANSCODERS[arch_fields["architecture"]], "d_out": sae.d_in} if sae.transcoder else {}
    return {
        **arch_fields,
        **transcoder,
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": not sae.transcoder,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "model_name": model_name,
            "hook_name": hook,
            **({"hook_name_out": hook_out} if sae.transcoder else {}),
            "hook_head_index": None,
            "context_size": context_size,
            "prepend_bos": True,
            "dataset_path": None,
            "sae_lens_version": SAELENS_FORMAT_VERSION,
            "exported_by": "saelab",
            "saelab_architecture": sae.architecture,
            "saelab_arch_params": sae.arch_params(),
        },
    }


def export_saelens(sae: SAE, out: Path, hook: str, model_name: str, context_size: int,
                   hook_out: str | None = None) -> None:  # fmt: skip
    """Write ``sae`` into ``out`` (created) in SAELens's on-disk format (a transcoder reads ``hook``, writes
    ``hook_out``)."""
    config = saelens_config(sae, hook, model_name, context_size, hook_out)  # refuses what SAELens cannot load
    out.mkdir(parents=True, exist_ok=True)
    save_weights(out / SAELENS_WEIGHTS, {k: v.contiguous() for k, v in sae.saelens()[1].items()})
    write_json(out / SAELENS_CFG, config)


def load_reference(weights: Path, config: Path) -> tuple[SAE, dict]:
    """An SAE saved by the reference code: state dict (W_enc, W_dec, b_enc, b_dec) + JSON config."""
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or unsafe files
        raise InputError(f"{weights}: not a loadable tensor-only state dict ({err})") from None
    missing = [k for k in KEYS if k not in state]
    if missing:
        raise InputError(f"{weights}: missing {missing}; the reference code's format has {list(KEYS)}")
    d_in, d_sae = state["W_enc"].shape
    expected = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,)}
    for k, shape in expected.items():
        if tuple(state[k].shape) != shape:
            raise InputError(f"{weights}: {k} has shape {tuple(state[k].shape)}, expected {shape}")
    cfg = json.loads(Path(config).read_text())
    sae = SAE(d_in, d_sae, seed=None)
    sae.load_state_dict({k: state[k].float() for k in KEYS})
    return sae, cfg


def reference_hook(cfg: dict) -> str:
    """The reference code's ``site``/``layer`` (``mlp_out``, ``post``, ...) as a TransformerLens hook name."""
    layer, site = cfg.get("layer", 0), cfg.get("site", "post")
    return f"blocks.{layer}.mlp.hook_{site}" if site in ("post", "pre") else f"blocks.{layer}.hook_{site}"


def main(argv=None) -> None:  # pragma: no mutate block (the command line, not a formula)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export-saelens", help="our models/sae folder -> SAELens folder")
    e.add_argument("sae", type=Path)
    e.add_argument("out", type=Path)
    e.add_argument("--model-name", default="saelab-embedded")
    e.add_argument("--context-size", type=int, default=128)
    i = sub.add_parser("import-reference", help="the reference code's .pt + JSON config -> our models/sae format")
    i.add_argument("weights", type=Path)
    i.add_argument("config", type=Path)
    i.add_argument("out", type=Path)
    args = p.parse_args(argv)
    if args.cmd == "export-saelens":
        sae, meta = SAE.load(args.sae)
        with atomic_dir(args.out) as tmp:
            hooks = (meta["input_hook"], meta["hook"]) if sae.transcoder else (meta["hook"], None)
            export_saelens(sae, tmp, hooks[0], args.model_name, args.context_size, hooks[1])
    else:
        sae, cfg = load_reference(args.weights, args.config)
        with atomic_dir(args.out) as tmp:
            sae.save(tmp, {"hook": reference_hook(cfg), "imported_from": str(args.weights), "reference_config": cfg})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
