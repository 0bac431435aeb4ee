import json
import shutil
import threading
import time

import numpy as np
import pytest
import torch

from saelab.data import cache as acts
from saelab.data import hooks
from saelab.data.background import background
from saelab.data.cache import ActivationCache, CacheError
from tests.conftest import FakeLM, make_cache


def _read_all(cache):
    parts = list(cache.iter_tokens())
    return {k: (torch.cat if k == "x" else np.concatenate)([p[k] for p in parts]) for k in parts[0]}


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_exact_round_trip(tmp_path, dtype):
    """Every cached vector equals the LM's activation for its (token, position), bit for bit in the cache dtype."""
    rows, manifest = make_cache(tmp_path, dtype=dtype)
    cache = ActivationCache(tmp_path)
    got = _read_all(cache)
    assert len(got["x"]) == manifest["n_tokens"] == 3000
    expected = FakeLM.expected(torch.from_numpy(rows), 8)[got["row"], got["pos"]].to(acts.DTYPES[dtype])
    assert torch.equal(got["x"], expected)
    assert (rows[got["row"], got["pos"]] == got["token"]).all()
    assert sorted(got["token"].tolist()) == list(range(3000))  # every token exactly once


def test_cache_is_shuffled_across_the_whole_cache(tmp_path):
    """Tokens of one prompt are spread over the cache; neighbours rarely share a prompt."""
    make_cache(tmp_path, n_tokens=5000)
    row = _read_all(ActivationCache(tmp_path))["row"]
    same_neighbour = (row[1:] == row[:-1]).mean()
    assert same_neighbour < 0.02  # 10 tokens per prompt out of 500 prompts: ~0.2% by chance
    spans = [np.ptp(np.flatnonzero(row == r)) for r in range(0, 500, 25)]
    assert np.median(spans) > 0.5 * len(row)
    shards_of_row0 = {i // 1000 for i in np.flatnonzero(row == 0)}
    assert len(shards_of_row0) >= 3


def test_shuffle_is_seeded(tmp_path):
    """The same seed gives identical shards; another seed a different order."""
    make_cache(tmp_path / "a", seed=1)
    make_cache(tmp_path / "b", seed=1)
    make_cache(tmp_path / "c", seed=2)
    ra, rb, rc = (_read_all(ActivationCache(tmp_path / k))["token"] for k in "abc")
    assert np.array_equal(ra, rb) and not np.array_equal(ra, rc)


def test_manifest_records_stats(tmp_path):
    """The manifest's mean and mean norm match the data."""
    make_cache(tmp_path)
    cache = ActivationCache(tmp_path)
    x = _read_all(cache)["x"].double()
    assert torch.allclose(cache.mean.double(), x.mean(0), atol=1e-5)
    assert cache.manifest["mean_norm"] == pytest.approx(x.norm(dim=-1).mean().item(), rel=1e-5)
    assert {"hook", "d", "dtype", "n_tokens", "shards"} <= set(cache.manifest)


def test_batches_stream_in_order_and_wrap(tmp_path):
    """batches() yields the cache in order across row groups and shards, then wraps; skip resumes."""
    make_cache(tmp_path)
    cache = ActivationCache(tmp_path)
    full = _read_all(cache)["x"]
    it = cache.batches(128)
    got = torch.cat([next(it) for _ in range(30)])  # 3840 tokens: crosses the end of 3000
    assert torch.equal(got[:3000], full) and torch.equal(got[3000:], full[:840])
    resumed = next(cache.batches(128, skip_tokens=128 * 5))
    assert torch.equal(resumed, full[640:768])


def test_unknown_hook_lists_valid_ones():
    """An unknown hook name raises listing the valid hooks."""
    with pytest.raises(
        ValueError,
        match="blocks.0.mlp.hook_post.*blocks.0.hook_resid_post|blocks.0.hook_resid_post.*blocks.0.mlp.hook_post",
    ):
        hooks.check_hook("blocks.0.mlp.hook_psot", {"n_layers": 1, "d_mlp": 64, "d_model": 32})
    assert hooks.check_hook("blocks.0.hook_resid_post", {"n_layers": 1, "d_mlp": 64, "d_model": 32}) == (0, 32)


def test_truncated_shard_names_the_file(tmp_path):
    """A truncated Parquet shard gives a CacheError naming the file."""
    make_cache(tmp_path)
    shard = tmp_path / "shard-00001.parquet"
    shard.write_bytes(shard.read_bytes()[:500])
    with pytest.raises(CacheError, match="shard-00001.parquet: unreadable or truncated"):
        ActivationCache(tmp_path)


def test_garbage_shard_names_the_file(tmp_path):
    """A shard that is not Parquet at all gives a CacheError naming the file."""
    make_cache(tmp_path)
    (tmp_path / "shard-00002.parquet").write_bytes(b"not parquet" * 100)
    with pytest.raises(CacheError, match="shard-00002.parquet"):
        ActivationCache(tmp_path)


@pytest.mark.parametrize(
    "key, value, message",
    [("d", 9, "column x is"), ("dtype", "fp16", "column x is"), ("n_tokens", 3001, "manifest says 3001")],
)
def test_manifest_disagreeing_with_shards(tmp_path, key, value, message):
    """A manifest that disagrees with its shards (d, dtype, count) is refused."""
    make_cache(tmp_path)
    m = json.loads((tmp_path / "manifest.json").read_text())
    m[key] = value
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CacheError, match=message):
        ActivationCache(tmp_path)


