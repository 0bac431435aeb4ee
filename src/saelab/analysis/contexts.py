"""Text around a token, for max-activating examples and worst-CE tokens."""

from __future__ import annotations

import numpy as np
from tokenizers import Tokenizer


def token_pieces(tokenizer: Tokenizer) -> list[str]:
    """The decoded text of every token id (byte-level pieces of split UTF-8 show as U+FFFD)."""
    return [tokenizer.decode([i], skip_special_tokens=False) for i in range(tokenizer.get_vocab_size())]


def context(rows: np.ndarray, index: int, pieces: list[str], left: int, right: int) -> tuple[str, str, str]:
    """(text before, the token, text after) for global token ``index`` = row * n_ctx + pos."""
    n_ctx = rows.shape[1]
    row, pos = divmod(int(index), n_ctx)
    ids = rows[row]
    text = lambda a, b: "".join(pieces[t] for t in ids[max(0, a) : b])  # noqa: E731
    return text(pos - left, pos), pieces[ids[pos]], text(pos + 1, pos + 1 + right)
