"""The profiles a server offers, by name."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from steerkit.errors import SteerkitError
from steerkit.plan import compile_plan
from steerkit.profile import Profile, load_profile
from steerkit.runtimes.base import Backend
from steerkit.serving.requests import NAME, ApiError
from steerkit.shipped import shipped_dir, shipped_names, shipped_profile
from steerkit.text import printable

__all__ = ["ProfileStore", "MAX_PROFILES", "folder_profiles"]

MAX_PROFILES = 256  # profiles a server holds: each POST may add one of up to a 1 MiB body, so memory stays bounded


def folder_profiles(folder) -> list[Path]:
    """The ``*.yaml`` files of ``--profiles`` ``folder``; a path that is not a folder, or holds none, is refused."""
    paths = sorted(Path(folder).glob("*.yaml")) if Path(folder).is_dir() else None
    if not paths:
        reason = "not a folder" if paths is None else "holds no *.yaml profile"
        raise SteerkitError(f"--profiles {printable(str(folder))[:200]}: {reason}")
    return paths


class ProfileStore:
    """The profiles a server offers, by name: shipped ones that fit the model, a folder's, and added ones."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._profiles: dict[str, Profile] = {}
        self._figures: dict[str, dict] = {}
        self._lock = threading.Lock()
        self.limit = MAX_PROFILES

    def _fits(self, profile: Profile) -> bool:
        try:
            self.backend.check(compile_plan([profile], self.backend.binding))
            return True
        except SteerkitError:
            return False

    def load_shipped(self) -> None:
        """Every shipped profile that fits the model and the backend, with its measured figures."""
        summary_path = shipped_dir() / "eval" / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        for name in shipped_names():
            profile = load_profile(shipped_profile(name))
            if self._fits(profile):
                self._profiles[name] = profile
                if name in summary:
                    self._figures[name] = {k: v for k, v in summary[name].items() if k.startswith(("mention", "nll"))}

    def add(self, profile: Profile, replace: bool = False) -> Profile:
        if not NAME.match(profile.name):
            raise SteerkitError(f"profile name {profile.name[:70]!r}: expected 1-64 letters, digits, '-', '_' or '.'")
        self.backend.check(compile_plan([profile], self.backend.binding))
        with self._lock:
            if profile.name in self._profiles and not replace:
                raise SteerkitError(f"profile {profile.name!r} exists already")
            if profile.name not in self._profiles and len(self._profiles) >= self.limit:
                raise SteerkitError(f"the server holds {self.limit} profiles already (its limit): delete one first")
            self._profiles[profile.name] = profile
            self._figures.pop(profile.name, None)
        return profile

    def remove(self, name: str) -> None:
        with self._lock:
            if self._profiles.pop(name, None) is None:
                raise KeyError(name)

    def get(self, name: str) -> Profile:
        with self._lock:
            profile = self._profiles.get(name)
        if profile is None:
            raise ApiError(404, f"unknown profile {name[:70]!r} (see /v1/profiles)", param="model",
                           code="profile_not_found")
        return profile

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._profiles)

    def describe(self, name: str) -> dict:
        profile = self.get(name)
        return {"name": name, "description": profile.description, "positions": profile.positions,
                "strength": profile.strength, "edits": [f"{e.layer}:{e.neuron} {e.op} {e.value:g}" for e in profile.edits],
                "neurons": [f"{e.layer}:{e.neuron}" for e in profile.edits], "measured": self._figures.get(name)}