def test_missing_manifest_means_incomplete(tmp_path):
    """A cache directory without its manifest is reported as incomplete."""
    make_cache(tmp_path)
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(CacheError, match="incomplete"):
        ActivationCache(tmp_path)


def test_nonfinite_activations_refused(tmp_path):
    """A NaN activation stops the writer, naming the hook and rows."""
    with pytest.raises(FloatingPointError, match="non-finite activations at blocks.0.mlp.hook_post"):
        make_cache(tmp_path, poison=True)


def test_disk_space_checked_before_writing(tmp_path, monkeypatch):
    """Too little free disk fails fast, stating both sizes."""
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10, 10, 1000))
    with pytest.raises(OSError, match=r"needs 0\.00 GB .* only 0\.00 GB"):
        make_cache(tmp_path)
    assert not list(tmp_path.glob("*.parquet"))


def test_sae_width_must_match_hook():
    """An SAE whose d_in differs from the hook's width is refused, naming the file and both widths."""
    tl = {"n_layers": 1, "d_mlp": 64, "d_model": 32}
    assert hooks.check_sae_width(64, "blocks.0.mlp.hook_post", tl, "models/sae") == 0
    with pytest.raises(ValueError, match="models/sae: SAE d_in is 32 but blocks.0.mlp.hook_post has width 64"):
        hooks.check_sae_width(32, "blocks.0.mlp.hook_post", tl, "models/sae")


def _slow_items(log: list):
    for i in range(1000):
        time.sleep(0.05)
        log.append(i)
        yield i


def test_background_reraises_and_stops_its_thread_on_close():
    """Items arrive in order, errors re-raise in the consumer, and close() returns only once the thread is gone."""
    assert list(background(iter(range(10)), depth=2)) == list(range(10))

    def broken():
        yield 1
        raise ValueError("bad row group")

    with pytest.raises(ValueError, match="bad row group"):
        list(background(broken(), depth=2))

    before = threading.active_count()
    log: list = []
    it = background(_slow_items(log), depth=4)
    assert next(it) == 0 and threading.active_count() == before + 1
    it.close()
    # A thread left running into interpreter exit, inside pyarrow or torch, aborts the process.
    assert threading.active_count() == before
    produced = len(log)
    time.sleep(0.2)
    assert len(log) == produced, "the worker kept producing after close()"


def test_each_seed_reads_its_own_order_and_resumes_exactly(tmp_path):
    """Two seeds draw different batches (not shifted copies); one seed is reproducible, covers every token
    once per epoch, and skipping k batches equals dropping the first k."""
    make_cache(tmp_path / "c", n_tokens=3000, d=8)
    cache = ActivationCache(tmp_path / "c")

    def take(seed, n, skip=0):
        it = cache.batches(100, skip_tokens=skip, seed=seed)
        out = [next(it) for _ in range(n)]
        it.close()
        return out

    a, b = take(0, 30), take(1, 30)
    rows_a = {tuple(r.tolist()) for r in a[0]}
    assert not any(rows_a == {tuple(r.tolist()) for r in x} for x in b)  # no batch of seed 1 equals seed 0's first
    assert all(torch.equal(x, y) for x, y in zip(a, take(0, 30)))
    assert len({tuple(r.tolist()) for x in a for r in x}) == 3000  # one epoch: every token exactly once
    assert all(torch.equal(x, y) for x, y in zip(a[7:12], take(0, 5, skip=700)))
    stored = cache.batches(100)
    assert all(torch.equal(x, next(stored)) for x in take(None, 3))  # no seed: the stored order, batch by batch
    stored.close()


