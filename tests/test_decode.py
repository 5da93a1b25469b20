"""Decoding through the final norm and LM head agrees with a plain torch reference, per architecture."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from steerkit.atlas import build_atlas
from steerkit.decode import VIEWS, decode_neuron
from steerkit.weights import open_weights


def reference_probs(model, vector: torch.Tensor) -> torch.Tensor:
    """What the model itself predicts if ``vector`` were the last residual state."""
    with torch.no_grad():
        return torch.softmax(model.lm_head(model.model.norm(vector[None, None]))[0, 0], dim=-1)


def reference_vectors(model, layer: int, neuron: int) -> dict[str, torch.Tensor]:
    mlp = model.model.layers[layer].mlp
    return {"read": mlp.up_proj.weight[neuron].detach(), "write": mlp.down_proj.weight[:, neuron].detach()}


@pytest.mark.parametrize("fmt", ["hf", "gguf"])
def test_decode_neuron_matches_reference(tiny, fmt):
    model, folder, gguf_path = tiny
    reader = open_weights(str(folder if fmt == "hf" else gguf_path))
    for layer, neuron in [(0, 0), (1, 17), (2, 47)]:
        decoded = decode_neuron(reader, layer, neuron, top_k=5)
        vectors = reference_vectors(model, layer, neuron)
        for view in VIEWS:
            probs = reference_probs(model, view.sign * vectors[view.side])
            values, ids = torch.topk(probs, 5)
            got = decoded.top[view.label]
            assert [i for i, _, _ in got] == ids.tolist()
            np.testing.assert_allclose([p for _, _, p in got], values.numpy(), atol=1e-4)


@pytest.mark.parametrize("fmt", ["hf", "gguf"])
def test_atlas_matches_reference(tiny, fmt):
    model, folder, gguf_path = tiny
    reader = open_weights(str(folder if fmt == "hf" else gguf_path))
    atlas = build_atlas(reader, top_k=4, progress=False)
    assert atlas.token_ids.shape == (3, 48, 4, 4)
    for layer in range(3):
        for neuron in (0, 23, 47):
            vectors = reference_vectors(model, layer, neuron)
            for v, view in enumerate(VIEWS):
                logits = model.lm_head(model.model.norm(view.sign * vectors[view.side][None, None]))[0, 0].detach()
                probs = torch.softmax(logits, -1)
                values, ids = torch.topk(probs, 4)
                assert atlas.token_ids[layer, neuron, v].tolist() == ids.tolist()
                np.testing.assert_allclose(atlas.probs[layer, neuron, v], values.numpy(), atol=1e-4)
                np.testing.assert_allclose(atlas.lse[layer, neuron, v], torch.logsumexp(logits, -1).item(), atol=1e-4)


def test_gguf_and_hf_readers_agree(tiny):
    _, folder, gguf_path = tiny
    hf, gg = open_weights(str(folder)), open_weights(str(gguf_path))
    assert hf.info.n_layers == gg.info.n_layers and hf.info.d_ff == gg.info.d_ff
    np.testing.assert_allclose(hf.norm_gain(), gg.norm_gain(), atol=1e-6)
    np.testing.assert_allclose(hf.down_cols(1), gg.down_cols(1), atol=1e-6)
    np.testing.assert_allclose(hf.unembedding(), gg.unembedding(), atol=1e-6)


@pytest.mark.parametrize("ffn_type", ["Q8_0", "Q4_1", None])
def test_down_columns_and_up_rows_read_only_needed_blocks_exactly(tmp_path, ffn_type):
    from gguf import GGMLQuantizationType

    from tiny_models import save_gguf, tiny_model

    qtype = GGMLQuantizationType[ffn_type] if ffn_type else None
    model = tiny_model("llama", hidden_size=64, intermediate_size=96)
    reader = open_weights(str(save_gguf(model, tmp_path / "m.gguf", ffn_type=qtype)))
    neurons = np.array([95, 0, 33, 32, 64, 33])
    np.testing.assert_array_equal(reader.down_columns(1, neurons), reader.down_cols(1)[neurons])
    np.testing.assert_array_equal(reader.up_rows_of(1, neurons), reader.up_rows(1)[neurons])
