"""Parquet activation cache: a shuffled writer and a streaming, row-group reader.

Layout (``data/activations/``)::

    manifest.json            hook, d, dtype, n_tokens, shards, input hashes, mean, mean_norm
    shard-00000.parquet ...  one row per token, already shuffled across the whole cache

Shard schema (no compression, no dictionary, no statistics, so a read is a memcpy):

    x      fixed_size_binary[d * itemsize]  raw little-endian activations (fp16 / bf16 / fp32)
    row    int32   row of data/tokens/train.parquet the token came from
    pos    int16   position in that row (0 = BOS)
    token  int32   token id at that position

Read it with pyarrow + numpy::

    t = pq.read_table("shard-00000.parquet", columns=["x"])
    x = np.frombuffer(t["x"].combine_chunks().buffers()[1], np.float16).reshape(-1, d)

or polars: ``pl.read_parquet(p)["x"]`` is a Binary column; ``np.frombuffer(b"".join(...))``.
bf16 has no numpy dtype: view the bytes as ``uint16`` and use ``torch.frombuffer(...).view(torch.bfloat16)``.
FixedSizeBinary of raw bytes reads at ~2 GB/s per core (DESIGN.md); fp16 FixedSizeList reads at 0.07–0.26.
"""

from __future__ import annotations

import queue
import shutil
import threading
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

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
MANIFEST = "manifest.json"
HOOK_SUFFIXES = (
    "hook_resid_pre",
    "hook_resid_mid",
    "hook_resid_post",
    "hook_mlp_out",
    "hook_attn_out",
    "mlp.hook_pre",
    "mlp.hook_post",
)


class CacheError(ValueError):
    """The activation cache on disk is missing, corrupt or inconsistent with its manifest."""


# ---------------------------------------------------------------- hooks


def valid_hooks(n_layers: int) -> list[str]:
    return [f"blocks.{layer}.{s}" for layer in range(n_layers) for s in HOOK_SUFFIXES]


def check_hook(hook: str, tl_config: dict) -> tuple[int, int]:
    """Return (layer, width) of ``hook``, or raise listing the valid names."""
    allowed = valid_hooks(tl_config["n_layers"])
    if hook not in allowed:
        raise ValueError(f"activations.hook: {hook!r} is not a supported hook; valid hooks are: {', '.join(allowed)}")
    layer = int(hook.split(".")[1])
    width = tl_config["d_mlp"] if ".mlp.hook_" in hook else tl_config["d_model"]
    return layer, width


def check_sae_width(d_in: int, hook: str, tl_config: dict, where) -> int:
    """Raise unless an SAE of input width ``d_in`` fits ``hook`` of this LM; return the hook's layer."""
    layer, width = check_hook(hook, tl_config)
    if d_in != width:
        raise ValueError(f"{where}: SAE d_in is {d_in} but {hook} has width {width}; train the SAE on this LM's activations")
    return layer


def is_mlp_post(hook: str) -> bool:
    return hook.endswith("mlp.hook_post")


@torch.no_grad()
def hook_activations(model, tokens: torch.Tensor, hook: str, layer: int) -> torch.Tensor:
    """Activations at ``hook`` for ``tokens`` (B, n_ctx) -> (B, n_ctx, d); stops after ``layer``."""
    grabbed = {}

    def grab(x, hook):  # noqa: ARG001 - TL passes the HookPoint by keyword
        grabbed["x"] = x
        return x

    model.run_with_hooks(tokens, fwd_hooks=[(hook, grab)], stop_at_layer=layer + 1)
    return grabbed["x"]


# ---------------------------------------------------------------- writer


def _bytes_rows(x: torch.Tensor) -> np.ndarray:
    """(n, d) tensor -> (n, d * itemsize) uint8 view of its raw bytes."""
    x = x.contiguous().cpu()
    return x.view(torch.uint8).numpy().reshape(x.shape[0], -1)


def _fixed_binary(raw: np.ndarray) -> pa.Array:
    raw = np.ascontiguousarray(raw)
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(raw.shape[1]), raw.shape[0], [None, pa.py_buffer(raw)])


