"""steerkit: steer language models by editing MLP neurons read from the weights.

The front door (:mod:`steerkit.api`)::

    import steerkit
    with steerkit.steer(model, steerkit.load_profile("dog"), tokenizer=tok):
        model.generate(...)

Layers, each importing only those listed before it:

* core -- model sources, weights and GGUF reading, decoding and the atlas, profiles and plans,
  metrics (no torch hooks, no llama.cpp);
* :mod:`steerkit.runtimes` -- one backend per inference runtime (transformers, llama.cpp);
* application -- sessions, discovery, evaluation, the CLI and this front door.

Names are imported on first use, so ``import steerkit`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

from steerkit.errors import SteerkitError

from steerkit.version import __version__

_LAZY = {
    "steer": "steerkit.api", "bake": "steerkit.api", "discover": "steerkit.api", "patch_gguf": "steerkit.api",
    "load_profile": "steerkit.api", "load_backend": "steerkit.api",
    "Profile": "steerkit.profile", "Edit": "steerkit.profile", "ModelBinding": "steerkit.profile",
    "save_profile": "steerkit.profile", "Sampling": "steerkit.sampling",
}
__all__ = ["SteerkitError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'steerkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
