"""Where steerkit keeps derived files, and how it writes them safely.

Everything derived (assembled models, atlases, fingerprints) lives under
``$STEERKIT_CACHE`` or ``~/.cache/steerkit``.  Every write goes through
:func:`atomic_write`: a temporary file in the target's folder that is
renamed over the target only once complete, so an interrupted run never
leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from steerkit.errors import SteerkitError

__all__ = ["cache_dir", "atomic_write"]


def cache_dir(*parts: str) -> Path:
    """Return (and create) a folder inside steerkit's cache."""
    root = Path(os.environ.get("STEERKIT_CACHE") or Path.home() / ".cache" / "steerkit")
    path = root.joinpath(*parts)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SteerkitError(f"cannot create cache folder {path}: {exc.strerror}") from exc
    return path


@contextlib.contextmanager
def atomic_write(target: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it over ``target`` on success.

    On any exception the temporary file is removed and ``target`` is left as
    it was (absent or untouched).

    >>> with atomic_write("out.npz") as tmp:      # doctest: +SKIP
    ...     np.savez(tmp, x=1)
    """
    target = Path(target)
    folder = target.parent if str(target.parent) else Path(".")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix + ".tmp", dir=folder)
    except OSError as exc:
        raise SteerkitError(f"cannot write {target}: {exc.strerror}") from exc
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates 0600; give the result the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise SteerkitError(f"cannot write {target}: {exc.strerror or exc}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
