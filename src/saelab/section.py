"""The base of every params section: frozen, typed, unknown keys refused; and the one error format.

Every params model of the project (the root pipeline's sections in :mod:`saelab.config`, each
architecture's section in :mod:`saelab.saes`, the research pipelines' params) derives from
:class:`Section`, and every validation error reaches the user through :func:`format_errors`:
one line per bad key naming the key, the value and what is allowed.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationError

from saelab.errors import InputError


class ConfigError(InputError):
    """A params value is invalid; the message says which key and what is allowed."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        msg = msg.replace("Input should be", "must be").replace("Extra inputs are not permitted", "unknown key (typo?)")
        if key:  # the value when it is one; a section's check (a dict input) names its own keys in the message
            show = e["type"] != "extra_forbidden" and not isinstance(e["input"], dict)
            lines.append(f"{key}: {e['input']!r} {msg}" if show else f"{key}: {msg}")
        else:
            lines.append(msg)
    return "invalid params:\n  " + "\n  ".join(lines)


def merge(base: dict, over: dict) -> dict:
    """``base`` with ``over`` laid on top, nested mappings merged key by key (a run's params over defaults)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
