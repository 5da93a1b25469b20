"""The exception types a user ever sees.

Every problem caused by input (a model name, a file, a profile, a neuron
address) is raised as :class:`SteerkitError` -- or one of its kinds below --
with a one-line message that names the thing that was wrong and what was
expected.  The library says what is wrong; the CLI adds hints about its own
flags (e.g. which ``--runtime`` can run an edit), prints the line and exits
non-zero, never with a traceback for these.
"""

from __future__ import annotations

__all__ = ["SteerkitError", "ProfileMismatch", "UnsupportedEdit"]


class SteerkitError(Exception):
    """A user-facing error whose message is a single, self-explaining line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


class ProfileMismatch(SteerkitError):
    """A profile was made for another model (shapes, architecture or vocabulary differ)."""


class UnsupportedEdit(SteerkitError):
    """A runtime (or weights) cannot carry an edit exactly; another runtime may."""

    def __init__(self, message: str, runtime: str) -> None:
        super().__init__(message)
        self.runtime = runtime  # the runtime that refused it
