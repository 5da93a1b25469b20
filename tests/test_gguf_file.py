"""steerkit's fast GGUF header parser reads exactly what gguf-py's reader reads."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader

from steerkit.gguf_file import GGUFFile
from steerkit.sources import resolve_model
from tiny_models import save_gguf, tiny_model


def assert_same_as_gguf_py(path) -> None:
    ours, theirs = GGUFFile(path), GGUFReader(path)
    for key, field in theirs.fields.items():
        if not key.startswith("GGUF."):
            assert ours.fields[key].value == field.contents(), key
    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
    for a, b in zip(ours.tensors, theirs.tensors):
        assert (a.tensor_type, a.data_offset, a.n_bytes) == (b.tensor_type, b.data_offset, b.n_bytes), a.name
        assert np.array_equal(a.data, b.data), a.name


@pytest.mark.parametrize("ffn_type", [None, GGMLQuantizationType.Q4_1])
def test_tiny_files(tmp_path, ffn_type):
    model = tiny_model("llama", hidden_size=64, intermediate_size=96)
    assert_same_as_gguf_py(save_gguf(model, tmp_path / "m.gguf", ffn_type=ffn_type))


@pytest.mark.real
def test_default_model():
    assert_same_as_gguf_py(resolve_model().path)
