"""A steered session: one backend, a list of active profiles, a strength, on/off.

Shared by ``steerkit generate``, ``steerkit chat`` and ``steerkit steer`` for
every runtime.  Every answer re-runs the whole conversation from an empty KV
cache, so no cache computed under old edits is ever reused.
"""

from __future__ import annotations

from collections.abc import Callable

from steerkit.errors import SteerkitError
from steerkit.plan import Plan, compile_plan
from steerkit.profile import MAX_STRENGTH, Profile, load_profile
from steerkit.runtimes.base import Backend
from steerkit.sampling import CHAT, Sampling, check_max_tokens
from steerkit.shipped import resolve_profile_path

__all__ = ["SteeringSession", "open_session", "check_strength"]


def check_strength(strength: float | None) -> float | None:
    """Refuse a strength override that is not a finite number within ``±1000``."""
    if strength is None:
        return None
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not abs(strength) <= MAX_STRENGTH:
        raise SteerkitError(f"strength must be a finite number within ±{MAX_STRENGTH:g}, got {strength!r}")
    return float(strength)


class SteeringSession:
    """Active profiles, strength and on/off over one :class:`~steerkit.runtimes.base.Backend`."""

    def __init__(self, backend: Backend, strength: float | None = None) -> None:
        self.backend = backend
        self.profiles: list[Profile] = []
        self.strength = check_strength(strength)
        self.enabled = True

    def add_profile(self, name: str | Profile) -> Profile:
        """Add a profile (a :class:`Profile`, a path or a shipped name) after checking it fits the model and backend."""
        profile = name if isinstance(name, Profile) else load_profile(resolve_profile_path(name))
        self.backend.check(compile_plan(self.profiles + [profile], self.backend.binding, self.strength))
        self.profiles.append(profile)
        return profile

    def set_strength(self, strength: float | None) -> None:
        """Override every profile's strength (``None``: each profile's own)."""
        self.strength = check_strength(strength)

    def plan(self) -> Plan | None:
        """The plan of the active profiles at the current strength (``None`` when off or empty)."""
        if not (self.enabled and self.profiles):
            return None
        return compile_plan(self.profiles, self.backend.binding, self.strength)

    def generate(self, prompt: str | list[dict], max_new_tokens: int = 200, sampling: Sampling = CHAT,
                 on_text: Callable[[str], None] | None = None) -> str:
        """One answer (``prompt`` is a user message or a whole chat history)."""
        check_max_tokens(max_new_tokens)
        return self.backend.generate([prompt], [self.plan()], max_new_tokens, sampling, on_text)[0][0]


def open_session(model: str | None = None, profiles: list[str] = (), strength: float | None = None,
                 runtime: str | None = None, device: str = "cpu", dtype: str = "float32") -> SteeringSession:
    """A session on ``model`` in ``runtime`` (automatic: the fastest that can run it) with ``profiles`` active.

    Every profile is read and checked against the model's weights before the model is loaded.
    """
    from steerkit.plan import check_binding
    from steerkit.runtimes.base import load_backend
    from steerkit.weights import open_weights

    strength = check_strength(strength)
    loaded = [load_profile(resolve_profile_path(name)) for name in profiles]
    if loaded:
        binding = open_weights(model).binding()
        for profile in loaded:
            check_binding(profile, binding)
    session = SteeringSession(load_backend(model, runtime, device, dtype), strength)
    for profile in loaded:
        session.add_profile(profile)
    return session
