"""Stage splice: one seed's SAEs at every site (activations.hook and activations.extra_hooks) and its transcoders
(activations.transcoders) spliced into the LM alone, all together and all but one, on evaluate's CE rows
(docs/metrics.md, "Splicing every site")."""

import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from saelab.data.hooks import check_sae_width
from saelab.data.lm import excluded_token, load_lm
from saelab.data.tokens import read_rows
from saelab.errors import InputError
from saelab.eval.sites import evaluate_sites, generations, member_name, source
from saelab.io import atomic_dir, resolve_device, write_json
from saelab.saes.base import SAE
from saelab.stage import log, parser, run_stage, write_timing

DEFINITIONS = (
    "docs/metrics.md, 'Splicing every site': evaluate's CE rows; ce_increase = CE spliced - CE clean (nats/token); "
    "additivity = all's increase / the sum of the increases alone; relative error = sum |a - a_clean|^2 / "
    "sum |a_clean|^2 over covered tokens"
)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--seed", type=int, required=True)
    for name in ("lm", "tokens", "saes", "sites", "transcoders", "out", "metrics", "timing"):
        p.add_argument(f"--{name}", type=Path, required=True)
    args = p.parse_args()
    with run_stage("splice", args) as params:
        cfg, acts = params.evaluate, params.activations
        seed = f"seed-{args.seed}"
        paths = {acts.hook: args.saes / seed}
        paths |= {hook: args.sites / hook / seed for hook in acts.extra_hooks}
        paths |= {member_name(src, tgt): args.transcoders / tgt / seed for tgt, src in acts.transcoders.items()}
        device = resolve_device(cfg.device)
        lm = load_lm(args.lm, device)
        gen, n_ctx = params.splice, lm.config["tl_config"]["n_ctx"]
        if gen.n_prompts and gen.prompt_tokens + gen.new_tokens > n_ctx:  # a pretrained LM's context, known only now
            raise InputError(f"splice.prompt_tokens + splice.new_tokens ({gen.prompt_tokens + gen.new_tokens}) exceed "
                             f"the LM's context ({n_ctx}): shorten them or set splice.n_prompts: 0")  # fmt: skip
        saes = {}
        for member, path in paths.items():
            sae, meta = SAE.load(path, device)
            trained = member_name(meta["input_hook"], meta["hook"]) if sae.transcoder else meta["hook"]
            if trained != member:
                raise InputError(f"{path} was trained as {trained}, not {member}: rerun `dvc repro` (train_site, "
                                 "train_transcoder)")  # fmt: skip
            check_sae_width(sae.d_in, source(member), lm.config["tl_config"], path)
            saes[member] = sae
        rows = read_rows(args.tokens / "eval.parquet")
        start = time.perf_counter()
        metrics, arrays = evaluate_sites(lm.model, saes, rows, cfg, device, excluded_token(lm, acts.bos))
        records, talk = generations(lm.model, saes, rows, cfg, params.splice, device, excluded_token(lm, acts.bos),
                                    lm.tokenizer.decode)  # fmt: skip
        with atomic_dir(args.out) as tmp:  # per-token CE of every set, for the coincidence of bad tokens
            pq.write_table(pa.table({k: pa.array(v) for k, v in arrays.items()}), tmp / "per_token.parquet")
            write_json(tmp / "generations.json", {"summary": talk, "prompts": records}, sort_keys=False)
        write_json(args.metrics, {"seed": args.seed, **metrics, "generations": talk, "definitions": DEFINITIONS},
                   sort_keys=False)  # fmt: skip
        write_timing(args.timing, {"n_sites": len(saes), "splice_seconds": time.perf_counter() - start})
        log.info("%d sites, seed %d: CE +%.4f nats all together vs %.4f summed alone -> %s", len(saes), args.seed,
                 metrics["all"]["ce_increase"], metrics["all"]["sum_of_alone_increases"], args.metrics)  # fmt: skip


if __name__ == "__main__":
    main()
