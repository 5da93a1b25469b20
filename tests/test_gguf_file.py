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


def test_long_string_arrays_are_walked_once_per_file(tmp_path, monkeypatch):
    """A tokenizer-sized string array's end is remembered per file; a rewritten file is walked afresh."""
    import steerkit.gguf_file as gguf_file

    path = tmp_path / "m.gguf"
    walks = []
    real_skip = GGUFFile._skip_strings
    monkeypatch.setattr(GGUFFile, "_skip_strings", lambda self, count: walks.append(count) or real_skip(self, count))
    model = tiny_model("llama", hidden_size=64, intermediate_size=96, vocab_size=5000)
    for words in ("a", "bb"):
        save_gguf(model, path, tokens=[f"{words}{i}" for i in range(5000)])
        walks.clear()
        assert_same_as_gguf_py(path)  # first open: walked
        assert 5000 in walks
        walks.clear()
        assert GGUFFile(path).value("tokenizer.ggml.tokens")[4999] == f"{words}4999"  # second: remembered
        assert 5000 not in walks and gguf_file._REMEMBERED_WALK <= 5000
