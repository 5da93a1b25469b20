"""Profiles and prompt files shipped with steerkit, read as package data.

In a checkout they live in the repository's ``profiles/`` folder; installed,
the same files are the package ``steerkit.profiles``.  Both are reached
through :mod:`importlib.resources`, so a wheel works from any directory.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["shipped_dir", "shipped_profile", "shipped_names", "resolve_profile_path"]


def shipped_dir() -> Path:
    """The folder holding the shipped profiles (``*.yaml``, ``prompts/``, ``eval/``)."""
    return Path(str(resources.files("steerkit.profiles")))


def shipped_names() -> list[str]:
    """Names of every shipped profile (``dog``, ``no-music``, ...), sorted."""
    return sorted(path.stem for path in shipped_dir().glob("*.yaml"))


def shipped_profile(name: str) -> Path | None:
    """Path of the shipped profile called ``name`` (``dog`` -> ``.../dog.yaml``), if there is one.

    ``name`` is looked up among the shipped names, never joined into a path.
    """
    return shipped_dir() / f"{name}.yaml" if name in shipped_names() else None


def resolve_profile_path(name: str | Path) -> Path:
    """A profile argument as a path: an existing file, else the shipped profile of that name.

    Anything that is neither comes back as a path, so that reading it fails
    with the file named in the message.
    """
    path = Path(name)
    try:
        exists = path.is_file()
    except (OSError, ValueError):  # a name too long for a file, a NUL byte: not a file; reading it says why
        exists = False
    if exists or path.suffix in (".yaml", ".yml"):
        return path
    return shipped_profile(str(name)) or path
