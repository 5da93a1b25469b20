"""Reading the user's files: regular files only, never more than a stated bound.

A FIFO would block a read forever and ``/dev/zero`` never ends; a file's
stated size cannot be trusted either, so the bound is on what is read.
"""

from __future__ import annotations

import stat
from pathlib import Path

from steerkit.errors import SteerkitError

__all__ = ["read_bounded"]


def read_bounded(path: str | Path, limit: int, what: str) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them; otherwise a one-line
    error naming the file and ``what`` it was read as (``profile``, ``prompts``, ``JSON``)."""
    path = Path(path)
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            raise SteerkitError(f"{path}: cannot read {what} (not a regular file)")
        with path.open("rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise SteerkitError(f"{path}: cannot read {what} ({exc.strerror or exc})") from exc
    except ValueError as exc:  # a NUL byte in the name
        raise SteerkitError(f"{path}: cannot read {what} ({exc})") from exc
    if len(data) > limit:
        raise SteerkitError(f"{path}: {what} file is over the {limit}-byte limit")
    return data