def check_disk(out: Path, need: int) -> None:
    free = shutil.disk_usage(out if out.exists() else out.parent).free
    if free < need:
        raise OSError(
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


def select_rows(n_rows_available: int, n_ctx: int, n_tokens: int, seed: int) -> np.ndarray:
    """A seeded random subset of token rows, enough for ``n_tokens`` (sorted for locality)."""
    n_rows = min(n_rows_available, -(-n_tokens // n_ctx))
    perm = np.random.default_rng(seed).permutation(n_rows_available)[:n_rows]
    return np.sort(perm)


def write_cache(model, rows: np.ndarray, row_ids: np.ndarray, spec: CacheSpec, out: Path, device) -> dict:
    """Run the LM over ``rows`` and write a token-shuffled Parquet cache into ``out``.

    1. Activations for every selected row go, in row order, to a scratch memmap.
    2. A seeded permutation of all N tokens orders the shards, so consecutive
       cache rows come from unrelated prompts.
    3. Shards are written from the memmap in permuted order; the scratch is deleted.
    Returns the manifest (without input hashes, which the stage adds).
    """
    torch_dtype = DTYPES[spec.dtype]
    itemsize = torch.tensor([], dtype=torch_dtype).element_size()
    n_ctx = rows.shape[1]
    n = len(rows) * n_ctx
    check_disk(out, 2 * n * spec.d * itemsize)
    scratch = np.lib.format.open_memmap(out / ".scratch.npy", mode="w+", dtype=np.uint8, shape=(n, spec.d * itemsize))
    total = torch.zeros(spec.d, dtype=torch.float64)
    norm_sum, nonfinite = 0.0, 0
    start = time.perf_counter()
    bar = tqdm(total=n, desc="activations", unit="tok", unit_scale=True)
    for i in range(0, len(rows), spec.batch_rows):
        batch = torch.from_numpy(rows[i : i + spec.batch_rows].astype(np.int64)).to(device)
        acts = hook_activations(model, batch, spec.hook, spec.layer).reshape(-1, spec.d).to(torch_dtype)
        bad = (~torch.isfinite(acts)).sum().item()
        if bad and not spec.allow_nonfinite:
            raise FloatingPointError(
                f"{bad} non-finite activations at {spec.hook} in token rows {i}..{i + len(batch) - 1}; "
                "the cache was not written (check the LM, or set activations.allow_nonfinite: true)"
            )
        nonfinite += bad
        a32 = acts.float()
        total += a32.sum(0).double().cpu()
        norm_sum += a32.norm(dim=-1).double().sum().item()
        scratch[i * n_ctx : i * n_ctx + acts.shape[0]] = _bytes_rows(acts)
        bar.update(acts.shape[0])
    bar.close()
    compute_s = time.perf_counter() - start

    perm = np.random.default_rng(spec.seed + 1).permutation(n)
    src_row = np.repeat(row_ids.astype(np.int32), n_ctx)
    src_pos = np.tile(np.arange(n_ctx, dtype=np.int16), len(rows))
    src_tok = rows.reshape(-1).astype(np.int32)
    shards = []
    for s, lo in enumerate(tqdm(range(0, n, spec.shard_tokens), desc="shards", unit="shard")):
        idx = perm[lo : lo + spec.shard_tokens]
        table = pa.table(
            {
                "x": _fixed_binary(scratch[idx]),
                "row": pa.array(src_row[idx]),
                "pos": pa.array(src_pos[idx]),
                "token": pa.array(src_tok[idx]),
            }
        )
        name = f"shard-{s:05d}.parquet"
        pq.write_table(
            table,
            out / name,
            row_group_size=spec.row_group_tokens,
            compression="none",
            use_dictionary=False,
            write_statistics=False,
        )
        shards.append({"file": name, "n_tokens": len(idx)})
    del scratch
    (out / ".scratch.npy").unlink()
    mean = (total / n).float()
    return {
        "format": "saelab-activations/1",
        "hook": spec.hook,
        "layer": spec.layer,
        "d": spec.d,
        "dtype": spec.dtype,
        "n_tokens": n,
        "n_ctx": n_ctx,
        "n_rows": len(rows),
        "seed": spec.seed,
        "shards": shards,
        "nonfinite": nonfinite,
        "mean": mean.tolist(),
        "mean_norm": norm_sum / n,
        "compute_seconds": compute_s,
        "tokens_per_s": n / compute_s,
    }


# ---------------------------------------------------------------- reader


def background(items: Iterator, depth: int) -> Iterator:
    """Run the iterator ``items`` in a daemon thread, ``depth`` items ahead; its errors re-raise here.

    Closing the returned generator (or dropping it) stops the thread at its next item and
    waits for it.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for item in items:
                if not put(item):
                    if hasattr(items, "close"):
                        items.close()  # lets a generator run its own clean-up (its inner threads stop too)
                    return
            put(_END)
        except BaseException as err:  # handed to the consumer and re-raised there
            put(err)

    def consume():
        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        try:
            while (item := q.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            # Wait for the thread to finish its current item: a daemon thread still inside
            # pyarrow or torch when the interpreter exits aborts the process
            # ("terminate called without an active exception").
            stop.set()
            thread.join(timeout=JOIN_TIMEOUT_S)

    return consume()


_END = object()
JOIN_TIMEOUT_S = 60.0


class ActivationCache:
    """A validated view of a cache directory. Reads by row group; never loads it whole."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        mpath = self.path / MANIFEST
        if not mpath.exists():
            raise CacheError(f"{mpath}: missing; the cache is incomplete (run `dvc repro activations`)")
        from saelab.io import read_json

        self.manifest = read_json(mpath)
        self.d: int = self.manifest["d"]
        self.dtype: str = self.manifest["dtype"]
        if self.dtype not in DTYPES:
            raise CacheError(f"{mpath}: dtype {self.dtype!r} is not one of {sorted(DTYPES)}")
        self.torch_dtype = DTYPES[self.dtype]
        self.n_tokens: int = self.manifest["n_tokens"]
        self.files = [self.path / s["file"] for s in self.manifest["shards"]]
        self._row_groups = self._validate()

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

    def row_groups(self, start: int = 0, prefetch: int = 4) -> Iterator[torch.Tensor]:
        """Yield the ``x`` of each row group from ``start`` on, read ahead by a background thread."""
        return background((self.read_row_group(i)["x"] for i in range(start, len(self._row_groups))), prefetch)

    def _stream(self, pos: int) -> Iterator[torch.Tensor]:
        """Row groups forever, starting at token ``pos`` and wrapping at the end of the cache."""
        first, offset = self._locate(pos % self.n_tokens)
        while True:
            for x in self.row_groups(first):
                yield x[offset:]
                offset = 0
            first = 0

    def batches(self, batch_size: int, skip_tokens: int = 0, pin: bool = False, prefetch: int = 4) -> Iterator[torch.Tensor]:
        """Endless (batch_size, d) batches in cache order, looping over epochs, assembled ahead by a thread.

        Batch k holds cache tokens [s + kB, s + (k+1)B) mod N with s = ``skip_tokens``,
        so a resumed run sees exactly the data an uninterrupted one would. With ``pin`` the
        batches are in page-locked memory, so ``.to("cuda", non_blocking=True)`` overlaps compute.
        """

        def assemble():
            buf, at = torch.empty(0, self.d, dtype=self.torch_dtype), 0
            for x in self._stream(skip_tokens):
                buf, at = torch.cat([buf[at:], x]), 0
                while len(buf) - at >= batch_size:
                    batch = buf[at : at + batch_size]
                    yield batch.pin_memory() if pin else batch
                    at += batch_size

        return background(assemble(), prefetch)

    def _locate(self, pos: int) -> tuple[int, int]:
        for i, (_, _, n) in enumerate(self._row_groups):
            if pos < n:
                return i, pos
            pos -= n
        return 0, 0

    def iter_tokens(self, columns=("x", "row", "pos", "token")) -> Iterator[dict]:
        for i in range(len(self._row_groups)):
            yield self.read_row_group(i, columns)
