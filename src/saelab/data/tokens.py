"""Fixed-length token rows: documents joined by BOS, cut into rows that each start with BOS.

Following TransformerLens's ``tokenize_and_concatenate``: every document is followed
by a BOS separator, the stream is cut into chunks of ``n_ctx - 1`` and BOS is
prepended to each, so row ``r`` is ``[BOS, t_{r(n-1)}, ..., t_{r(n-1)+n-2}]``.
The ragged tail is dropped. Stored as Parquet with one column ``tokens``
(``fixed_size_list<int32>[n_ctx]``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tokenizers import Tokenizer
from saelab.errors import MissingInput


def encode_stream(tokenizer: Tokenizer, texts: list[str], bos_id: int, chunk: int = 256) -> np.ndarray:
    """All documents' ids in order, each followed by ``bos_id``."""
    parts = []
    for i in range(0, len(texts), chunk):
        for enc in tokenizer.encode_batch(texts[i : i + chunk], add_special_tokens=False):
            parts.append(np.asarray(enc.ids, dtype=np.int32))
            parts.append(np.asarray([bos_id], dtype=np.int32))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)


def pack_rows(stream: np.ndarray, n_ctx: int, bos_id: int) -> np.ndarray:
    """Cut a token stream into rows [n_rows, n_ctx] that each start with BOS."""
    body = n_ctx - 1
    n_rows = len(stream) // body
    rows = np.empty((n_rows, n_ctx), dtype=np.int32)
    rows[:, 0] = bos_id
    rows[:, 1:] = stream[: n_rows * body].reshape(n_rows, body)
    return rows


def tokenize_texts(tokenizer: Tokenizer, texts: list[str], n_ctx: int, bos_id: int) -> np.ndarray:
    return pack_rows(encode_stream(tokenizer, texts, bos_id), n_ctx, bos_id)


def sample_rows(n_rows_available: int, n_ctx: int, n_tokens: int | None, seed: int) -> np.ndarray:
    """Indices of a seeded random subset of rows holding about ``n_tokens`` tokens, sorted for locality.

    ``None`` (or more tokens than there are) takes every row. The subset is a prefix of one
    seeded permutation, so with the same seed a smaller sample is contained in a larger one:
    every eval metric that samples rows (CE, top-k, compare) sees the same tokens
    (docs/metrics.md, "Eval samples").
    """
    n_rows = n_rows_available if n_tokens is None else min(n_rows_available, -(-n_tokens // n_ctx))
    return np.sort(np.random.default_rng(seed).permutation(n_rows_available)[:n_rows])


def write_rows(path: str | Path, rows: np.ndarray) -> None:
    n_ctx = rows.shape[1]
    flat = pa.array(rows.ravel(), type=pa.int32())
    col = pa.FixedSizeListArray.from_arrays(flat, n_ctx)
    pq.write_table(pa.table({"tokens": col}), path, compression="zstd")


def read_rows(path: str | Path) -> np.ndarray:
    path = Path(path)
    if not path.exists():
        raise MissingInput(f"{path}: token file missing (run `dvc repro tokens`)")
    col = pq.read_table(path, columns=["tokens"]).column("tokens").combine_chunks()
    n_ctx = col.type.list_size
    return col.flatten().to_numpy().reshape(-1, n_ctx)
