"""The Hugging Face transformers runtime: hooks, baked weights, loading and generation."""

from __future__ import annotations

from typing import ClassVar

import torch

from runtimes.base import Runtime
from runtimes.hf.bake import BakedHandle, bake, prepare_for_save
from runtimes.hf.hooks import HookHandle, attach, steered
from runtimes.hf.loader import load_model
from runtimes.hf.modules import model_binding
from steerkit.plan import Plan

__all__ = ["HFRuntime", "attach", "steered", "bake", "prepare_for_save", "load_model", "model_binding",
           "HookHandle", "BakedHandle"]


class HFRuntime(Runtime):
    """Applies plans to transformers models with hooks (default) or baked weights."""

    name: ClassVar[str] = "hf"

    def __init__(self, mode: str = "hooks") -> None:
        self.mode = mode

    def attach(self, target: torch.nn.Module, plan: Plan) -> HookHandle | BakedHandle:
        """Hooks (``mode="hooks"``) or weight edits (``mode="bake"``); both undone by ``remove()``."""
        return bake(target, plan) if self.mode == "bake" else attach(target, plan)
