"""`find` without an atlas: estimate every view from a vocabulary sample, decode only the best candidates exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from steerkit.atlas import atlas_for, build_atlas
from steerkit.decode import SIDES
from steerkit.find import _Pool, find_word, quick_find
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


def test_quick_find_reads_each_matrix_once_and_decodes_only_what_it_keeps(tiny, monkeypatch):
    """The screening pass keeps its candidates' vectors: no matrix is dequantized twice, and only ``decode``
    neuron sides reach the whole-vocabulary decode."""
    import steerkit.full_decode

    reader, atlas = tiny
    read, decoded = [], []
    side_vectors, decode_side = reader.side_vectors, steerkit.full_decode.decode_side
    monkeypatch.setattr(reader, "side_vectors", lambda layer, side: read.append((layer, side)) or side_vectors(layer, side))
    monkeypatch.setattr(steerkit.full_decode, "decode_side",
                        lambda vectors, *args: decoded.append(len(vectors)) or decode_side(vectors, *args))
    _, quick = quick_find(reader, "dog", limit=6, sample=32, screen=16, keep=0.1, decode=12, top_k=5)
    assert sorted(read) == sorted((layer, side) for layer in range(reader.info.n_layers) for side in SIDES)
    assert decoded == [12]
    _, exact = find_word(reader, atlas, "dog", limit=6)
    assert (quick[0].layer, quick[0].neuron, quick[0].view) == (exact[0].layer, exact[0].neuron, exact[0].view)
    assert quick[0].prob == pytest.approx(exact[0].prob, rel=1e-4)


def test_the_screen_reads_through_the_final_norm_gain(tmp_path):
    """With a very uneven final-norm gain and every token in the sample (so each estimate is exact), the
    screen keeps a tenth of the sides and `find` still lists the atlas's neurons: the screen folds the gain
    into the head's columns, it does not skip it."""
    model = tiny_model("llama", seed=5)
    with torch.no_grad():
        model.model.norm.weight.copy_(torch.exp(1.5 * torch.randn(model.config.hidden_size,
                                                                  generator=torch.Generator().manual_seed(1))))
    reader = open_weights(str(save_gguf(model, tmp_path / "gain.gguf")))
    _, exact = find_word(reader, build_atlas(reader, top_k=5, progress=False), "dog", limit=6)
    vocab = reader.info.vocab_size
    _, quick = quick_find(reader, "dog", limit=6, sample=vocab, screen=vocab, keep=0.1, decode=6, top_k=5)
    assert [(h.layer, h.neuron, h.view) for h in quick] == [(h.layer, h.neuron, h.view) for h in exact]


@pytest.mark.real
def test_quick_find_agrees_with_the_atlas_on_the_default_model():
    """The first `find` on a model without an atlas: the same neurons, in the same order, for these words (green and
    wedding: the two of 60 words measured whose atlas top 20 ranked lowest in the screening pass)."""
    reader = open_weights(None)
    atlas = atlas_for(reader, progress=False)
    for word in ("dog", "coffee", "green", "wedding"):
        _, exact = find_word(reader, atlas, word, limit=20)
        _, quick = quick_find(reader, word, limit=20)
        assert [(h.layer, h.neuron) for h in quick] == [(h.layer, h.neuron) for h in exact], word
        # A bf16 atlas (chosen on CPUs with native BF16) carries its log-sum-exp's stated 0.03-nat tolerance.
        rtol = 1e-3 if atlas.meta["dtype"] == "float32" else 0.03
        np.testing.assert_allclose([h.prob for h in quick], [h.prob for h in exact], rtol=rtol)


@pytest.mark.real
def test_discovery_ranks_the_same_neurons_without_the_atlas_on_the_default_model():
    """Discovery's neuron ranking from a shortlist (a big model's first `discover`): the atlas's 16 candidates, in
    its order, with its scores (the shortlist decodes in fp32; a bf16 atlas carries its 0.03-nat tolerance)."""
    from steerkit.candidates import rank_candidates
    from steerkit.concept import concept_from_word

    reader = open_weights(None)
    atlas = atlas_for(reader, progress=False)
    for word in ("dog", "music", "wedding"):
        concept = concept_from_word(word, reader.tokens())
        exact, quick = rank_candidates(reader, atlas, concept), rank_candidates(reader, None, concept)
        assert [(c.layer, c.neuron, c.sign, c.tokens) for c in quick] == [(c.layer, c.neuron, c.sign, c.tokens)
                                                                       for c in exact], word
        rtol = 1e-3 if atlas.meta["dtype"] == "float32" else 0.06
        np.testing.assert_allclose([c.score for c in quick], [c.score for c in exact], rtol=rtol)


@settings(max_examples=60, deadline=None)
@given(size=st.integers(1, 40), matrices=st.lists(st.integers(0, 30), min_size=1, max_size=6), seed=st.integers(0, 999))
def test_the_pool_holds_the_best_sides_offered_with_their_vectors(size, matrices, seed):
    """The fixed-slot pool of the first `find` keeps the `size` best of all offered sides, each with its own
    vector and key, whatever the order and sizes of the matrices (empty ones too)."""
    generator = torch.Generator().manual_seed(seed)
    pool, offered = _Pool(size, 3), []
    for layer, rows in enumerate(matrices):
        scores = torch.randperm(10_000, generator=generator)[:rows].float()  # distinct: the best are unambiguous
        vectors = torch.randn(rows, 3, generator=generator)
        pool.offer(scores, vectors, layer, layer % 2)
        offered += [(float(score), (layer, layer % 2, row), vectors[row]) for row, score in enumerate(scores)]
    best = sorted(offered, key=lambda entry: -entry[0])[:size]
    keys, vectors = pool.contents()
    held = {tuple(int(k) for k in key): vector for key, vector in zip(keys, vectors)}
    assert sorted(held) == sorted(key for _, key, _ in best)
    for _, key, vector in best:
        assert torch.equal(held[key], vector)
