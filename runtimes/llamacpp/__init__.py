"""The llama.cpp runtime: patched GGUFs, control vectors, and running them with llama-cpp-python.

Imports neither torch nor transformers: only the Gemma stand-in fit (``patch --approximate``,
``export-cvec`` on Gemma) loads them, when it runs.
"""

from __future__ import annotations

from steerkit.runtimes.llamacpp.patch import PatchReport, embedded_profile, gguf_binding, patch_gguf, write_patched

__all__ = ["PatchReport", "patch_gguf", "write_patched", "embedded_profile", "gguf_binding"]
