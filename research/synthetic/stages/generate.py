"""Synthetic stage generate: one world's training cache and true dictionary (research/synthetic/dvc.yaml).

python -m research.synthetic.stages.generate --world standard --out data/standard     # run from research/synthetic/
"""

import sys
from pathlib import Path

from research.synthetic.worlds import World, load_synth_params, write_world
from saelab.io import atomic_dir
from saelab.stage import log, parser, run_stage


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--world", required=True, help="a key of `worlds` in the params file")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    with run_stage("synth-generate", args, load_synth_params) as params:
        if args.world not in params.worlds:
            sys.exit(f"--world {args.world!r} is not one of {sorted(params.worlds)}")
        world = World(params.worlds[args.world])
        with atomic_dir(args.out) as tmp:
            m = write_world(world, tmp)
        log.info("world %s: %d features in d=%d, %d tokens", args.world, world.F, world.cfg.d, m["n_tokens"])


if __name__ == "__main__":
    main()
