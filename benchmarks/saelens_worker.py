"""Train one of SAELens's SAEs (standard, topk, batchtopk, jumprelu) with SAELens's own SAETrainer;
run by benchmarks/trainers.py and benchmarks/frontier.py.

Runs in SAELens's virtual environment (it pins transformer-lens < 4), so it imports
nothing from saelab:   .venv-saelens/bin/python benchmarks/saelens_worker.py SPEC.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from harness import TimedBatches, finish
from sae_lens import (
    BatchTopKTrainingSAE,
    BatchTopKTrainingSAEConfig,
    JumpReLUTrainingSAE,
    JumpReLUTrainingSAEConfig,
    StandardTrainingSAE,
    StandardTrainingSAEConfig,
    TopKTrainingSAE,
    TopKTrainingSAEConfig,
)
from sae_lens.config import SAETrainerConfig
from sae_lens.training.sae_trainer import SAETrainer


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    torch.manual_seed(spec["seed"])
    device = spec["device"]
    batches = TimedBatches(Path(spec["data"]), spec["batch_size"], spec["n_steps"], spec["warmup"])
    sae = build(spec, device)
    cfg = SAETrainerConfig(
        total_training_samples=spec["n_steps"] * spec["batch_size"],
        train_batch_size_samples=spec["batch_size"],
        lr=spec["lr"],
        lr_end=spec["lr"],
        adam_beta1=spec["betas"][0],
        adam_beta2=spec["betas"][1],
        device=device,
        autocast=spec["dtype"] == "bf16",
        dead_feature_window=spec.get("dead_window_steps", 1000),
    )
    provider = (x.to(device, non_blocking=True).float() for x in batches)
    trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=provider)
    trainer.fit()
    import sae_lens

    # what SAELens's inference model uses: TopK/BatchTopK fold the decoder norms into the encoder,
    # BatchTopK becomes JumpReLU with its global threshold in `threshold`
    state = {k: v.detach().clone() for k, v in sae.state_dict().items()}
    sae.process_state_dict_for_saving_inference(state)
    weights = {k: state[k] for k in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold") if k in state}
    inference = {"standard": "standard", "topk": "topk", "batchtopk": "jumprelu", "jumprelu": "jumprelu"}
    finish(
        Path(spec["out"]),
        batches,
        weights,
        device,
        {"sae_lens": sae_lens.__version__, "inference_architecture": inference[spec.get("arch", "standard")]},
    )


def build(spec: dict, device: str):
    """SAELens's training SAE for ``spec["arch"]``, its own defaults except the knobs the benchmark sets."""
    common = dict(d_in=spec["d_in"], d_sae=spec["d_sae"], device=device, apply_b_dec_to_input=True)
    arch = spec.get("arch", "standard")
    if arch == "standard":
        return StandardTrainingSAE(StandardTrainingSAEConfig(**common, l1_coefficient=spec["l1_coeff"]))
    if arch == "topk":
        return TopKTrainingSAE(
            TopKTrainingSAEConfig(
                **common, k=int(spec["k"]), use_sparse_activations=spec.get("sparse_activations", False)
            )
        )
    if arch == "batchtopk":
        return BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(**common, k=float(spec["k"])))
    if arch == "jumprelu":
        return JumpReLUTrainingSAE(
            JumpReLUTrainingSAEConfig(
                **common,
                l0_coefficient=spec["l0_coeff"],
                jumprelu_bandwidth=spec["bandwidth"],
                jumprelu_init_threshold=spec["threshold_init"],
                jumprelu_sparsity_loss_mode=spec.get("sparsity", "step"),
            )
        )
    raise SystemExit(f"unknown SAELens architecture {arch!r}")


if __name__ == "__main__":
    main()