def test_bos_tokens_are_left_out_of_the_cache(tmp_path):
    """With an excluded token id, the cache holds every other token and none of that id; its mean covers the rest."""
    n_ctx, d = 10, 8
    rows = np.arange(300, dtype=np.int32).reshape(30, n_ctx)
    rows[:, 0] = 7_000  # a BOS id at every row start
    spec = acts.CacheSpec("blocks.0.mlp.hook_post", 0, d, "fp32", 300, 0, 7, 1000, 50, exclude_token=7_000)
    (tmp_path / "c").mkdir()
    man = acts.write_cache(FakeLM(d), rows, np.arange(30), spec, tmp_path / "c", "cpu")
    json.dump(man | {"bos": "exclude"}, open(tmp_path / "c" / acts.MANIFEST, "w"))
    cache = ActivationCache(tmp_path / "c")
    tokens = np.concatenate([g["token"] for g in cache.iter_tokens(("token",))])
    assert man["n_tokens"] == 270 and man["n_excluded"] == 30 and 7_000 not in tokens
    expected = (
        FakeLM.expected(torch.from_numpy(rows.astype(np.int64)), d)[:, 1:].reshape(-1, d).mean(0)
    )  # BOS column dropped
    assert torch.allclose(cache.mean, expected, atol=1e-5)
    with pytest.raises(CacheError, match="activations.bos"):
        acts.check_bos_policy(cache, "include")


def test_one_lm_pass_writes_each_site_as_its_own_pass_would(tiny_lm, tmp_path, monkeypatch):
    """build_caches over three hooks (one LM pass) writes, per hook, the bytes build_cache writes for it alone:
    the same tokens, the same shuffle, the same statistics; a hook the LM lacks is refused before any output."""
    from saelab.config import ActivationsConfig
    from saelab.data.cachebuild import build_cache, build_caches
    from saelab.data.tokens import write_rows
    from saelab.errors import InputError
    from saelab.io import sha256_dir

    lm_dir, rows = tiny_lm
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    write_rows(tokens / "train.parquet", rows)
    cfg = ActivationsConfig(n_tokens=1500, batch_rows=8, shard_tokens=512, row_group_tokens=128, dtype="fp32")
    hooks = ["blocks.0.mlp.hook_post", "blocks.0.hook_resid_pre", "blocks.0.hook_resid_post"]
    manifests, timing = build_caches(cfg, hooks, lm_dir, tokens, [tmp_path / "one" / h for h in hooks])
    assert [m["hook"] for m in manifests] == hooks and manifests[0]["d"] != manifests[1]["d"]
    # the pass's timing, LM forwards apart (benchmarks/sites_cache.py reads them), stays out of the manifests
    assert 0 < timing["lm_seconds"] < timing["compute_seconds"]
    assert not {"lm_seconds", "compute_seconds"} & set(
        json.loads((tmp_path / "one" / hooks[0] / acts.MANIFEST).read_text())
    )
    for hook in hooks:
        alone, _, _ = build_cache(cfg.model_copy(update={"hook": hook}), lm_dir, tokens, tmp_path / "alone" / hook)
        assert sha256_dir(tmp_path / "one" / hook) == sha256_dir(tmp_path / "alone" / hook), hook
    a, b = ActivationCache(tmp_path / "one" / hooks[1]), ActivationCache(tmp_path / "one" / hooks[2])
    ga, gb = a.read_row_group(0, ("x", "row", "pos")), b.read_row_group(0, ("x", "row", "pos"))
    assert (ga["row"] == gb["row"]).all() and (ga["pos"] == gb["pos"]).all()  # a token sits at the same cache row
    assert not torch.equal(ga["x"], gb["x"])

    def no_pass(*args, **kwargs):
        raise AssertionError("the LM pass started before every hook was checked")

    monkeypatch.setattr(acts, "write_caches", no_pass)
    with pytest.raises(InputError, match="not a supported hook"):
        build_caches(cfg, [hooks[0], "blocks.1.mlp.hook_post"], lm_dir, tokens, [tmp_path / "x", tmp_path / "y"])
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
