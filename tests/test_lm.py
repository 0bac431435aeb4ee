import json

import numpy as np
import pytest
import torch

from saelab.data import lm
from saelab.interop.hub import HubUnavailable


def test_pretrained_without_network_fails_fast(monkeypatch):
    """lm.source=pretrained with no reachable Hub raises at once, saying what to change."""
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(HubUnavailable, match="lm.source: embedded"):
        lm.load_pretrained("gelu-1l")


def test_gelu_1l_alias():
    """gelu-1l resolves to Neel Nanda's legacy TransformerLens repo."""
    assert lm.TL_ALIASES["gelu-1l"] == "NeelNanda/GELU_1L512W_C4_Code"


def test_save_load_round_trip(tiny_lm):
    """A saved LM reloads with identical logits."""
    path, rows = tiny_lm
    a = lm.load_lm(path)
    b = lm.load_lm(path)
    tokens = torch.from_numpy(rows[:2].astype(np.int64))
    with torch.no_grad():
        assert torch.equal(a.model(tokens), b.model(tokens))
    assert a.tokenizer.token_to_id(lm.BOS) == a.bos_token_id


def test_tokenizer_vocab_mismatch_is_caught(tiny_lm, tmp_path):
    """A tokenizer larger than the LM's vocabulary is refused, naming the file."""
    path, _ = tiny_lm
    for f in path.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["tl_config"]["d_vocab"] = 100
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="tokenizer.json: tokenizer has"):
        lm.load_lm(tmp_path)


def test_training_lowers_loss_below_unigram():
    """A few dozen steps on a repetitive corpus beat the unigram baseline."""
    from saelab.data.tokens import tokenize_texts
    from tests.conftest import CORPUS, TINY_LM

    tok = lm.train_tokenizer(CORPUS, 300)
    rows = tokenize_texts(tok, CORPUS, 16, tok.token_to_id(lm.BOS))
    cfg = TINY_LM.model_copy(update={"n_steps": 60, "lr": 3e-3})
    model = lm.build_model(lm.tl_config(cfg))
    lm.train_lm(model, rows, cfg)
    assert lm.eval_ce(model.eval(), rows) < lm.unigram_ce(rows, rows, 300) - 0.5


def test_unigram_ce_by_hand():
    """Unigram CE equals the hand-computed add-one-smoothed value."""
    train = np.array([[0, 1, 1, 2]])
    ev = np.array([[0, 1, 2]])
    # counts over targets [1,1,2] + 1 each over vocab 3: [1,3,2] / 6
    expected = -(np.log(3 / 6) + np.log(2 / 6)) / 2
    assert lm.unigram_ce(train, ev, 3) == pytest.approx(expected)


def test_measuring_loss_during_training_leaves_the_lm_unchanged():
    """benchmarks/lm_curve.py measures CE inside train_lm's on_step (before the first step and after each):
    the trained weights equal a run without it, and the calls come at steps 0..n_steps."""
    from benchmarks.lm_curve import mean_ce
    from tests.conftest import CORPUS, TINY_LM

    cfg = TINY_LM.model_copy(update={"n_steps": 6})
    plain = lm.train_embedded(cfg, CORPUS, CORPUS)[0].state_dict()
    seen = []

    def measure(step, model):
        rng, mode = torch.get_rng_state(), model.training
        seen.append((step, mean_ce(model, rows, 4)))
        assert torch.equal(torch.get_rng_state(), rng) and model.training == mode  # nothing drawn, mode restored

    tok = lm.train_tokenizer(CORPUS, cfg.vocab_size)
    from saelab.data.tokens import tokenize_texts

    rows = tokenize_texts(tok, CORPUS, cfg.n_ctx, tok.token_to_id(lm.BOS))
    measured = lm.train_embedded(cfg, CORPUS, CORPUS, on_step=measure)[0].state_dict()
    assert [s for s, _ in seen] == list(range(7)) and seen[-1][1] < seen[0][1]
    assert all(torch.equal(plain[k], measured[k]) for k in plain)
