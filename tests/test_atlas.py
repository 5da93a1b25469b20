"""Atlas file format, cache, HTML page, word search and model comparison on tiny models."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from steerkit import atlas as atlas_module
from steerkit.atlas import atlas_for, build_atlas, load_atlas
from steerkit.atlas_html import write_atlas_html
from steerkit.compare import compare_atlases
from steerkit.errors import SteerkitError
from steerkit.find import find_word
from steerkit.vocab import is_word_like, token_display
from steerkit.weights import open_weights
from tiny_models import save_gguf, tiny_model


@pytest.fixture
def llama_gguf(tmp_path):
    model = tiny_model("llama")
    return model, save_gguf(model, tmp_path / "llama.gguf")


def test_save_load_round_trip(llama_gguf, tmp_path):
    atlas = build_atlas(open_weights(str(llama_gguf[1])), top_k=3, progress=False)
    atlas.save(tmp_path / "a.npz")
    again = load_atlas(tmp_path / "a.npz")
    assert again.meta == atlas.meta and again.vocab == atlas.vocab
    assert np.array_equal(again.token_ids, atlas.token_ids) and np.array_equal(again.lse, atlas.lse)


def test_cache_second_call_does_not_rebuild(llama_gguf, monkeypatch):
    reader = open_weights(str(llama_gguf[1]))
    first = atlas_for(reader, top_k=3, progress=False)

    def fail(*args, **kwargs):
        raise AssertionError("atlas rebuilt although cached")

    monkeypatch.setattr(atlas_module, "build_atlas", fail)
    second = atlas_for(reader, top_k=3, progress=False)
    assert np.array_equal(first.probs, second.probs)


def test_html_page(llama_gguf, tmp_path):
    atlas = build_atlas(open_weights(str(llama_gguf[1])), top_k=5, progress=False)
    page = write_atlas_html(atlas, tmp_path / "atlas.html").read_text()
    assert "<table" in page and "<svg" in page and "const DATA" in page
    assert "http" not in page.replace("http-equiv", "")  # self-contained
    # The page's data is the atlas: every neuron, every view, its top tokens in order and its top probability.
    vocab = json.loads(re.search(r"^const VOCAB = (.*);$", page, re.M).group(1))
    data = json.loads(re.search(r"^const DATA = (.*);  //", page, re.M).group(1))
    display = token_display(atlas.vocab)
    assert [(layer, neuron) for layer, neuron, _ in data] == [(l, n) for l in range(atlas.n_layers) for n in range(atlas.neurons)]
    for layer, neuron, views in data:
        for view, (ids, p1) in enumerate(views):
            assert [vocab[i] for i in ids] == [display(atlas.vocab[t]) for t in atlas.token_ids[layer, neuron, view]]
            assert abs(p1 - float(atlas.probs[layer, neuron, view, 0])) <= 5e-5
    # One bar per layer and side, titled with its count of word-like top tokens.
    for side in ("read", "write"):
        for layer in range(atlas.n_layers):
            views = (0, 1) if side == "read" else (2, 3)  # read = up row, write = down column, both signs
            count = sum(any(is_word_like(atlas.vocab[int(atlas.token_ids[layer, n, v, 0])]) for v in views)
                        for n in range(atlas.neurons))
            assert f"<title>layer {layer} {side}: {count} of {atlas.neurons}</title>" in page, (side, layer)


def test_find_word_ranks_planted_neuron(tmp_path):
    import torch

    model = tiny_model("llama")
    # Plant a "dog" neuron: its down column points along the dog tokens' embeddings.
    with torch.no_grad():
        dog = model.model.embed_tokens.weight[[0, 1, 2, 3]].sum(0)
        model.model.layers[2].mlp.down_proj.weight[:, 7] = 10 * dog / dog.norm()
    path = save_gguf(model, tmp_path / "planted.gguf")
    reader = open_weights(str(path))
    atlas = build_atlas(reader, top_k=5, progress=False)
    variants, hits = find_word(reader, atlas, "dog", limit=3)
    assert {t for _, t in variants} == {"dog", "Ġdog", "Dog", "Ġdogs"}
    assert (hits[0].layer, hits[0].neuron, hits[0].view) == (2, 7, "write+")
    assert len({(h.layer, h.neuron) for h in hits}) == len(hits)


def test_find_rejects_empty_and_unknown_words(llama_gguf):
    reader = open_weights(str(llama_gguf[1]))
    atlas = build_atlas(reader, top_k=3, progress=False)
    with pytest.raises(SteerkitError, match="empty"):
        find_word(reader, atlas, "  ")
    with pytest.raises(SteerkitError, match="not a single token"):
        find_word(reader, atlas, "zebra")


def test_compare_identical_and_perturbed(tmp_path):
    import torch

    base = tiny_model("llama")
    same = build_atlas(open_weights(str(save_gguf(base, tmp_path / "a.gguf"))), top_k=3, progress=False)
    with torch.no_grad():  # perturb the last layer strongly, leave the others
        for p in base.model.layers[2].mlp.parameters():
            p.add_(torch.randn_like(p) * 2.0)
    other = build_atlas(open_weights(str(save_gguf(base, tmp_path / "b.gguf"))), top_k=3, progress=False)
    assert compare_atlases(same, same).same_top1["read+"] == 1.0
    result = compare_atlases(same, other)
    assert result.per_layer["read+"][:2] == [1.0, 1.0]
    assert result.per_layer["read+"][2] < 0.5
    assert 0.6 < result.same_top1["read+"] < 0.85


@pytest.mark.parametrize("vocab, top_k, gain_scale", [(8192, 10, 1.0), (5000, 7, 1.0), (300, 3, 1.0), (4096, 5, 10.0)])
def test_decode_side_matches_plain_torch(vocab, top_k, gain_scale):
    """Chunked, grouped top-k and single-exp log-sum-exp equal the plain computation."""
    import torch

    from steerkit.full_decode import decode_side
    from steerkit.decode import rms_normalize

    torch.manual_seed(vocab)
    vectors, unembedding = torch.randn(70, 32), torch.randn(vocab, 32)
    gain = (torch.rand(32) + 0.5) * gain_scale  # x10: logit ranges over 160 take the fallback path
    ids, probs, lse = decode_side(vectors, gain, unembedding.T.contiguous(), 1e-6, top_k)
    logits = rms_normalize(vectors, gain, 1e-6) @ unembedding.T
    for sign_index, sign in enumerate((1, -1)):
        signed = sign * logits
        ref_lse = torch.logsumexp(signed, dim=1)
        values, ref_ids = torch.topk(signed, top_k, dim=1)
        assert torch.equal(ids[:, sign_index].long(), ref_ids)
        torch.testing.assert_close(lse[:, sign_index], ref_lse, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(probs[:, sign_index], (values - ref_lse[:, None]).exp(), rtol=1e-4, atol=1e-6)


def test_a_changed_code_version_recomputes_the_cached_atlas(tmp_path, monkeypatch):
    """Cache keys hold the format and steerkit version: an atlas written by other code is never read back."""
    import steerkit.atlas as atlas_module
    from steerkit.weights import open_weights
    from tiny_models import save_gguf, tiny_model

    reader = open_weights(str(save_gguf(tiny_model("llama"), tmp_path / "m.gguf")))
    builds = []
    real_build = atlas_module.build_atlas
    monkeypatch.setattr(atlas_module, "build_atlas", lambda *a, **k: builds.append(1) or real_build(*a, **k))
    atlas_module.atlas_for(reader, 5, progress=False)
    atlas_module.atlas_for(reader, 5, progress=False)
    assert len(builds) == 1  # cached
    monkeypatch.setattr(atlas_module, "ATLAS_FORMAT", atlas_module.ATLAS_FORMAT + 1)
    atlas_module.atlas_for(reader, 5, progress=False)
    monkeypatch.setattr(atlas_module, "__version__", "9.9.9")
    atlas_module.atlas_for(reader, 5, progress=False)
    assert len(builds) == 3
