"""Train SAELens's standard SAE with SAELens's own SAETrainer; run by benchmarks/trainers.py.

Runs in SAELens's virtual environment (it pins transformer-lens < 4), so it imports
nothing from saelab:   .venv-saelens/bin/python benchmarks/saelens_worker.py SPEC.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from harness import TimedBatches, finish
from sae_lens import StandardTrainingSAE, StandardTrainingSAEConfig
from sae_lens.config import SAETrainerConfig
from sae_lens.training.sae_trainer import SAETrainer


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    torch.manual_seed(spec["seed"])
    device = spec["device"]
    batches = TimedBatches(Path(spec["data"]), spec["batch_size"], spec["n_steps"], spec["warmup"])
    sae = StandardTrainingSAE(StandardTrainingSAEConfig(
        d_in=spec["d_in"], d_sae=spec["d_sae"], l1_coefficient=spec["l1_coeff"], device=device,
        apply_b_dec_to_input=True,
    ))
    cfg = SAETrainerConfig(
        total_training_samples=spec["n_steps"] * spec["batch_size"], train_batch_size_samples=spec["batch_size"],
        lr=spec["lr"], lr_end=spec["lr"], adam_beta1=spec["betas"][0], adam_beta2=spec["betas"][1], device=device,
        autocast=spec["dtype"] == "bf16",
    )
    provider = (x.to(device, non_blocking=True).float() for x in batches)
    trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=provider)
    trainer.fit()
    import sae_lens

    finish(Path(spec["out"]), batches, {k: getattr(sae, k) for k in ("W_enc", "W_dec", "b_enc", "b_dec")}, device,
           {"sae_lens": sae_lens.__version__})


if __name__ == "__main__":
    main()
