import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from saelab.config import TextConfig
from saelab.data import text
from saelab.interop.hub import HubUnavailable


def test_stdlib_source_is_sorted_and_excludes_site_packages():
    """python-stdlib yields .py files in path order and none from site-packages."""
    ids = [d.doc_id for _, d in zip(range(200), text.stdlib_docs())]
    assert ids == sorted(ids) and len(ids) == 200
    assert not any("site-packages" in i for i in ids)


def test_dir_source_reads_every_format(tmp_path):
    """dir: reads .txt .md .py whole, .jsonl per line and .parquet per row."""
    (tmp_path / "a.txt").write_text("alpha")
    (tmp_path / "b.md").write_text("# beta")
    (tmp_path / "c.py").write_text("x = 1")
    (tmp_path / "d.jsonl").write_text(json.dumps({"text": "one"}) + "\n" + json.dumps({"text": "two"}) + "\n")
    pq.write_table(pa.table({"text": ["p0", "p1"]}), tmp_path / "e.parquet")
    (tmp_path / "skip.bin").write_bytes(b"\0")
    docs = list(text.dir_docs(tmp_path))
    assert [d.text for d in docs] == ["alpha", "# beta", "x = 1", "one", "two", "p0", "p1"]
    assert len({d.doc_id for d in docs}) == 7


def test_missing_dir_source_fails_before_work(tmp_path):
    """A missing dir: source raises at open_source, naming the path."""
    with pytest.raises(FileNotFoundError, match="no such directory"):
        text.open_source(TextConfig(source=f"dir:{tmp_path / 'missing'}"))


def test_hf_source_without_network_fails_fast(monkeypatch):
    """hf: without a reachable Hub fails at once with the fix."""
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(HubUnavailable, match="python-stdlib"):
        next(text.open_source(TextConfig(source="hf:some/dataset")))


def test_split_is_deterministic_and_order_free():
    """The split depends only on doc ids: shuffling the input gives the same split."""
    docs = [text.Doc(f"d{i}", "t", f"text {i}") for i in range(500)]
    tr1, ev1 = text.split_docs(iter(docs), 0.1)
    tr2, ev2 = text.split_docs(iter(docs[::-1]), 0.1)
    assert {d.doc_id for d in ev1} == {d.doc_id for d in ev2}
    assert 25 < len(ev1) < 80 and len(tr1) + len(ev1) == 500


def test_empty_split_is_an_error():
    """A corpus too small for both splits is refused with a fix."""
    with pytest.raises(ValueError, match="eval_fraction"):
        text.split_docs(iter([text.Doc("only", "t", "x")]), 0.1)
