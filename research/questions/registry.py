"""The questions' registry: each question module (research/questions/answers/) registers, under its key, its answer
function and its params model (the section ``answer.<key>`` of research/questions/params.yaml).

It imports no question, so the training stages read the params without loading the answers; a question's section is
checked by its own model once the answers package is imported (``loaded()``), as the answer stage does before it
loads anything heavy, and by the tests for the committed params.yaml.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import ClassVar

from pydantic import ValidationError

from saelab.section import Section, format_errors

QUESTIONS: dict[str, Callable] = {}  # answer key -> its function, in the order they run and are written
PARAMS: dict[str, type[QuestionParams]] = {}  # answer key -> its params model
_LOADED = [False]


class QuestionParams(Section):
    """A question's own params. ``RUN_FIELDS`` names its fields that hold run names (a name, a list of names, or a
    mapping to names; empty or None for none), each of which must be a run of params.yaml; ``check`` refuses a run
    that lacks what the question needs (for example a probe)."""

    RUN_FIELDS: ClassVar[tuple[str, ...]] = ()

    def runs(self) -> dict[str, list[str]]:
        """Field name -> the run names it holds."""
        out = {}
        for name in self.RUN_FIELDS:
            v = getattr(self, name)
            out[name] = (
                [] if v is None else [v] if isinstance(v, str) else list(v.values() if isinstance(v, Mapping) else v)
            )
        return out

    def check(self, every: Mapping) -> None:
        """Raise ValueError when a named run cannot serve this question (``every``: run name -> QRun)."""


def question(key: str, params: type[QuestionParams] = QuestionParams):
    """Register ``answer(context, params)`` under ``key`` (its entry in answers.json and its params section)."""

    def add(fn):
        if key in QUESTIONS:
            raise ValueError(f"question {key!r} is registered twice")
        QUESTIONS[key], PARAMS[key] = fn, params
        return fn

    return add


def mark_loaded() -> None:
    """Called by the answers package once every question is registered: their sections are checked from now on."""
    _LOADED[0] = True


def loaded() -> bool:
    return _LOADED[0]


def validate(raw: Mapping, every: Mapping) -> dict[str, QuestionParams]:
    """Every registered question's params from ``raw`` (the ``answer`` section's question keys; an absent key takes the
    model's defaults). Raises ValueError naming an unknown key, a bad value or a run that is missing or unfit."""
    unknown = [k for k in raw if k not in PARAMS]
    if unknown:
        raise ValueError(f"answer.{unknown[0]}: not a registered question (questions: {', '.join(PARAMS)})")
    out = {}
    for key, model in PARAMS.items():
        try:
            p = model.model_validate(raw.get(key) or {})
        except ValidationError as err:
            lines = format_errors(err).removeprefix("invalid params:\n  ").split("\n  ")
            raise ValueError("\n  ".join(f"answer.{key}.{line}" for line in lines)) from None
        for field, names in p.runs().items():
            missing = [n for n in names if n not in every]
            if missing:
                raise ValueError(f"answer.{key}.{field}: {missing} are not runs (runs: {sorted(every)})")
        try:
            p.check(every)
        except ValueError as err:
            raise ValueError(f"answer.{key}: {err}") from None
        out[key] = p
    return out
