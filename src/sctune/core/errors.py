"""The one error hierarchy. The CLI prints any :class:`SctuneError` without a traceback, exit 2.

Message style: lowercase start, no trailing period, names in single quotes, one problem per line;
say where, what was given, what is allowed and what to do next.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SctuneError(Exception):
    """A user-facing mistake: printed as ``error: <message>`` with no traceback."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def render(self) -> str:
        text = f"error: {self.message}"
        if self.hint:
            text += f"\nhint: {self.hint}"
        return text


class RecipeError(SctuneError):
    """The recipe (YAML, overrides or plugin options) is invalid."""


class PluginError(SctuneError):
    """A plugin failed to import, registered a duplicate name, or implements an unknown hook."""


class CompatibilityError(SctuneError):
    """An adapter requires an insertion point the backbone does not provide."""


class DataError(SctuneError):
    """The data (file, column, genes, labels, split) cannot be used as asked."""


class CheckpointError(SctuneError):
    """A checkpoint or run directory does not fit the model it is loaded into."""


class SctuneWarning(UserWarning):
    """A legitimate-but-risky situation. The CLI prints it as ``warning: <message>``, like the
    warnings a run collects; the Python API leaves it to the :mod:`warnings` machinery."""


def did_you_mean(given: str, choices: Iterable[str]) -> str:
    """Return ``"; did you mean 'x'?"`` for a close match among ``choices``, else ``""``."""
    match = difflib.get_close_matches(str(given), list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{match[0]}'?" if match else ""


def quoted(names: Iterable[str]) -> str:
    """Comma-separated names, sorted, for 'allowed values' lines."""
    return ", ".join(sorted(str(n) for n in names)) or "(none)"
