"""Training memory does not grow with the cache: the reader holds a few row groups, never the cache."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import make_cache

REPO = Path(__file__).resolve().parents[1]


def _peak_rss_training_on(tmp: Path, n_tokens: int) -> float:
    d, batch = 128, 256
    make_cache(tmp / "cache", n_tokens=n_tokens, d=d, n_ctx=16, shard_tokens=16384, row_group_tokens=2048)
    sae = dict(
        expansion=2,
        l1_coeff=0.1,
        batch_size=batch,
        n_tokens=n_tokens,
        resample_every=n_tokens,
        resample_window=n_tokens,
        resample_stop=0.0,
        lr_warmup_tokens=0,
        log_every=50,
        checkpoint_every=0,
        device="cpu",
    )
    (tmp / "params.yaml").write_text(yaml.safe_dump({"sae": sae, "activations": {"bos": "include"}}))
    cmd = [
        sys.executable,
        "-m",
        "stages.train",
        "--seed",
        "0",
        "--params",
        str(tmp / "params.yaml"),
        "--activations",
        str(tmp / "cache"),
        "--out",
        str(tmp / "sae"),
        "--live",
        str(tmp / "live"),
        "--metrics",
        str(tmp / "m.json"),
        "--timing",
        str(tmp / "t.json"),
        "--checkpoints",
        str(tmp / "ck"),
    ]
    subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO / "src")}, check=True, capture_output=True)
    m = json.loads((tmp / "m.json").read_text())
    assert m["epochs"] > 0.99, "the whole cache must be read"
    return json.loads((tmp / "t.json").read_text())["peak_rss_mb"]


@pytest.mark.slow(26)
def test_peak_rss_of_training_does_not_grow_with_the_cache(tmp_path):
    """A whole epoch over a 256 MB cache peaks within 40 MB of an epoch over a 16 MB one (fp32, d=128)."""
    (tmp_path / "small").mkdir()
    (tmp_path / "large").mkdir()
    small = _peak_rss_training_on(tmp_path / "small", 32_768)
    large = _peak_rss_training_on(tmp_path / "large", 524_288)
    assert large - small < 40, f"peak RSS {small:.0f} MB on 16 MB of cache but {large:.0f} MB on 256 MB"
