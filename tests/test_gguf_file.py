"""steerkit's fast GGUF header parser reads exactly what gguf-py's reader reads."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader
from hypothesis import given, settings
from hypothesis import strategies as st

from steerkit.gguf_file import GGUFFile, _string_offsets
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


def _packed(strings: list[bytes], before: bytes = b"", after: bytes = b"") -> tuple[np.ndarray, list[int]]:
    """``strings`` as a GGUF string array between other bytes, and the true offsets (starts, then the end)."""
    offsets, pos = [], len(before)
    for text in strings:
        offsets.append(pos)
        pos += 8 + len(text)
    body = b"".join(struct.pack("<Q", len(text)) + text for text in strings)
    return np.frombuffer(before + body + after, dtype=np.uint8), offsets + [pos]


_TEXT = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), min_size=1, max_size=40)


@settings(max_examples=200, deadline=None)
@given(st.lists(_TEXT, min_size=1, max_size=300), st.binary(max_size=40), st.binary(max_size=40))
def test_string_offsets_find_text_arrays(texts, before, after):
    """Non-empty strings without NUL (what tokenizers store) are located without a walk, exactly."""
    data, truth = _packed([t.encode() for t in texts], before, after)
    found = _string_offsets(data, len(before), len(texts))
    assert found is not None and found.tolist() == truth


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=12), min_size=1, max_size=200), st.binary(max_size=40), st.binary(max_size=40))
def test_string_offsets_are_exact_or_absent(blobs, before, after):
    """Any bytes at all (empty strings, NULs, runs of zeros): the offsets are right, or the caller must walk."""
    data, truth = _packed(blobs, before, after)
    found = _string_offsets(data, len(before), len(blobs))
    assert found is None or found.tolist() == truth


def test_strings_of_16_mib_and_more_are_left_to_the_walk():
    data, truth = _packed([b"a", b"b" * (1 << 24), b"c"])
    assert _string_offsets(data, 0, 3) is None
    data, truth = _packed([b"a", b"b" * ((1 << 24) - 1), b"c"])
    assert _string_offsets(data, 0, 3).tolist() == truth


@pytest.mark.parametrize("odd, walk", [([""] * 3, True), (["\0x", "\0"], True), (["a" * 70000], False)])
def test_odd_vocabularies_read_like_gguf_py(tmp_path, monkeypatch, odd, walk):
    """Empty tokens and tokens starting with NUL are walked; a long token is not; both read like gguf-py's."""
    walked = []
    real_walk = GGUFFile._walk_strings
    monkeypatch.setattr(GGUFFile, "_walk_strings", lambda self, count: walked.append(count) or real_walk(self, count))
    model = tiny_model("llama", hidden_size=64, intermediate_size=96, vocab_size=3000)
    tokens = [f"w{i}" for i in range(3000)]
    save_gguf(model, tmp_path / "plain.gguf", tokens=tokens)
    assert_same_as_gguf_py(tmp_path / "plain.gguf")
    assert 3000 not in walked  # located with numpy
    tokens[1000 : 1000 + len(odd)] = odd
    save_gguf(model, tmp_path / "odd.gguf", tokens=tokens)
    assert_same_as_gguf_py(tmp_path / "odd.gguf")
    assert (3000 in walked) == walk
