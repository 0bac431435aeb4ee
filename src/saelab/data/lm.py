"""The language model: build, train, save and load (TransformerLens 4 ``TransformerBridge``).

``models/lm/`` holds ``config.json`` (the TL config plus ``bos_token_id``),
``model.safetensors`` and ``tokenizer.json`` (a ``tokenizers`` file).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm.auto import tqdm
from transformer_lens.config import TransformerBridgeConfig
from transformer_lens.model_bridge.bridge import TransformerBridge
from transformer_lens.model_bridge.sources.native import boot as boot_native

from saelab.errors import InputError, MissingInput
from saelab.config import LMConfig
from saelab.data.tokens import tokenize_texts
from saelab.interop.hub import require_hub
from saelab.io import load_weights, read_json, save_weights, write_json

BOS = "<|bos|>"
# Short names researchers use for the legacy TransformerLens repos (Neel Nanda's toy models).
TL_ALIASES = {
    "gelu-1l": "NeelNanda/GELU_1L512W_C4_Code",
    "gelu-2l": "NeelNanda/GELU_2L512W_C4_Code",
    "gelu-3l": "NeelNanda/GELU_3L512W_C4_Code",
    "gelu-4l": "NeelNanda/GELU_4L512W_C4_Code",
    "solu-1l": "NeelNanda/SoLU_1L512W_C4_Code",
}


@dataclass(frozen=True)
class LoadedLM:
    model: TransformerBridge
    tokenizer: Tokenizer
    bos_token_id: int
    config: dict


# ---------------------------------------------------------------- tokenizer


def train_tokenizer(texts: list[str], vocab_size: int) -> Tokenizer:
    """Byte-level BPE (GPT-2 style) with one special token, ``<|bos|>`` (id 0)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


# ---------------------------------------------------------------- model


def tl_config(cfg: LMConfig) -> TransformerBridgeConfig:
    return TransformerBridgeConfig(
        d_model=cfg.d_model,
        d_mlp=cfg.d_mlp,
        n_heads=cfg.n_heads,
        d_head=cfg.d_model // cfg.n_heads,
        n_layers=cfg.n_layers,
        n_ctx=cfg.n_ctx,
        d_vocab=cfg.vocab_size,
        act_fn="gelu",
        normalization_type="LN",
        positional_embedding_type="standard",
        seed=cfg.seed,
    )


def _config_to_json(cfg: TransformerBridgeConfig) -> dict:
    return {k: v for k, v in cfg.to_dict().items() if isinstance(v, (int, float, str, bool, type(None)))}


def build_model(tl_cfg: TransformerBridgeConfig | dict) -> TransformerBridge:
    return boot_native(tl_cfg)


def lr_at(step: int, cfg: LMConfig) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.n_steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_lm(model: TransformerBridge, rows: np.ndarray, cfg: LMConfig, on_step=None) -> dict:
    """AdamW next-token training on ``rows`` [n_rows, n_ctx]; batches drawn by a seeded permutation.
    ``on_step(steps_done, model)`` before the first step (0) and after every optimiser step (it must leave the
    model and the RNGs as it found them: benchmarks/lm_curve.py evaluates there)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    data = torch.from_numpy(rows.astype(np.int64))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    order = torch.randperm(len(data), generator=gen)
    tokens_per_step = cfg.batch_size * data.shape[1]
    start, pos, losses = time.perf_counter(), 0, []
    bar = tqdm(range(cfg.n_steps), desc="lm train", unit="step")
    if on_step is not None:
        on_step(0, model)
    for step in bar:
        if pos + cfg.batch_size > len(order):
            order, pos = torch.randperm(len(data), generator=gen), 0
        batch = data[order[pos : pos + cfg.batch_size]]  # (B, n_ctx)
        pos += cfg.batch_size
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        loss = model(batch, return_type="loss")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if on_step is not None:
            on_step(step + 1, model)
        if step % 10 == 0:
            rate = (step + 1) * tokens_per_step / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}", tok_s=f"{rate:,.0f}")
    seconds = time.perf_counter() - start
    return {
        "train_tokens": cfg.n_steps * tokens_per_step,
        "train_seconds": seconds,
        "train_tokens_per_s": cfg.n_steps * tokens_per_step / seconds,
        "final_train_loss": float(np.mean(losses[-20:])),
        "epochs": cfg.n_steps * cfg.batch_size / len(data),
    }


def train_embedded(cfg: LMConfig, train_texts: list[str], eval_texts: list[str], on_step=None) -> tuple:
    """The lm stage's embedded LM: tokenizer, rows and training from the seed (``train_lm``'s ``on_step``).
    Returns (model in eval mode, tokenizer, config, metrics with eval_ce on ``cfg.eval_rows`` eval rows)."""
    torch.manual_seed(cfg.seed)
    tokenizer = train_tokenizer(train_texts, cfg.vocab_size)
    config = embedded_config(cfg, tokenizer)
    bos = config["bos_token_id"]
    train_rows = tokenize_texts(tokenizer, train_texts, cfg.n_ctx, bos)
    eval_rows = tokenize_texts(tokenizer, eval_texts, cfg.n_ctx, bos)[: cfg.eval_rows]
    model = build_model(tl_config(cfg))
    metrics = train_lm(model, train_rows, cfg, on_step)
    model.eval()
    metrics["eval_ce"] = eval_ce(model, eval_rows)
    metrics["unigram_ce"] = unigram_ce(train_rows, eval_rows, cfg.vocab_size)
    metrics["eval_tokens"] = int(len(eval_rows) * (cfg.n_ctx - 1))
    return model, tokenizer, config, metrics


@torch.no_grad()
def eval_ce(model: TransformerBridge, rows: np.ndarray, batch_rows: int = 32) -> float:
    """Mean next-token cross-entropy (nats) over every predicted position of ``rows``."""
    total, count = 0.0, 0
    for i in range(0, len(rows), batch_rows):
        batch = torch.from_numpy(rows[i : i + batch_rows].astype(np.int64))
        loss = model(batch, return_type="loss", loss_per_token=True)  # (B, n_ctx - 1)
        total += loss.double().sum().item()
        count += loss.numel()
    return total / count


def unigram_ce(train_rows: np.ndarray, eval_rows: np.ndarray, vocab_size: int) -> float:
    """CE of eval targets under the train split's add-one-smoothed unigram distribution."""
    counts = np.bincount(train_rows[:, 1:].ravel(), minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[eval_rows[:, 1:].ravel()].mean())


