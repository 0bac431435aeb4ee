"""Document sources and the deterministic train/eval split.

Output schema (``train.parquet`` / ``eval.parquet``): ``doc_id`` (string, unique),
``source`` (string), ``text`` (string). Documents go to eval when the first 8 bytes
of sha256(doc_id), read as an integer, fall below ``eval_fraction`` of 2**64: the
split depends only on the id, not on the order or number of documents.
"""

from __future__ import annotations

import hashlib
import json
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from saelab.errors import InputError, MissingInput
from saelab.config import TextConfig
from saelab.interop.hub import require_hub

DIR_SUFFIXES = (".txt", ".md", ".py", ".jsonl", ".parquet")
SCHEMA = pa.schema([("doc_id", pa.string()), ("source", pa.string()), ("text", pa.string())])


@dataclass(frozen=True)
class Doc:
    doc_id: str
    source: str
    text: str


def stdlib_docs() -> Iterator[Doc]:
    """Every ``.py`` file of the running interpreter's standard library, sorted by path."""
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if "site-packages" in rel.parts or "dist-packages" in rel.parts:
            continue
        yield Doc(f"stdlib/{rel.as_posix()}", "python-stdlib", path.read_text(encoding="utf-8", errors="replace"))


def _file_docs(path: Path, rel: str, text_column: str) -> Iterator[Doc]:
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as fh:
            for i, line in enumerate(fh):
                if line.strip():
                    row = json.loads(line)
                    if text_column not in row:
                        raise InputError(f"{path}:{i + 1}: no {text_column!r} field (set text.text_column)")
                    yield Doc(f"{rel}#{i}", "dir", str(row[text_column]))
    elif path.suffix == ".parquet":
        table = pq.read_table(path)
        if text_column not in table.column_names:
            raise InputError(f"{path}: no column {text_column!r} (has {table.column_names}; set text.text_column)")
        for i, text in enumerate(table.column(text_column).to_pylist()):
            yield Doc(f"{rel}#{i}", "dir", text or "")
    else:
        yield Doc(rel, "dir", path.read_text(encoding="utf-8", errors="replace"))


def dir_docs(root: Path, text_column: str = "text") -> Iterator[Doc]:
    """Local ``.txt .md .py .jsonl .parquet`` files under ``root``, sorted by path."""
    if not root.is_dir():
        raise MissingInput(f"text.source dir:{root}: no such directory (point text.source at an existing folder)")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in DIR_SUFFIXES)
    if not files:
        raise MissingInput(f"text.source dir:{root}: holds no {', '.join(DIR_SUFFIXES)} files")
    for path in files:
        yield from _file_docs(path, path.relative_to(root).as_posix(), text_column)


def hf_docs(spec: str, cfg: TextConfig) -> Iterator[Doc]:
    """A Hugging Face dataset, streamed (needs network): ``hf:<dataset>[:<config>]``."""
    name, _, subset = spec.partition(":")
    require_hub(f"datasets/{name}", what=f"text.source hf:{spec}", fix="set text.source: python-stdlib or dir:<path>")
    import datasets  # heavy; imported only on this path

    ds = datasets.load_dataset(name, subset or None, split="train", streaming=True)
    for i, row in enumerate(ds):
        if cfg.max_docs is not None and i >= cfg.max_docs:
            break
        yield Doc(f"hf/{name}#{i}", f"hf:{name}", str(row[cfg.text_column]))


def open_source(cfg: TextConfig) -> Iterator[Doc]:
    """Check the source exists *before* any work, then return its document iterator."""
    if cfg.source == "python-stdlib":
        return stdlib_docs()
    kind, _, arg = cfg.source.partition(":")
    if kind == "dir":
        root = Path(arg).expanduser()
        if not root.is_dir():
            raise MissingInput(f"text.source dir:{arg}: no such directory (point text.source at an existing folder)")
        return dir_docs(root, cfg.text_column)
    return hf_docs(arg, cfg)


def is_eval(doc_id: str, eval_fraction: float) -> bool:
    h = int.from_bytes(hashlib.sha256(doc_id.encode()).digest()[:8], "big")
    return h < eval_fraction * 2**64


def split_docs(docs: Iterator[Doc], eval_fraction: float) -> tuple[list[Doc], list[Doc]]:
    train, held = [], []
    seen: set[str] = set()
    for doc in docs:
        if doc.doc_id in seen:
            raise InputError(f"duplicate doc_id {doc.doc_id!r}")
        seen.add(doc.doc_id)
        if doc.text.strip():
            (held if is_eval(doc.doc_id, eval_fraction) else train).append(doc)
    if not train or not held:
        raise InputError(
            f"text split is empty (train {len(train)}, eval {len(held)} documents); "
            "add documents or change text.eval_fraction"
        )
    return train, held


def write_docs(path: Path, docs: list[Doc]) -> None:
    table = pa.table(
        {"doc_id": [d.doc_id for d in docs], "source": [d.source for d in docs], "text": [d.text for d in docs]},
        schema=SCHEMA,
    )
    pq.write_table(table, path, compression="zstd")


def read_texts(path: str | Path) -> list[str]:
    return pq.read_table(path, columns=["text"]).column("text").to_pylist()
