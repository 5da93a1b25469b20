"""The llama.cpp runtime: patched GGUFs, control vectors, and running them with llama-cpp-python."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from runtimes.base import Runtime
from runtimes.llamacpp.patch import embedded_profile, gguf_binding, patch_gguf, write_patched
from steerkit.cache import cache_dir
from steerkit.plan import Plan
from steerkit.weights.gguf_reader import GGUFWeights

__all__ = ["LlamaCppRuntime", "PatchedModel", "patch_gguf", "embedded_profile", "gguf_binding"]


class PatchedModel:
    """A patched copy of a GGUF (in steerkit's cache), loaded on demand in llama.cpp."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._model = None

    @property
    def model(self):
        """The patched file loaded in llama.cpp (:class:`runtimes.llamacpp.model.LlamaCppModel`)."""
        if self._model is None:
            from runtimes.llamacpp.model import LlamaCppModel

            self._model = LlamaCppModel(self.path)
        return self._model

    def remove(self) -> None:
        """Drop the loaded model; the original file was never touched (the cached copy stays for reuse)."""
        self._model = None


class LlamaCppRuntime(Runtime):
    """Applies a plan to a GGUF file by writing a patched copy (cached by model and plan)."""

    name: ClassVar[str] = "llama.cpp"

    def attach(self, target: str | Path, plan: Plan) -> PatchedModel:
        """Patch ``target`` (a GGUF path) with ``plan``; return the patched copy."""
        import hashlib

        weights = GGUFWeights(Path(target))
        key = hashlib.sha256(repr([(g.positions, [(l.layer, l.neurons.tolist(), l.mult.tolist(), l.add.tolist())
                                                  for l in g.layers]) for g in plan.groups]).encode()).hexdigest()
        path = cache_dir("patched") / f"{weights.fingerprint()[:16]}-{key[:16]}.gguf"
        if not path.is_file():
            write_patched(weights, plan, path, list(plan.names), f"# compiled plan of: {', '.join(plan.names)}", progress=False)
        return PatchedModel(path)
