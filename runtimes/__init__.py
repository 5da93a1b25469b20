"""Runtimes: one :class:`~steerkit.runtimes.base.Backend` per inference runtime, behind one registry.

``steerkit.runtimes.hf`` (transformers) and ``steerkit.runtimes.llamacpp`` (llama.cpp) each hold a
backend and the pieces it is made of.  Everything else takes a backend from :func:`load_backend`.
"""

from steerkit.runtimes.base import BACKENDS, Backend, Handle, backend_class, choose_backend, load_backend, register

__all__ = ["Backend", "Handle", "BACKENDS", "backend_class", "choose_backend", "load_backend", "register"]
