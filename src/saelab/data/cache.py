"""Parquet activation cache: a shuffled writer and a streaming, row-group reader.

Layout (``data/activations/``)::

    manifest.json            hook, d, dtype, n_tokens, bos policy, shards, input hashes, mean, mean_norm
    shard-00000.parquet ...  one row per token, already shuffled across the whole cache

Shard schema (no compression, no dictionary, no statistics, so a read is a memcpy):

    x      fixed_size_binary[d * itemsize]  raw little-endian activations (fp16 / bf16 / fp32)
    row    int32   row of data/tokens/train.parquet the token came from
    pos    int16   position in that row (position 0 holds BOS: absent under bos: exclude)
    token  int32   token id at that position

With ``activations.bos: exclude`` (the default) BOS tokens are not cached at all, so the
cache *is* the SAE's training distribution and its ``mean`` is the mean over that domain
(docs/metrics.md, "BOS policy"); ``mean_excluded`` is the mean over the dropped BOS tokens.

Read it with pyarrow + numpy::

    t = pq.read_table("shard-00000.parquet", columns=["x"])
    x = np.frombuffer(t["x"].combine_chunks().buffers()[1], np.float16).reshape(-1, d)

or polars: ``pl.read_parquet(p)["x"]`` is a Binary column; ``np.frombuffer(b"".join(...))``.
bf16 has no numpy dtype: view the bytes as ``uint16`` and use ``torch.frombuffer(...).view(torch.bfloat16)``.
FixedSizeBinary of raw bytes reads at ~2 GB/s per core (docs/cache-format.md);
fp16 FixedSizeList reads at 0.07-0.26.
"""

from __future__ import annotations

import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm
from saelab.data.background import background
from saelab.errors import InputError, NonFinite, ResourceError
from saelab.data.hooks import hooks_activations
from saelab.io import read_json

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
MANIFEST = "manifest.json"


class CacheError(InputError):
    """The activation cache on disk is missing, corrupt or inconsistent with its manifest."""


# ---------------------------------------------------------------- writer


def bytes_rows(x: torch.Tensor) -> np.ndarray:
    """(n, d) tensor -> (n, d * itemsize) uint8 view of its raw bytes."""
    x = x.contiguous().cpu()
    return x.view(torch.uint8).numpy().reshape(x.shape[0], -1)


def fixed_binary(raw: np.ndarray) -> pa.Array:
    raw = np.ascontiguousarray(raw)
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(raw.shape[1]), raw.shape[0], [None, pa.py_buffer(raw)])


def check_disk(out: Path, need: int) -> None:
    free = shutil.disk_usage(out if out.exists() else out.parent).free
    if free < need:
        raise ResourceError(
            f"{out}: activation cache needs {need / 1e9:.2f} GB (shards + scratch) but only {free / 1e9:.2f} GB "
            "is free; lower activations.n_tokens, use dtype fp16, or free disk space"
        )


@dataclass(frozen=True)
class CacheSpec:
    hook: str
    layer: int
    d: int
    dtype: str
    n_tokens: int
    seed: int
    batch_rows: int
    shard_tokens: int
    row_group_tokens: int
    allow_nonfinite: bool = False
    exclude_token: int | None = None
    """Token id left out of the cache (BOS under ``activations.bos: exclude``); None keeps every token."""


def write_cache(model, rows: np.ndarray, row_ids: np.ndarray, spec: CacheSpec, out: Path, device) -> dict:
    """Run the LM over ``rows`` and write a token-shuffled Parquet cache of ``spec.hook`` into ``out``
    (``write_caches`` with one site). Returns the manifest (without input hashes, which the stage adds)."""
    return write_caches(model, rows, row_ids, [spec], [out], device)[0]


