"""Model names, damaged files and bad addresses give one clear line each."""

from __future__ import annotations


import pytest

from steerkit.errors import SteerkitError
from steerkit.sources import resolve_model
from steerkit.weights import open_weights
from tiny_models import save_gguf, tiny_model


def test_unknown_model_name():
    with pytest.raises(SteerkitError, match="unknown model 'gpt-9'"):
        resolve_model("gpt-9")


def test_missing_gguf(tmp_path):
    with pytest.raises(SteerkitError, match="no such file"):
        resolve_model(str(tmp_path / "absent.gguf"))


def test_not_a_gguf(tmp_path):
    path = tmp_path / "fake.gguf"
    path.write_bytes(b"hello world" * 10)
    with pytest.raises(SteerkitError, match="not a GGUF file"):
        open_weights(str(path))


def test_truncated_gguf(tmp_path):
    full = save_gguf(tiny_model("llama"), tmp_path / "full.gguf")
    for keep in (100, full.stat().st_size - 64):
        cut = tmp_path / f"cut{keep}.gguf"
        cut.write_bytes(full.read_bytes()[:keep])
        with pytest.raises(SteerkitError, match="truncated|damaged"):
            open_weights(str(cut))


def test_unsupported_architecture(tmp_path):
    from gguf import GGUFWriter
    import numpy as np

    path = tmp_path / "bert.gguf"
    writer = GGUFWriter(str(path), "bert")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file(); writer.write_kv_data_to_file(); writer.write_tensors_to_file(); writer.close()
    with pytest.raises(SteerkitError, match="unsupported architecture 'bert'"):
        open_weights(str(path))


def test_neuron_out_of_range(tmp_path):
    reader = open_weights(str(save_gguf(tiny_model("llama"), tmp_path / "m.gguf")))
    with pytest.raises(SteerkitError, match="layer 3 out of range"):
        reader.check_neuron(3, 0)
    with pytest.raises(SteerkitError, match="neuron 0:48 out of range"):
        reader.check_neuron(0, 48)


def test_hf_folder_without_config(tmp_path):
    with pytest.raises(SteerkitError, match="no config.json"):
        resolve_model(str(tmp_path))


def test_a_changed_code_version_converts_the_gguf_again(tmp_path, monkeypatch):
    """The transformers conversion of a GGUF is keyed by the file and the converting code's version."""
    import steerkit.runtimes.hf.loader as loader
    from steerkit.sources import ModelSource

    source = ModelSource("m", "gguf", tmp_path / "m.gguf")
    source.path.write_bytes(b"GGUF")
    made = []

    def convert(src, target):
        made.append(target)
        target.mkdir(parents=True)
        (target / "model.safetensors").write_bytes(b"x")

    monkeypatch.setattr(loader, "_convert_gguf", convert)
    first = loader.hf_folder(source)
    assert loader.hf_folder(source) == first and len(made) == 1
    monkeypatch.setattr(loader, "CONVERSION_FORMAT", loader.CONVERSION_FORMAT + 1)
    assert loader.hf_folder(source) != first and len(made) == 2
