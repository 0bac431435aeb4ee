"""Shared tiny fixtures: a small corpus, a tiny LM on disk and a tiny activation cache."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from filelock import FileLock
from transformer_lens.model_bridge.exceptions import StopAtLayerException

import saelab.saes  # noqa: F401  (registers the built-in architectures: params checks are strict)
from saelab import threads
from saelab.config import LMConfig
from saelab.data import cache as acts
from saelab.data import lm
from saelab.data.tokens import tokenize_texts
from saelab.saes.base import SAE

# Under pytest-xdist (`make test`: -n <cores> --dist loadgroup) each worker gets its share of the cores, it and the
# stage subprocesses it starts: two torch processes with all cores each slow each other far more than 2x.
# SAELAB_THREADS carries the share to the stages (saelab.threads; docs/usage.md, "Threads").
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ[threads.ENV] = str(threads.threads(jobs=int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
    threads.configure()


def seconds(item) -> float:
    """A test's ``slow`` mark: its rough duration (0 unmarked); a mark without the figure is refused by name."""
    mark = item.get_closest_marker("slow")
    if mark is None:
        return 0
    if not mark.args:
        raise pytest.UsageError(f"{item.nodeid}: give @pytest.mark.slow its rough duration, e.g. slow(60)")
    return mark.args[0]


def pytest_collection_modifyitems(config, items):  # noqa: ARG001 - pytest's hook signature
    """The longest tests first (``@pytest.mark.slow(seconds)``: a rough duration on a 2-core CPU; the rest keep their
    order after them), so that under pytest-xdist the two workers end together instead of one finishing a long
    test alone at the end. Tests sharing a module-scoped fixture (test_browser's analysis of the tiny LM, ...) form
    one xdist group, so under --dist loadgroup one worker builds the fixture once and runs them all; the rest
    spread freely. The tiny pipeline is session-wide instead (tiny_pipeline: built once for all workers, each test
    copies it)."""
    items.sort(key=lambda item: -seconds(item))
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        shared = sorted(name for name, defs in (info.name2fixturedefs.items() if info else ())
                        if defs and defs[-1].scope == "module")  # fmt: skip
        if shared:
            item.add_marker(pytest.mark.xdist_group(f"{item.module.__name__}:{shared[0]}"))


CORPUS = [
    "def add(a, b):\n    return a + b\n" * 3,
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n" * 2,
    "import os\nprint(os.path.join('a', 'b'))\n" * 4,
    "for i in range(10):\n    if i % 2 == 0:\n        print(i)\n" * 3,
] * 5

TINY_LM = LMConfig(vocab_size=300, d_model=32, d_mlp=64, n_heads=2, n_ctx=16, batch_size=4, n_steps=3, warmup_steps=1)


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory):
    """A 1-layer GELU LM + tokenizer saved with save_lm, and its token rows."""
    out = tmp_path_factory.mktemp("lm")
    tok = lm.train_tokenizer(CORPUS, TINY_LM.vocab_size)
    config = lm.embedded_config(TINY_LM, tok)
    model = lm.build_model(lm.tl_config(TINY_LM))
    rows = tokenize_texts(tok, CORPUS, TINY_LM.n_ctx, config["bos_token_id"])
    lm.train_lm(model, rows, TINY_LM)
    lm.save_lm(out, model, tok, config)
    return out, rows


def run_fake_pass(fwd_hooks, value_of):
    """What TransformerLens's ``run_with_hooks`` does, for a fake LM: each hook in turn sees ``value_of(its name)``;
    a hook may stop the pass (``StopAtLayerException``, as saelab.data.hooks does), whose tensor is then returned."""
    try:
        for name, fn in fwd_hooks:
            fn(value_of(name), hook=None)
    except StopAtLayerException as stop:
        return stop.layer_output
    return None


class FakeLM:
    """Stands in for the LM: the activation at (token t, position p) is fixed by t and p."""

    def __init__(self, d: int, poison: bool = False):
        self.d, self.poison = d, poison

    @staticmethod
    def expected(tokens: torch.Tensor, d: int) -> torch.Tensor:
        pos = torch.arange(tokens.shape[-1]).float().expand(tokens.shape)
        k = torch.arange(d).float()
        return torch.sin(tokens.float()[..., None] * (k + 1) / 7) + 0.01 * pos[..., None] * k

    def run_with_hooks(self, tokens, fwd_hooks):
        assert tokens.dtype == torch.long and isinstance(fwd_hooks[0][0], str), "token ids and a hook name, as an LM"
        x = self.expected(tokens, self.d)
        if self.poison:
            x[0, 0, 0] = float("nan")
        return run_fake_pass(fwd_hooks, lambda name: x)


def make_cache(
    path, n_tokens=3000, d=8, dtype="fp32", seed=0, n_ctx=10, shard_tokens=1000, row_group_tokens=250, poison=False
):
    """Write a cache from FakeLM over rows whose token ids are 0..n_tokens-1 (so each token is unique)."""
    from saelab.io import write_json

    n_rows = n_tokens // n_ctx
    rows = np.arange(n_rows * n_ctx, dtype=np.int32).reshape(n_rows, n_ctx)
    spec = acts.CacheSpec("blocks.0.mlp.hook_post", 0, d, dtype, n_tokens, seed, 7, shard_tokens, row_group_tokens)
    path.mkdir(parents=True, exist_ok=True)
    manifest = acts.write_cache(FakeLM(d, poison), rows, np.arange(n_rows), spec, path, "cpu")
    write_json(path / acts.MANIFEST, manifest | {"bos": "include"})  # FakeLM rows hold no BOS
    return rows, manifest


def identity_sae(d):
    """An SAE that reconstructs exactly: f = [relu(x), relu(-x)], W_dec = [I; -I]."""
    sae = SAE(d, 2 * d, seed=0)
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def build_once(shared: Path, name: str, build) -> Path:
    """``build(folder)`` once per test session, shared by pytest-xdist's workers through ``shared`` (a folder they
    all see): the first to ask builds under a file lock, in a scratch folder renamed into place when complete, so
    a failed build leaves nothing that looks done (the next to ask builds again and fails with its own error)."""
    dest = shared / name
    with FileLock(str(shared / f"{name}.lock")):
        if not dest.exists():
            scratch = shared / f"{name}.tmp"
            shutil.rmtree(scratch, ignore_errors=True)
            scratch.mkdir()
            build(scratch)
            scratch.rename(dest)
    return dest


def _repro_tiny(dest: Path) -> None:
    from tests.test_pipeline import make_repo, run_cmd

    make_repo(dest)
    run_cmd(["dvc", "repro"], dest)


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory):
    """The tiny pipeline after one `dvc repro`, built once per session (every xdist worker reads the same one: their
    base temporary folders share a parent). Read-only: a test that runs anything in it takes ``repo``, its own copy."""
    base = tmp_path_factory.getbasetemp()
    return build_once(base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base, "tiny-pipeline", _repro_tiny)


@pytest.fixture
def repo(tiny_pipeline, tmp_path):
    """A private copy of the built tiny pipeline (git, DVC cache and outputs): every test starts from the same
    state whatever ran before it, on whichever worker."""
    dest = tmp_path / "pipeline"
    shutil.copytree(tiny_pipeline, dest, symlinks=True)
    return dest
