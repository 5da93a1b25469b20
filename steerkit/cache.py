"""Where steerkit keeps derived files, and how it writes them safely.

Everything derived (assembled models, atlases, fingerprints) lives under
``$STEERKIT_CACHE`` or ``~/.cache/steerkit``.  Every write goes through
:func:`atomic_write`: a temporary file in the target's folder that is
renamed over the target only once complete, so an interrupted run never
leaves a half-written file behind.

A process killed outright (SIGKILL, power loss) cannot remove its temporary
files, so every temporary name carries its owner (``~host-pid~``); the next
write to the same target, and every look into a cache folder, removes those
whose owner on this host is no longer running.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from steerkit.errors import SteerkitError

__all__ = ["cache_dir", "atomic_write", "temporary_dir", "publish_dir", "check_output_target", "remove_stale"]

_OWNER = re.compile(r"~([^~/]+)-(\d+)~")


def _owner_tag() -> str:
    """``~host-pid~``: who made a temporary file (host names are cut to keep names short)."""
    host = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())[:40] or "host"
    return f"~{host}-{os.getpid()}~"


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def remove_stale(folder: Path, name: str | None = None) -> None:
    """Remove temporary files and folders in ``folder`` left by dead processes of this host
    (only those for ``name`` when given)."""
    host = _owner_tag()[1:].rpartition("-")[0]
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        if not entry.name.startswith(".") or (name is not None and not entry.name.startswith(f".{name[:80]}.")):
            continue
        owner = _OWNER.search(entry.name)
        if owner is None or owner.group(1) != host or _running(int(owner.group(2))):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)
        except OSError:
            pass  # another process cleaned it first


_SWEPT: set[Path] = set()  # cache folders already cleared of dead processes' leftovers by this process


def cache_dir(*parts: str) -> Path:
    """Return (and create) a folder inside steerkit's cache (its dead processes' leftovers removed,
    once per process: the server asks for its patched-copy folder on every request)."""
    root = Path(os.environ.get("STEERKIT_CACHE") or Path.home() / ".cache" / "steerkit")
    path = root.joinpath(*parts)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SteerkitError(f"cannot create cache folder {path}: {exc.strerror}") from exc
    if path not in _SWEPT:
        remove_stale(path)
        _SWEPT.add(path)
    return path


def check_output_target(target: str | Path) -> Path:
    """Refuse an output path that exists and is not a regular file (a device, a FIFO, a folder):
    replacing it with a file would destroy it (``-o /dev/null`` as root), writing into it would hang."""
    target = Path(target)
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        return target
    except OSError as exc:
        raise SteerkitError(f"{target}: cannot write ({exc.strerror})") from exc
    except ValueError as exc:  # a NUL byte
        raise SteerkitError(f"{target}: cannot write ({exc})") from exc
    if not stat.S_ISREG(mode):
        raise SteerkitError(f"{target}: exists and is not a regular file; refusing to replace it")
    return target


@contextlib.contextmanager
def temporary_dir(target: Path, prefix: str) -> Iterator[Path]:
    """A fresh folder next to ``target`` named with its owner; removed on any exception."""
    remove_stale(target.parent)
    try:
        work = Path(tempfile.mkdtemp(prefix=f".{prefix}{_owner_tag()}", dir=target.parent))
    except OSError as exc:
        raise SteerkitError(f"cannot write {target}: {exc.strerror}") from exc
    try:
        yield work
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def publish_dir(work: Path, target: Path, complete: str) -> None:
    """Rename the finished folder ``work`` to ``target``; if another process published it first
    (``target`` exists with its ``complete`` file), keep theirs and drop ours."""
    try:
        work.rename(target)
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not (target / complete).is_file():
            raise
        shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def atomic_write(target: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it over ``target`` on success.

    On any exception the temporary file is removed and ``target`` is left as
    it was (absent or untouched).  A ``target`` that exists and is not a
    regular file is refused (:func:`check_output_target`).

    >>> with atomic_write("out.npz") as tmp:      # doctest: +SKIP
    ...     np.savez(tmp, x=1)
    """
    target = check_output_target(target)
    folder = target.parent if str(target.parent) else Path(".")
    remove_stale(folder, target.name)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name[:80]}.{_owner_tag()}", suffix=suffix + ".tmp",
                                        dir=folder)
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
