"""A steered session: one model, a list of active profiles, a strength, on/off.

Shared by ``steerkit generate``, ``steerkit chat`` and ``steerkit steer``, for
both runtimes.  Every answer re-runs the whole conversation from an empty KV
cache, so no cache computed under old edits is ever reused.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from steerkit.errors import SteerkitError
from steerkit.plan import Plan, compile_plan
from steerkit.profile import Profile, load_profile

__all__ = ["SteeringSession", "LlamaCppSession", "shipped_profile", "profile_path"]

PROFILES_DIR = Path(__file__).resolve().parent.parent / "profiles"


def shipped_profile(name: str) -> Path | None:
    """Path of a profile shipped in ``profiles/`` (``dog`` -> ``profiles/dog.yaml``), if there is one."""
    path = PROFILES_DIR / f"{name}.yaml"
    return path if path.is_file() else None


def profile_path(name: str) -> Path:
    """A profile argument as a path: an existing file, or the shipped profile of that name."""
    path = Path(name)
    if path.is_file() or path.suffix in (".yaml", ".yml"):
        return path
    return shipped_profile(name) or path


class _Steering:
    """Active profiles, strength and on/off, checked against the model's binding."""

    binding = None

    def __init__(self, strength: float | None = None) -> None:
        self.profiles: list[Profile] = []
        self.strength = strength
        self.enabled = True

    def add_profile(self, name: str) -> Profile:
        """Load a profile (a path, or the name of a shipped profile) and check it fits the model."""
        profile = load_profile(profile_path(name))
        compile_plan([profile], self.binding)  # refuse before it becomes active
        self.profiles.append(profile)
        return profile

    def plan(self) -> Plan:
        """The plan of the active profiles at the current strength."""
        return compile_plan(self.profiles, self.binding, self.strength)

    @property
    def active(self) -> bool:
        return self.enabled and bool(self.profiles)

    @staticmethod
    def _check(max_new_tokens: int, temperature: float) -> None:
        if max_new_tokens < 1:
            raise SteerkitError(f"--max-tokens must be at least 1, got {max_new_tokens}")
        if temperature < 0:
            raise SteerkitError(f"--temperature must be >= 0, got {temperature}")


class SteeringSession(_Steering):
    """The transformers runtime: hooks attached for each answer and removed after it."""

    def __init__(self, model_name: str | None = None, dtype: str = "float32", device: str = "cpu",
                 strength: float | None = None) -> None:
        from runtimes.hf import load_model, model_binding

        super().__init__(strength)
        self.model, self.tokenizer = load_model(model_name, dtype, device)
        self.binding = model_binding(self.model, self.tokenizer)

    def generate(self, prompt: str | list[dict], max_new_tokens: int = 60, temperature: float = 0.0,
                 seed: int | None = None, on_text: Callable[[str], None] | None = None) -> str:
        """One answer (``prompt`` is a user message or a whole chat history)."""
        from runtimes.hf import steered
        from runtimes.hf.generate import generate_text

        self._check(max_new_tokens, temperature)
        with steered(self.model, self.plan()) if self.active else contextlib.nullcontext():
            return generate_text(self.model, self.tokenizer, [prompt], max_new_tokens, temperature, seed, on_text)[0]


class LlamaCppSession(_Steering):
    """The llama.cpp runtime: each set of profiles is a patched GGUF copy (cached), loaded on demand.

    Edits on all positions are patched into the copy; additive edits on the
    prompt positions become a control vector set while the prompt is
    evaluated and cleared before the answer is decoded.
    """

    def __init__(self, model_name: str | None = None, strength: float | None = None) -> None:
        from runtimes.llamacpp import gguf_binding
        from steerkit.sources import resolve_model
        from steerkit.weights.gguf_reader import GGUFWeights

        super().__init__(strength)
        source = resolve_model(model_name)
        if source.kind != "gguf":
            raise SteerkitError(f"model {source.name}: the llama.cpp runtime needs a GGUF model")
        self.weights = GGUFWeights(source.path, source.name)
        self.binding = gguf_binding(self.weights)
        self._models: dict[str, object] = {}

    def _split_plan(self) -> tuple[Plan, dict[int, np.ndarray]]:
        """The plan's all-position part (patched into a GGUF copy) and its prompt-position part
        (control-vector directions per layer, applied while the prompt is evaluated)."""
        from runtimes.llamacpp.prompt_vector import split_plan

        return split_plan(self.weights, self.plan() if self.active else Plan((), ()))

    def _model(self, plan: Plan):
        from runtimes.llamacpp import LlamaCppRuntime
        from runtimes.llamacpp.model import LlamaCppModel

        path = LlamaCppRuntime().attach(self.weights.path, plan).path if not plan.is_empty else self.weights.path
        if str(path) not in self._models:
            self._models = {str(path): LlamaCppModel(path)}  # keep one loaded model at a time
        return self._models[str(path)]

    def generate(self, prompt: str | list[dict], max_new_tokens: int = 60, temperature: float = 0.0,
                 seed: int | None = None, on_text: Callable[[str], None] | None = None) -> str:
        """One answer; a fresh context per answer, so no KV cache outlives a steering change."""
        self._check(max_new_tokens, temperature)
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        all_positions, directions = self._split_plan()
        model = self._model(all_positions)
        if directions:
            stream = model.prompt_steered_chat(messages, directions, max_new_tokens, temperature, seed)
        else:
            stream = model.chat(messages, max_new_tokens, temperature, seed, stream=True)
        pieces = []
        for piece in stream:
            pieces.append(piece)
            if on_text is not None:
                on_text(piece)
        return "".join(pieces)
