"""A steered transformers session: one model, a list of active profiles, a strength, on/off.

Shared by ``steerkit generate``, ``steerkit chat`` and ``steerkit steer``.
Changing the steering re-attaches hooks; every turn re-runs the whole
conversation, so no KV cache computed under old edits is ever reused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from steerkit.errors import SteerkitError
from steerkit.plan import Plan, compile_plan
from steerkit.profile import Profile, load_profile

__all__ = ["SteeringSession", "shipped_profile", "profile_path"]

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


@dataclass
class SteeringSession:
    """Model + tokenizer + active profiles, with hooks kept in sync."""

    model_name: str | None = None
    dtype: str = "float32"
    device: str = "cpu"
    profiles: list[Profile] = field(default_factory=list)
    strength: float | None = None
    enabled: bool = True

    def __post_init__(self) -> None:
        from runtimes.hf import load_model, model_binding

        self.model, self.tokenizer = load_model(self.model_name, self.dtype, self.device)
        self.binding = model_binding(self.model, self.tokenizer)
        self._handle = None

    def add_profile(self, name: str) -> Profile:
        """Load a profile (a path, or the name of a shipped profile) and check it fits the model."""
        profile = load_profile(profile_path(name))
        compile_plan([profile], self.binding)  # refuse before it becomes active
        self.profiles.append(profile)
        return profile

    def plan(self) -> Plan:
        """The plan of the active profiles at the current strength."""
        return compile_plan(self.profiles, self.binding, self.strength)

    def _sync(self) -> None:
        from runtimes.hf import attach

        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        if self.enabled and self.profiles:
            self._handle = attach(self.model, self.plan())

    def generate(self, prompt: str | list[dict], max_new_tokens: int = 60, temperature: float = 0.0,
                 seed: int | None = None, on_text: Callable[[str], None] | None = None) -> str:
        """One answer (``prompt`` is a user message or a whole chat history)."""
        from runtimes.hf.generate import generate_text

        if max_new_tokens < 1:
            raise SteerkitError(f"--max-tokens must be at least 1, got {max_new_tokens}")
        if temperature < 0:
            raise SteerkitError(f"--temperature must be >= 0, got {temperature}")
        self._sync()
        try:
            return generate_text(self.model, self.tokenizer, [prompt], max_new_tokens, temperature, seed, on_text)[0]
        finally:
            if self._handle is not None:
                self._handle.remove()
                self._handle = None