def write_caches(model, rows: np.ndarray, row_ids: np.ndarray, specs: list[CacheSpec], outs: list[Path],
                 device) -> list[dict]:  # fmt: skip
    """One LM pass over ``rows``, caching every spec's hook (its own token-shuffled Parquet cache in its ``out``).

    1. Activations of every kept token (all but ``exclude_token``) at every hook go, in row order, to one scratch
       memmap per hook; the pass stops once every hook has fired (``hooks_activations``).
    2. A seeded permutation of all N kept tokens orders the shards, so consecutive cache rows come from
       unrelated prompts; every hook shares it (a token sits at the same cache row in each).
    3. Each cache's shards are written from its memmap in permuted order; the scratch is deleted.
    Each cache's bytes equal those a pass of its own would write (tests/test_cache.py). The specs differ only in
    hook, layer and d. Returns the manifests (without input hashes, which the stage adds), in ``specs``' order.
    """
    if len(specs) != len(outs) or not specs:
        raise ValueError(f"write_caches: {len(specs)} specs for {len(outs)} outputs")
    base = specs[0]
    if len({s.hook for s in specs}) != len(specs):
        raise ValueError(f"write_caches: a hook is listed twice in {[s.hook for s in specs]}")
    for s in specs[1:]:
        shared = ("dtype", "n_tokens", "seed", "batch_rows", "shard_tokens", "row_group_tokens", "allow_nonfinite",
                  "exclude_token")  # fmt: skip
        if any(getattr(s, k) != getattr(base, k) for k in shared):
            raise ValueError(f"write_caches: {s.hook}'s spec differs from {base.hook}'s beyond hook, layer and d")
    torch_dtype = DTYPES[base.dtype]
    itemsize = torch.tensor([], dtype=torch_dtype).element_size()
    n_ctx = rows.shape[1]
    keep = rows != base.exclude_token if base.exclude_token is not None else np.ones(rows.shape, dtype=bool)
    n = int(keep.sum())
    for out in outs:
        check_disk(out, 2 * n * sum(s.d for s in specs) * itemsize)
    sites = [_Site(s, out, n, itemsize) for s, out in zip(specs, outs)]
    at, lm_s = 0, 0.0
    start = time.perf_counter()
    bar = tqdm(total=n, desc="activations", unit="tok", unit_scale=True)
    for i in range(0, len(rows), base.batch_rows):
        batch = torch.from_numpy(rows[i : i + base.batch_rows].astype(np.int64)).to(device)
        cuda = batch.device.type == "cuda"  # kernels run asynchronously: time the forwards alone, not their launch
        if cuda:
            torch.cuda.synchronize(batch.device)  # the previous batch's statistics and copies are done
        t_lm = time.perf_counter()
        grabbed = hooks_activations(model, batch, [s.hook for s in specs])
        if cuda:
            torch.cuda.synchronize(batch.device)
        lm_s += time.perf_counter() - t_lm
        mask = torch.from_numpy(keep[i : i + base.batch_rows].reshape(-1)).to(batch.device)
        for site in sites:
            kept = site.add(grabbed[site.spec.hook], mask, torch_dtype, at, i, len(batch))
        at += kept
        bar.update(kept)
    bar.close()
    compute_s = time.perf_counter() - start

    perm = np.random.default_rng(base.seed + 1).permutation(n)
    flat_keep = keep.reshape(-1)
    src = {
        "row": np.repeat(row_ids.astype(np.int32), n_ctx)[flat_keep],
        "pos": np.tile(np.arange(n_ctx, dtype=np.int16), len(rows))[flat_keep],
        "token": rows.reshape(-1).astype(np.int32)[flat_keep],
    }
    n_dropped = rows.size - n
    manifests = []
    for site in sites:
        shards = site.write_shards(perm, src)
        spec = site.spec
        manifests.append({
            "format": "saelab-activations/2",
            "hook": spec.hook,
            "layer": spec.layer,
            "d": spec.d,
            "dtype": spec.dtype,
            "n_tokens": n,
            "n_ctx": n_ctx,
            "n_rows": len(rows),
            "seed": spec.seed,
            "excluded_token": spec.exclude_token,
            "n_excluded": int(n_dropped),
            "shards": shards,
            "nonfinite": site.nonfinite,
            "mean": (site.total / max(1, n)).float().tolist(),
            "mean_excluded": (site.dropped / n_dropped).float().tolist() if n_dropped else None,
            "mean_norm": site.norm_sum / max(1, n),
            "compute_seconds": compute_s,  # the shared LM pass
            "lm_seconds": lm_s,  # its LM forwards alone (the rest: each site's statistics and scratch copy)
            "tokens_per_s": n / compute_s,
        })  # fmt: skip
    return manifests


