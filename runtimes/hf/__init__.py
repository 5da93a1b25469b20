"""The Hugging Face transformers runtime: hooks, baked weights, loading and generation.

:class:`~steerkit.runtimes.hf.backend.HFBackend` is what steerkit's commands use; the functions here
are the pieces, for a model you loaded yourself (``steerkit.steer`` and ``steerkit.bake`` wrap them).
"""

from __future__ import annotations

from steerkit.runtimes.hf.bake import BakedHandle, bake, prepare_for_save
from steerkit.runtimes.hf.hooks import HookHandle, attach, steered
from steerkit.runtimes.hf.loader import load_model
from steerkit.runtimes.hf.modules import model_binding

__all__ = ["attach", "steered", "bake", "prepare_for_save", "load_model", "model_binding", "HookHandle", "BakedHandle"]
