"""The runtime interface and registry."""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Protocol

from steerkit.errors import SteerkitError
from steerkit.plan import Plan

__all__ = ["Handle", "Runtime", "Evaluator", "RUNTIMES", "register", "get_runtime"]


class Handle(Protocol):
    """What applying a plan returns: the way back."""

    def remove(self) -> None:
        """Undo the plan; the target behaves exactly as before ``attach``."""


class Runtime(ABC):
    """One inference runtime."""

    name: ClassVar[str]

    @abstractmethod
    def attach(self, target: Any, plan: Plan) -> Handle:
        """Apply ``plan`` to ``target``; refuse (before any change) what cannot be done exactly."""


class Evaluator(Protocol):
    """What discovery and evaluation need from a runtime: steered answers and how fluent they are."""

    binding: Any  # steerkit.profile.ModelBinding of the loaded model

    def generate(self, prompts: list[str], plans: list[Plan | None], max_new_tokens: int) -> list[list[str]]:
        """Greedy answers ``[plan][prompt]`` to chat ``prompts`` under each plan (``None``: unsteered)."""

    def nll(self, prompts: list[str], answers: list[str]) -> list[float]:
        """Mean NLL (nats/token) of each answer after its first token, given its prompt, under the *unsteered* model."""


# name -> "module:Class"; imported on first use so the core never pulls in torch hooks or llama.cpp.
RUNTIMES: dict[str, str] = {"hf": "runtimes.hf:HFRuntime", "llama.cpp": "runtimes.llamacpp:LlamaCppRuntime"}


def register(name: str, target: str) -> None:
    """Register a runtime class under ``name`` (``target`` is ``"module:Class"``)."""
    RUNTIMES[name] = target


def get_runtime(name: str) -> Runtime:
    """Instantiate the runtime registered as ``name``."""
    if name not in RUNTIMES:
        raise SteerkitError(f"unknown runtime {name!r} (available: {', '.join(sorted(RUNTIMES))})")
    module_name, _, class_name = RUNTIMES[name].partition(":")
    return getattr(importlib.import_module(module_name), class_name)()
