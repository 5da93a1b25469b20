"""The atlas and decoding on the embedded real models (SmolLM2-135M-Instruct, Gemma 3 270M)."""

from __future__ import annotations

import numpy as np
import pytest

from steerkit.atlas import atlas_for
from steerkit.decode import decode_neuron
from steerkit.find import find_word
from steerkit.weights import open_weights

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def smollm2():
    reader = open_weights("smollm2-135m")
    return reader, atlas_for(reader, progress=False)


def test_smollm2_shapes(smollm2):
    reader, atlas = smollm2
    info = reader.info
    assert (info.arch.name, info.n_layers, info.d_model, info.d_ff, info.vocab_size) == ("llama", 30, 576, 1536, 49152)
    assert atlas.token_ids.shape == (30, 1536, 4, 10) and np.isfinite(atlas.lse).all()


def test_smollm2_dog_neuron_decodes_to_dog(smollm2):
    reader, _ = smollm2
    decoded = decode_neuron(reader, 29, 808, top_k=6)
    read = [t.lstrip("Ġ").lower() for _, t, _ in decoded.top["read-"]]
    write = [t.lstrip("Ġ").lower() for _, t, _ in decoded.top["write+"]]
    assert read[0] == "dog" and sum(t.startswith("dog") for t in read) >= 4
    assert sum(t.startswith("dog") for t in write[:3]) >= 2


def test_smollm2_find_dog(smollm2):
    reader, atlas = smollm2
    _, hits = find_word(reader, atlas, "dog", limit=3)
    assert (29, 808) in [(h.layer, h.neuron) for h in hits]


def test_gemma3_reads_and_decodes():
    reader = open_weights("gemma3-270m")
    info = reader.info
    assert (info.arch.name, info.n_layers, info.d_model, info.d_ff, info.vocab_size) == ("gemma3", 18, 640, 2048, 262144)
    # GGUF stores Gemma's norm gain with +1 already added: gains sit around 1, not 0.
    assert reader.norm_gain().mean() > 0.5
    decoded = decode_neuron(reader, 17, 0, top_k=5)
    assert all(len(v) == 5 for v in decoded.top.values())
    assert all(0 < p <= 1 for v in decoded.top.values() for _, _, p in v)
