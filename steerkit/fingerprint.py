"""Content fingerprints of model files, cached so that only the first call pays.

The atlas cache is keyed by the sha256 of the model's files.  Hashing a
100 MB GGUF takes a fraction of a second, a multi-GB one several seconds, so
the digest is remembered per (path, size, mtime).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from steerkit.cache import atomic_write, cache_dir

__all__ = ["file_sha256", "files_sha256"]

_INDEX_NAME = "fingerprints.json"


def _load_index() -> dict[str, str]:
    path = cache_dir() / _INDEX_NAME
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def file_sha256(path: Path) -> str:
    """sha256 hex digest of a file's contents, cached by path, size and mtime."""
    path = Path(path).resolve()
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    index = _load_index()
    if key not in index:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while block := handle.read(1 << 22):
                digest.update(block)
        index[key] = digest.hexdigest()
        with atomic_write(cache_dir() / _INDEX_NAME) as tmp:
            tmp.write_text(json.dumps(index, indent=0))
    return index[key]


def files_sha256(paths: list[Path]) -> str:
    """One digest for several files (a sharded checkpoint), order-independent."""
    digest = hashlib.sha256()
    for path in sorted(paths, key=lambda p: p.name):
        digest.update(path.name.encode() + b"\0" + file_sha256(path).encode())
    return digest.hexdigest()
