"""Where a TopK training step's time goes: torch.profiler over saelab's own step (Trainer, train_step).

    python benchmarks/topk_profile.py --out benchmarks/results/topk_profile_cpu.txt [--decoder free|unit]

The speed benchmark's shape (512 -> 16,384, k 32, batch 4,096, fp32), random inputs, AuxK running over
two thirds of the dictionary (marked dead; the default recipe leaves 62-71% of latents dead in
topk_speed's runs, docs/benchmarks.md; train_step alone does not update the dead set); 3 warm-up steps, then
``--steps`` profiled ones. Writes the operator table (self CPU time) and the element-wise and copy
operators grouped by where they are called from, in ms per step.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reader import cpu_model  # noqa: E402

from saelab import threads  # noqa: E402
from saelab.config import SAEConfig  # noqa: E402
from saelab.registry import build  # noqa: E402
from saelab.training.trainer import Trainer, train_step  # noqa: E402

WATCH = ("aten::copy_", "aten::fill_", "aten::mul", "aten::div")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--decoder", choices=["free", "unit"], default="free")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/topk_profile_cpu.txt"))
    args = p.parse_args()
    n_threads = threads.configure()  # SAELAB_THREADS or every core given (docs/usage.md, "Threads")
    d_in, d_sae, batch = 512, 16_384, 4096
    topk = {"k": 32, "dead_tokens": 81_920, "decoder": args.decoder}
    cfg = SAEConfig(architecture="topk", d_sae=d_sae, batch_size=batch, topk=topk)
    t = Trainer(build(cfg, d_in, seed=0), cfg, torch.device("cpu"))
    t.sae.since_fired[: 2 * d_sae // 3] = topk["dead_tokens"]  # dead: in AuxK's set
    gen = torch.Generator().manual_seed(0)
    data = [torch.randn(batch, d_in, generator=gen) for _ in range(3)]

    def step(i: int) -> None:
        train_step(t.sae, t.opt, data[i % 3], False, forward=t.call, check=t.check_each_step)

    for i in range(3):
        step(i)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_stack=True) as prof:
        for i in range(args.steps):
            step(i)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=45)
    by_site: Counter = Counter()
    for e in prof.events():
        if e.name in WATCH:
            chain, parent = [], e.cpu_parent
            while parent is not None and len(chain) < 3:
                chain.append(parent.name)
                parent = parent.cpu_parent
            by_site[(e.name, str(e.input_shapes)[:48], " < ".join(chain)[:150])] += e.self_cpu_time_total
    lines = [
        f"# {cpu_model()}, torch {torch.__version__}, {n_threads} threads; topk {topk}, {d_in} -> {d_sae}, "
        f"batch {batch}, {args.steps} profiled steps",
        f"# python benchmarks/topk_profile.py {' '.join(sys.argv[1:])}",
        table,
        f"# {', '.join(WATCH)} by call site, ms per step",
        *(
            f"{us / 1000 / args.steps:8.1f}  {op} {shapes}  {chain}"
            for (op, shapes, chain), us in by_site.most_common(12)
        ),
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