# ---------------------------------------------------------------- save / load


def save_lm(out: Path, model: TransformerBridge, tokenizer: Tokenizer, config: dict) -> None:
    tokenizer.save(str(out / "tokenizer.json"))
    save_weights(out / "model.safetensors", model.state_dict())
    write_json(out / "config.json", config)


def embedded_config(cfg: LMConfig, tokenizer: Tokenizer) -> dict:
    return {
        "source": "embedded",
        "name": "saelab-embedded",
        "bos_token_id": tokenizer.token_to_id(BOS),
        "tl_config": _config_to_json(tl_config(cfg)),
    }


def load_lm(path: str | Path, device: str | torch.device = "cpu") -> LoadedLM:
    """Rebuild the bridge from ``config.json`` and load weights from safetensors."""
    path = Path(path)
    config = read_json(path / "config.json")
    tok_path = path / "tokenizer.json"
    if not tok_path.exists():
        raise MissingInput(f"{tok_path}: tokenizer missing (rerun `dvc repro lm`)")
    tokenizer = Tokenizer.from_file(str(tok_path))
    d_vocab = config["tl_config"]["d_vocab"]
    if tokenizer.get_vocab_size() > d_vocab:
        raise InputError(
            f"{tok_path}: tokenizer has {tokenizer.get_vocab_size()} tokens but the LM's d_vocab is {d_vocab}; "
            "the tokenizer and model come from different runs (rerun `dvc repro lm`)"
        )
    model = build_model(TransformerBridgeConfig.from_dict(config["tl_config"]))
    weights = load_weights(path / "model.safetensors")
    model.load_state_dict(weights, strict=True)
    model.to(device).eval()
    return LoadedLM(model, tokenizer, int(config["bos_token_id"]), config)


def ln_final_weight(lm: LoadedLM) -> torch.Tensor | None:
    """The final LayerNorm's learned scale (d_model,), or None for a model without one (logit lens, docs/metrics.md)."""
    if lm.config["tl_config"].get("normalization_type") in (None, "LNPre", "RMSPre"):
        return None
    return lm.model.state_dict()["ln_final.weight"]


def excluded_token(lm: LoadedLM, bos_policy: str) -> int | None:
    """The token id left out of the SAE's domain: BOS under ``activations.bos: exclude``, else none."""
    return lm.bos_token_id if bos_policy == "exclude" else None


def load_pretrained(name: str) -> tuple[TransformerBridge, Tokenizer, dict]:
    """Load a TransformerLens legacy-format model (e.g. ``gelu-1l``) from the Hub.

    Checks that the Hub answers first, so a machine without network fails in
    seconds with a fix instead of deep inside a download.
    """
    repo = TL_ALIASES.get(name, name)
    require_hub(
        f"models/{repo}",
        what=f"lm.source=pretrained with lm.name={name} ({repo})",
        fix="set lm.source: embedded in params.yaml to train the embedded LM offline, "
        "or run on a machine with network (or a populated HF_HOME cache)",
    )
    from transformer_lens.model_bridge.sources import tl_legacy

    if not repo.startswith(tl_legacy.TL_LEGACY_PREFIXES):
        raise InputError(
            f"lm.name={name}: only TransformerLens-native checkpoints {tl_legacy.TL_LEGACY_PREFIXES} "
            f"or aliases {sorted(TL_ALIASES)} can be saved locally"
        )
    model = tl_legacy.boot(repo)
    hf_tok = model.tokenizer
    bos = hf_tok.bos_token_id if hf_tok.bos_token_id is not None else hf_tok.eos_token_id
    config = {"source": "pretrained", "name": repo, "bos_token_id": int(bos), "tl_config": _config_to_json(model.cfg)}
    return model, hf_tok.backend_tokenizer, config
