import numpy as np

from saelab.data.tokens import pack_rows, read_rows, write_rows


def test_rows_start_with_bos_and_follow_the_stream():
    """Row r is BOS then stream[r*(n-1) : (r+1)*(n-1)]; the ragged tail is dropped."""
    stream = np.arange(1, 24, dtype=np.int32)
    rows = pack_rows(stream, n_ctx=5, bos_id=0)
    assert rows.shape == (5, 5)
    assert (rows[:, 0] == 0).all()
    assert rows[1].tolist() == [0, 5, 6, 7, 8]


def test_parquet_round_trip(tmp_path):
    """Token rows survive a Parquet write/read exactly."""
    rows = np.random.default_rng(0).integers(0, 4096, (37, 16)).astype(np.int32)
    write_rows(tmp_path / "t.parquet", rows)
    assert np.array_equal(read_rows(tmp_path / "t.parquet"), rows)
