"""Streaming mode: the on-device shuffle buffer hands out every LM token once, shuffled, and replays exactly."""

import numpy as np
import pytest
import torch

from saelab.config import SAEConfig, load_params
from saelab.data.lm import load_lm
from saelab.data.stream import ActivationStream
from saelab.section import ConfigError
from saelab.training.trainer import Trainer
from tests.conftest import run_fake_pass


class IdLM:
    """The activation of a token is (its id, 0): ids are unique, so the stream can be audited."""

    calls = 0

    def run_with_hooks(self, tokens, fwd_hooks):
        IdLM.calls += 1
        x = torch.stack([tokens.float(), torch.zeros(tokens.shape)], -1)
        return run_fake_pass(fwd_hooks, lambda name: x)


N_CTX, N_ROWS = 16, 50
ROWS = np.arange(N_ROWS * N_CTX, dtype=np.int32).reshape(N_ROWS, N_CTX)


def _stream(buffer_tokens=160, batch_rows=3, seed=0):
    return ActivationStream(
        IdLM(),
        ROWS,
        "blocks.0.mlp.hook_post",
        2,
        buffer_tokens=buffer_tokens,
        batch_rows=batch_rows,
        dtype="fp32",
        seed=seed,
        device=torch.device("cpu"),
    )


def _take(it, n):
    return torch.cat([next(it) for _ in range(n)])[:, 0].long()


def test_every_token_of_a_pass_is_handed_out_once():
    """Over most of one pass no token repeats, and almost all of the pass's tokens appear."""
    ids = _take(_stream().batches(16), 40)  # 640 of the 800 tokens of a pass
    assert len(ids.unique()) == len(ids)
    assert ids.max() < N_ROWS * N_CTX


def test_batches_mix_many_prompts_and_the_order_is_shuffled():
    batch = next(_stream().batches(16))[:, 0].long()
    prompts = (batch // N_CTX).unique()
    assert len(prompts) >= 6, f"a batch of 16 from a 160-token buffer drew from only {len(prompts)} prompts"
    assert not torch.equal(batch, batch.sort().values)


def test_resume_replays_the_same_stream():
    full = _take(_stream().batches(16), 30)
    resumed = _take(_stream().batches(16, skip_tokens=16 * 12), 18)
    assert torch.equal(full[16 * 12 :], resumed)
    assert not torch.equal(_take(_stream(seed=1).batches(16), 30), full)


def test_each_pass_visits_every_prompt_in_a_new_order():
    prompts = _stream()._prompts()
    per_pass = -(-N_ROWS // 3)
    first = torch.cat([next(prompts) for _ in range(per_pass)])[:, 0].long()
    second = torch.cat([next(prompts) for _ in range(per_pass)])[:, 0].long()
    assert first.sort().values.tolist() == second.sort().values.tolist() == list(range(N_ROWS * N_CTX))
    assert not torch.equal(first, second)


def test_buffer_must_hold_two_batches():
    with pytest.raises(ValueError, match="2 x sae.batch_size"):
        next(_stream(buffer_tokens=40).batches(32))
    with pytest.raises(ValueError, match="stream_buffer_tokens"):
        SAEConfig(source="stream", batch_size=4096, stream_buffer_tokens=4096)


def test_unknown_source_is_refused(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("sae:\n  source: disk\n")
    with pytest.raises(ConfigError, match="sae.source"):
        load_params(p)


@pytest.mark.parametrize("arch", ["standard", "topk"])
def test_sae_trains_from_the_stream_of_a_real_lm(tiny_lm, arch):
    """The tiny LM's hook_post activations, streamed, train an SAE (of either architecture) whose loss falls."""
    from saelab.registry import build

    path, rows = tiny_lm
    loaded = load_lm(path)
    d = loaded.config["tl_config"]["d_mlp"]
    stream = ActivationStream(
        loaded.model,
        rows,
        "blocks.0.mlp.hook_post",
        d,
        buffer_tokens=512,
        batch_rows=4,
        dtype="fp32",
        seed=0,
        device=torch.device("cpu"),
    )
    cfg = SAEConfig(
        architecture=arch,
        expansion=2,
        l1_coeff=1e-3,
        lr=3e-3,
        batch_size=64,
        n_tokens=64 * 60,
        resample_stop=0.0,
        lr_warmup_tokens=0,
        log_every=10,
        source="stream",
        stream_buffer_tokens=512,
        topk={"k": 8},
    )
    rows_logged = []
    Trainer(build(cfg, d, seed=0), cfg, torch.device("cpu")).run(
        lambda skip: stream.batches(64, skip), lambda step, row: rows_logged.append(row)
    )
    assert rows_logged[-1]["mse"] < 0.5 * rows_logged[0]["mse"]