class _Site:
    """One hook's scratch memmap and running statistics during ``write_caches``' LM pass."""

    def __init__(self, spec: CacheSpec, out: Path, n: int, itemsize: int):
        self.spec, self.out = spec, out
        self.scratch = np.lib.format.open_memmap(out / ".scratch.npy", mode="w+", dtype=np.uint8,
                                                 shape=(n, spec.d * itemsize))  # fmt: skip
        self.total = torch.zeros(spec.d, dtype=torch.float64)
        self.dropped = torch.zeros(spec.d, dtype=torch.float64)
        self.norm_sum, self.nonfinite = 0.0, 0

    def add(self, acts: torch.Tensor, mask: torch.Tensor, dtype, at: int, row: int, n_rows: int) -> int:
        spec = self.spec
        acts = acts.reshape(-1, spec.d).to(dtype)
        self.dropped += acts[~mask].float().sum(0).double().cpu()
        acts = acts[mask]  # (n_kept, d)
        bad = (~torch.isfinite(acts)).sum().item()
        if bad and not spec.allow_nonfinite:
            raise NonFinite(
                f"{bad} non-finite activations at {spec.hook} in token rows {row}..{row + n_rows - 1}; "
                "the cache was not written (check the LM, or set activations.allow_nonfinite: true)"
            )
        self.nonfinite += bad
        a32 = acts.float()
        self.total += a32.sum(0).double().cpu()
        self.norm_sum += a32.norm(dim=-1).double().sum().item()
        self.scratch[at : at + len(acts)] = bytes_rows(acts)
        return len(acts)

    def write_shards(self, perm: np.ndarray, src: dict) -> list[dict]:
        spec, n = self.spec, len(perm)
        shards = []
        for s, lo in enumerate(tqdm(range(0, n, spec.shard_tokens), desc=f"shards {spec.hook}", unit="shard")):
            idx = perm[lo : lo + spec.shard_tokens]
            table = pa.table({"x": fixed_binary(self.scratch[idx]), **{k: pa.array(v[idx]) for k, v in src.items()}})
            name = f"shard-{s:05d}.parquet"
            pq.write_table(
                table,
                self.out / name,
                row_group_size=spec.row_group_tokens,
                compression="none",
                use_dictionary=False,
                write_statistics=False,
            )
            shards.append({"file": name, "n_tokens": len(idx)})
        del self.scratch
        (self.out / ".scratch.npy").unlink()
        return shards


# ---------------------------------------------------------------- reader


def check_bos_policy(cache: "ActivationCache", bos: str) -> None:
    """Raise unless the cache was built under the BOS policy the params ask for now."""
    built = cache.manifest.get("bos")
    if built != bos:
        raise CacheError(f"{cache.path}: built with activations.bos={built!r} but params say {bos!r}; "
                         "rerun `dvc repro activations` (the cache's mean and tokens depend on the policy)")


