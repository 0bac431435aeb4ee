"""The project's own error types: faults a user can cause and fix.

A stage catches :class:`SaelabError` only and prints its one-line message (exit 2);
anything else is a bug and keeps its traceback. Each subclass also derives from the
matching built-in, so ``except ValueError`` in a caller still works.
"""

from __future__ import annotations


class SaelabError(Exception):
    """Base class: the message names the problem and the fix."""


class InputError(SaelabError, ValueError):
    """A param, file or artefact is invalid or inconsistent with another."""


class MissingInput(SaelabError, FileNotFoundError):
    """An input file or directory that a stage needs does not exist."""


class NonFinite(SaelabError, FloatingPointError):
    """NaN or inf in activations or in the SAE loss."""


class ResourceError(SaelabError, OSError):
    """Not enough disk (or another machine resource) for the requested work."""
