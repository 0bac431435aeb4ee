"""Train EleutherAI sparsify's SparseCoder (TopK) by hand, one step as its Trainer.fit takes it;
run by benchmarks/topk_speed.py inside sparsify's own virtual environment (imports nothing from saelab).

    .venv-sparsify/bin/python benchmarks/sparsify_worker.py SPEC.json

The step (sparsify 1.3.3, sparsify/trainer.py, Trainer.fit): b_dec = mean of the first batch;
before every forward the decoder rows are set to unit norm; loss = FVU (+ auxk_alpha x AuxK, with
dead latents counted in tokens); backward; the gradient parallel to each decoder row is removed;
optimiser step. Adam (torch) at the benchmark's lr, as every other trainer; no warm-up.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from harness import TimedBatches, finish
from sparsify import SparseCoder, SparseCoderConfig


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    torch.manual_seed(spec["seed"])
    device = spec["device"]
    batches = TimedBatches(Path(spec["data"]), spec["batch_size"], spec["n_steps"], spec["warmup"])
    sae = SparseCoder(
        spec["d_in"], SparseCoderConfig(num_latents=spec["d_sae"], k=spec["k"]), device=device, dtype=torch.float32
    )
    opt = torch.optim.Adam(sae.parameters(), lr=spec["lr"], betas=tuple(spec["betas"]))
    since = torch.zeros(spec["d_sae"], dtype=torch.long, device=device)
    dead_tokens, alpha = spec["dead_tokens"], spec.get("auxk_alpha", 1 / 32)
    auxk_steps = 0  # steps where AuxK ran (some latent dead)
    for i, x in enumerate(batches):
        x = x.to(device).float()
        if i == 0:
            sae.b_dec.data = x.mean(0)
        sae.set_decoder_norm_to_unit_norm()
        dead = since > dead_tokens
        auxk_steps += bool(dead.any()) and alpha > 0
        out = sae(x, dead_mask=dead if alpha > 0 and bool(dead.any()) else None)
        (out.fvu + alpha * out.auxk_loss).backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            batches.note((out.sae_out - x).pow(2).sum(-1).mean().item())
            fired = torch.zeros(spec["d_sae"], dtype=torch.bool, device=device)
            fired[out.latent_indices.flatten()] = True
            since += len(x)
            since[fired] = 0
    import sparsify

    finish(
        Path(spec["out"]),
        batches,
        {"W_enc": sae.encoder.weight.T, "b_enc": sae.encoder.bias, "W_dec": sae.W_dec, "b_dec": sae.b_dec},
        device,
        {
            "sparsify": getattr(sparsify, "__version__", "1.3.3"),
            "inference_architecture": "topk",
            "auxk_steps": auxk_steps,
        },
    )


if __name__ == "__main__":
    main()
