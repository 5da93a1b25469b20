"""The one exception type a user ever sees.

Every problem caused by input (a model name, a file, a profile, a neuron
address) is raised as :class:`SteerkitError` with a one-line message that
names the thing that was wrong and what was expected.  The CLI prints that
line and exits non-zero; it never shows a traceback for these.
"""

from __future__ import annotations

__all__ = ["SteerkitError"]


class SteerkitError(Exception):
    """A user-facing error whose message is a single, self-explaining line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))
