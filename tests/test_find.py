"""`find` without an atlas: estimate every view from a vocabulary sample, decode only the best candidates exactly."""

from __future__ import annotations

import numpy as np
import pytest

from steerkit.atlas import atlas_for, build_atlas
from steerkit.find import find_word, quick_find
from steerkit.weights import open_weights
from tiny_models import save_gguf, tiny_model


@pytest.fixture
def tiny(tmp_path):
    model = tiny_model("llama", seed=5)
    reader = open_weights(str(save_gguf(model, tmp_path / "planted.gguf")))
    return reader, build_atlas(reader, top_k=5, progress=False)


def test_quick_find_lists_what_the_atlas_lists(tiny):
    reader, atlas = tiny
    _, exact = find_word(reader, atlas, "dog", limit=6)
    _, quick = quick_find(reader, "dog", limit=6, sample=32, decode=24, top_k=5)
    assert [(h.layer, h.neuron, h.view) for h in quick] == [(h.layer, h.neuron, h.view) for h in exact]
    np.testing.assert_allclose([h.prob for h in quick], [h.prob for h in exact], rtol=1e-4)
    assert [h.top for h in quick] == [h.top for h in exact] and quick[0].prob > 0.1


@pytest.mark.real
def test_quick_find_agrees_with_the_atlas_on_the_default_model():
    """The first `find` on a model without an atlas: the same ten neurons, in the same order, for these words."""
    reader = open_weights(None)
    atlas = atlas_for(reader, progress=False)
    for word in ("dog", "coffee"):
        _, exact = find_word(reader, atlas, word, limit=10)
        _, quick = quick_find(reader, word, limit=10)
        assert [(h.layer, h.neuron) for h in quick] == [(h.layer, h.neuron) for h in exact], word
        # A bf16 atlas (chosen on CPUs with native BF16) carries its log-sum-exp's stated 0.03-nat tolerance.
        rtol = 1e-3 if atlas.meta["dtype"] == "float32" else 0.03
        np.testing.assert_allclose([h.prob for h in quick], [h.prob for h in exact], rtol=rtol)
