"""Shared fixtures: an isolated cache, tiny models of every architecture, the real default model."""

from __future__ import annotations

import os

import pytest
import torch

from tiny_models import ARCHS, save_gguf, save_hf, tiny_model

# The real models are the embedded ones; their atlases and conversions are cached once per machine.
REAL_CACHE = os.environ.get("STEERKIT_CACHE")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, request, monkeypatch):
    """Tiny-model tests use a throwaway cache; real-model tests share the user cache (expensive to rebuild)."""
    if "real" not in request.keywords:
        monkeypatch.setenv("STEERKIT_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(params=sorted(ARCHS))
def model_type(request) -> str:
    return request.param


@pytest.fixture
def tiny(model_type, tmp_path):
    """(model, hf folder, gguf path) of a tiny random model."""
    model = tiny_model(model_type)
    return model, save_hf(model, tmp_path / "hf"), save_gguf(model, tmp_path / "tiny.gguf")


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="no CUDA GPU on this machine")
        for item in items:
            if "cuda" in item.keywords:
                item.add_marker(skip)
