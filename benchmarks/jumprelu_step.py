"""Why our JumpReLU "step" runs and SAELens's end at different L0 on the frontier: one side-by-side.

    python benchmarks/jumprelu_step.py --saelens-python .venv-saelens/bin/python \
        [--steps 60] [--l0-coeff 1.0] [--out benchmarks/results/jumprelu_step_cpu.json]

Both tools train a JumpReLU SAE with the step (L0) penalty from the same initial weights on the
same batches (512 -> 2,048, batch 2,048, lr 3e-3, Adam(0.9, 0.999), gradient clipping at 1, as in
benchmarks/frontier.py): saelab's `train_step`, and SAELens 6.54's `JumpReLUTrainingSAE.
training_forward_pass` stepped as its SAETrainer steps it. The initial weights are saelab's,
b_dec included (saelab sets it to the mean of the first batch). A third run gives SAELens the same
weights with b_dec = 0, which is where SAELens's own trainer starts (it does not initialise b_dec
from data). Per step: L0, MSE and the mean threshold.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from saelab import threads

SHAPE = {
    "d_in": 512,
    "d_sae": 2048,
    "batch": 2048,
    "lr": 3e-3,
    "betas": (0.9, 0.999),
    "bandwidth": 0.05,
    "threshold_init": 0.01,
}


def run_saelab(cache: Path, work: Path, steps: int, coeff: float) -> list:
    from safetensors.torch import save_file

    from saelab.config import SAEConfig
    from saelab.data.cache import ActivationCache
    from saelab.registry import build
    from saelab.training.trainer import train_step

    B = SHAPE["batch"]
    x = next(ActivationCache(cache).batches(B * steps)).float()  # stored order, as the frontier reads it
    np.save(work / "x.npy", x.numpy())
    cfg = SAEConfig(
        architecture="jumprelu",
        d_sae=SHAPE["d_sae"],
        lr=SHAPE["lr"],
        batch_size=B,
        n_tokens=B * steps,
        seed=0,
        lr_warmup_tokens=0,
        lr_decay_frac=0.0,
        checkpoint_every=0,
        jumprelu={
            "l0_coeff": coeff,
            "bandwidth": SHAPE["bandwidth"],
            "threshold_init": SHAPE["threshold_init"],
            "sparsity": "step",
        },
    )
    sae = build(cfg, SHAPE["d_in"])
    sae.init_from_data_(x[:B])
    save_file({k: v.detach().clone().contiguous() for k, v in sae.state_dict().items()}, str(work / "init.safetensors"))
    opt = torch.optim.Adam(sae.parameters(), lr=SHAPE["lr"], betas=SHAPE["betas"])
    rows = []
    for xb in x.split(B):
        _, mse, _, _, l0, _ = train_step(sae, opt, xb)  # clips gradients at 1 in before_step (decoder: free)
        rows.append({"l0": float(l0), "mse": float(mse), "theta_mean": sae.threshold.mean().item()})
    return rows


def run_saelens(work: Path, coeff: float, b_dec_zero: bool) -> list:  # runs in .venv-saelens: no saelab imports
    from sae_lens import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
    from sae_lens.saes.sae import TrainStepInput
    from safetensors.torch import load_file

    sae = JumpReLUTrainingSAE(
        JumpReLUTrainingSAEConfig(
            d_in=SHAPE["d_in"],
            d_sae=SHAPE["d_sae"],
            device="cpu",
            apply_b_dec_to_input=True,
            l0_coefficient=coeff,
            jumprelu_bandwidth=SHAPE["bandwidth"],
            jumprelu_init_threshold=SHAPE["threshold_init"],
            jumprelu_sparsity_loss_mode="step",
        )
    )
    w = {k: v for k, v in load_file(str(work / "init.safetensors")).items() if k in dict(sae.named_parameters())}
    if b_dec_zero:
        w["b_dec"] = torch.zeros_like(w["b_dec"])
    sae.load_state_dict(w)
    opt = torch.optim.Adam(sae.parameters(), lr=SHAPE["lr"], betas=SHAPE["betas"])
    x = torch.from_numpy(np.load(work / "x.npy"))
    rows = []
    for i, xb in enumerate(x.split(SHAPE["batch"])):  # SAETrainer._train_step: forward, backward, clip 1, step
        out = sae.training_forward_pass(
            TrainStepInput(
                sae_in=xb, coefficients={"l0": coeff}, dead_neuron_mask=None, n_training_steps=i, is_logging_step=False
            )
        )
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        rows.append(
            {
                "l0": (out.feature_acts > 0).float().sum(-1).mean().item(),
                "mse": out.losses["mse_loss"].item(),
                "theta_mean": sae.threshold.mean().item(),
            }
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", type=Path, default=Path("data/activations"))
    p.add_argument("--saelens-python", type=Path, default=Path(".venv-saelens/bin/python"))
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--l0-coeff", type=float, default=1.0)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/jumprelu_step_cpu.json"))
    p.add_argument("--saelens-worker", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--b-dec-zero", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    threads.configure()  # SAELAB_THREADS or every core given (docs/usage.md, "Threads")
    if args.saelens_worker:
        print(json.dumps(run_saelens(args.saelens_worker, args.l0_coeff, args.b_dec_zero)))
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="saelab-jumprelu-") as tmp:
        work = Path(tmp)
        runs = {"saelab": run_saelab(args.cache, work, args.steps, args.l0_coeff)}
        for name, zero in (("sae-lens, same init", False), ("sae-lens, b_dec = 0", True)):
            cmd = [str(args.saelens_python), __file__, "--saelens-worker", str(work), "--l0-coeff", str(args.l0_coeff)]
            runs[name] = json.loads(
                subprocess.run(
                    cmd + (["--b-dec-zero"] if zero else []), check=True, capture_output=True, text=True
                ).stdout
            )
    ours, same = runs["saelab"], runs["sae-lens, same init"]
    report = {
        "command": "python benchmarks/jumprelu_step.py " + " ".join(sys.argv[1:]),
        "shape": SHAPE,
        "steps": args.steps,
        "l0_coeff": args.l0_coeff,
        "max_abs_difference_same_init": {k: max(abs(a[k] - b[k]) for a, b in zip(ours, same)) for k in ours[0]},
        "final": {name: r[-1] for name, r in runs.items()},
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    for name, r in runs.items():
        print(
            f"{name:22} "
            + "  ".join(
                f"step {i}: L0 {r[i]['l0']:6.1f} MSE {r[i]['mse']:6.1f} θ {r[i]['theta_mean']:.3f}"
                for i in (4, len(r) - 1)
            )
        )
    print("max |saelab - SAELens| from the same weights:", report["max_abs_difference_same_init"], "->", args.out)


if __name__ == "__main__":
    main()