class ActivationCache:
    """A validated view of a cache directory. Reads by row group; never loads it whole."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        mpath = self.path / MANIFEST
        if not mpath.exists():
            raise CacheError(f"{mpath}: missing; the cache is incomplete (run `dvc repro activations`)")
        self.manifest = read_json(mpath)
        self.d: int = self.manifest["d"]
        self.dtype: str = self.manifest["dtype"]
        if self.dtype not in DTYPES:
            raise CacheError(f"{mpath}: dtype {self.dtype!r} is not one of {sorted(DTYPES)}")
        self.torch_dtype = DTYPES[self.dtype]
        self.n_tokens: int = self.manifest["n_tokens"]
        self.files = [self.path / s["file"] for s in self.manifest["shards"]]
        self._row_groups = self._validate()
        if self.n_tokens == 0:
            raise CacheError(f"{self.path}: the cache holds no tokens (every token excluded?); check activations.n_tokens "
                             "and activations.bos, then rerun `dvc repro activations`")

    def _validate(self) -> list[tuple[Path, int, int]]:
        width = self.d * torch.tensor([], dtype=self.torch_dtype).element_size()
        groups, total = [], 0
        for shard, f in zip(self.manifest["shards"], self.files):
            try:
                meta = pq.ParquetFile(f)
            except FileNotFoundError:
                raise CacheError(f"{f}: shard listed in the manifest is missing (rerun `dvc repro activations`)") from None
            except (pa.ArrowInvalid, OSError) as err:
                raise CacheError(
                    f"{f}: unreadable or truncated Parquet shard ({err}); delete {self.path} and rerun `dvc repro activations`"
                ) from None
            field = meta.schema_arrow.field("x") if "x" in meta.schema_arrow.names else None
            if field is None or field.type != pa.binary(width):
                raise CacheError(
                    f"{f}: column x is {field.type if field else 'absent'}, but the manifest says "
                    f"d={self.d} {self.dtype} (fixed_size_binary[{width}]); the cache is inconsistent, rerun `dvc repro activations`"
                )
            if meta.metadata.num_rows != shard["n_tokens"]:
                raise CacheError(
                    f"{f}: holds {meta.metadata.num_rows} rows but the manifest says {shard['n_tokens']}; rerun `dvc repro activations`"
                )
            total += meta.metadata.num_rows
            groups += [(f, g, meta.metadata.row_group(g).num_rows) for g in range(meta.num_row_groups)]
        if total != self.n_tokens:
            raise CacheError(f"{self.path}: shards hold {total} tokens, manifest says {self.n_tokens}")
        return groups

    @property
    def mean(self) -> torch.Tensor:
        return torch.tensor(self.manifest["mean"], dtype=torch.float32)

    def _decode(self, column: pa.ChunkedArray) -> torch.Tensor:
        arr = column.combine_chunks()
        width = arr.type.byte_width
        buf = arr.buffers()[1]
        raw = np.frombuffer(buf, dtype=np.uint8, count=len(arr) * width, offset=arr.offset * width)
        with warnings.catch_warnings():  # read-only Arrow memory; we never write to it
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(raw).view(self.torch_dtype).reshape(len(arr), self.d)

    def read_row_group(self, index: int, columns=("x",)) -> dict:
        f, g, _ = self._row_groups[index]
        try:
            table = pq.ParquetFile(f).read_row_group(g, columns=list(columns))
        except (pa.ArrowInvalid, OSError) as err:
            raise CacheError(f"{f}: row group {g} unreadable ({err}); delete {self.path} and rerun `dvc repro activations`") from None
        return {c: self._decode(table[c]) if c == "x" else table[c].to_numpy() for c in columns}

    def _groups_ahead(self, groups: list[int], prefetch: int) -> Iterator[torch.Tensor]:
        """The ``x`` of row groups ``groups`` in that order, read ahead by a background thread."""
        return background((self.read_row_group(g)["x"] for g in groups), prefetch)

    def group_order(self, seed: int | None, epoch: int) -> np.ndarray:
        """Row-group visiting order of one epoch: cache order without a seed, else a seeded permutation."""
        n = len(self._row_groups)
        return np.arange(n) if seed is None else np.random.default_rng([seed, epoch]).permutation(n)

    def _stream(self, pos: int, seed: int | None, prefetch: int) -> Iterator[torch.Tensor]:
        """Row groups forever from token ``pos`` of the (seeded) epoch sequence.

        With a seed, each epoch visits the row groups in its own order and shuffles the
        tokens inside each group, so two seeds see different batches (docs/metrics.md,
        "Data order"); without one, the cache is read in its stored order.
        """
        epoch, pos = divmod(pos, self.n_tokens)
        while True:
            order = self.group_order(seed, epoch)
            first, offset = 0, pos
            while offset >= self._row_groups[order[first]][2]:
                offset -= self._row_groups[order[first]][2]
                first += 1
            groups = order[first:].tolist()
            for g, x in zip(groups, self._groups_ahead(groups, prefetch)):
                if seed is not None:
                    x = x[torch.from_numpy(np.random.default_rng([seed, epoch, g]).permutation(len(x)))]
                yield x[offset:]
                offset = 0
            epoch, pos = epoch + 1, 0

    def batches(self, batch_size: int, skip_tokens: int = 0, pin: bool = False, prefetch: int = 4,
                seed: int | None = None) -> Iterator[torch.Tensor]:
        """Endless (batch_size, d) batches, looping over epochs, assembled ahead by a thread.

        Batch k holds tokens [s + kB, s + (k+1)B) of the epoch sequence (cache order, or the
        order of ``seed``) with s = ``skip_tokens``, so a resumed run sees exactly the data
        an uninterrupted one would. With ``pin`` the batches are in page-locked memory, so
        ``.to("cuda", non_blocking=True)`` overlaps compute.
        """

        def assemble():
            buf, at = torch.empty(0, self.d, dtype=self.torch_dtype), 0
            for x in self._stream(skip_tokens, seed, prefetch):
                buf, at = torch.cat([buf[at:], x]), 0
                while len(buf) - at >= batch_size:
                    batch = buf[at : at + batch_size]
                    yield batch.pin_memory() if pin else batch
                    at += batch_size

        return background(assemble(), prefetch)

    def iter_tokens(self, columns=("x", "row", "pos", "token")) -> Iterator[dict]:
        for i in range(len(self._row_groups)):
            yield self.read_row_group(i, columns)


# ---------------------------------------------------------------- a transcoder's pair of caches

PAIR = ("input", "target")  # a transcoder's cache directory holds one cache of each hook (data/sites/transcoders)
ALIGNED = ("inputs", "seed", "n_tokens", "n_rows", "n_ctx", "bos", "excluded_token", "dtype", "d")


def open_pair(path: str | Path) -> tuple[ActivationCache, ActivationCache]:
    """The (input, target) caches under ``path``, checked to hold the same tokens in the same order: written by one
    LM pass (same LM, tokens, seed and row-group layout) and every row group's (row, pos) columns equal."""
    inp, tgt = (ActivationCache(Path(path) / side) for side in PAIR)
    differ = [k for k in ALIGNED if inp.manifest.get(k) != tgt.manifest.get(k)]
    if differ or [g[2] for g in inp._row_groups] != [g[2] for g in tgt._row_groups]:
        raise CacheError(f"{path}: its input and target caches differ in {differ or ['row-group layout']}, so their "
                         "rows are not the same tokens; rerun `dvc repro activations`, which writes both in one pass")
    for g in range(len(inp._row_groups)):  # two int columns: a small read beside the activations
        a, b = (c.read_row_group(g, ("row", "pos")) for c in (inp, tgt))
        if not (np.array_equal(a["row"], b["row"]) and np.array_equal(a["pos"], b["pos"])):
            raise CacheError(f"{path}: the input and target caches hold different tokens at the same rows (row group "
                             f"{g}); rerun `dvc repro activations`")  # fmt: skip
    return inp, tgt


def paired_batches(inp: ActivationCache, tgt: ActivationCache, batch_size: int, skip_tokens: int = 0,
                   pin: bool = False, seed: int | None = None) -> Iterator[torch.Tensor]:  # fmt: skip
    """Endless (batch_size, 2 d) batches of (input | target) side by side: both caches read in the same order."""
    for a, b in zip(inp.batches(batch_size, skip_tokens, seed=seed), tgt.batches(batch_size, skip_tokens, seed=seed)):
        ab = torch.cat([a, b], -1)
        yield ab.pin_memory() if pin else ab
