"""Weights from a local Hugging Face model folder (config.json + safetensors)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from steerkit.architectures import arch_for_hf
from steerkit.errors import SteerkitError
from steerkit.fingerprint import files_sha256
from steerkit.vocab import tokens_from_vocab
from steerkit.weights.base import ModelInfo, WeightReader

__all__ = ["HFWeights"]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SteerkitError(f"{path}: cannot read JSON ({exc})") from exc


class HFWeights(WeightReader):
    """:class:`WeightReader` over safetensors files; tensors are read lazily, one at a time."""

    def __init__(self, folder: Path, label: str | None = None) -> None:
        from safetensors import safe_open

        self.folder = Path(folder)
        config = _read_json(self.folder / "config.json")
        config = config.get("text_config", config) if config.get("model_type") == "gemma3" else config
        arch = arch_for_hf(str(config.get("model_type")), str(self.folder / "config.json"))
        self._files = sorted(self.folder.glob("*.safetensors"))
        if not self._files:
            raise SteerkitError(f"{self.folder}: no .safetensors files (only safetensors checkpoints are read)")
        self._where: dict[str, Path] = {}
        self._handles = {}
        for path in self._files:
            try:
                handle = safe_open(str(path), framework="pt")
            except Exception as exc:  # safetensors raises its own error types
                raise SteerkitError(f"{path}: damaged safetensors file ({exc})") from exc
            self._handles[path] = handle
            for key in handle.keys():
                self._where[key] = path
        self._tied = "lm_head.weight" not in self._where
        self._config = config
        try:
            self.info = ModelInfo(
                arch=arch,
                n_layers=int(config["num_hidden_layers"]),
                d_model=int(config["hidden_size"]),
                d_ff=int(config["intermediate_size"]),
                vocab_size=int(config["vocab_size"]),
                rms_eps=float(config.get("rms_norm_eps", 1e-6)),
                label=label or str(self.folder),
            )
        except KeyError as exc:
            raise SteerkitError(f"{self.folder / 'config.json'}: missing field {exc.args[0]!r}") from exc

    def _get(self, name: str) -> np.ndarray:
        # Checkpoints saved from a multimodal Gemma 3 nest the text model.
        for key in (name, f"language_model.{name}", f"model.language_model.{name.removeprefix('model.')}"):
            if key in self._where:
                return self._handles[self._where[key]].get_tensor(key).float().numpy()
        raise SteerkitError(f"{self.folder}: tensor {name!r} is missing (is this a complete model?)")

    def _mlp(self, layer: int, proj: str) -> np.ndarray:
        self.check_layer(layer)
        prefix = self.info.arch.hf_mlp_path.format(layer=layer)
        return self._get(f"{prefix}.{proj}.weight")

    def up_rows(self, layer: int) -> np.ndarray:
        return self._mlp(layer, "up_proj")

    def gate_rows(self, layer: int) -> np.ndarray:
        return self._mlp(layer, "gate_proj")

    def down_cols(self, layer: int) -> np.ndarray:
        return np.ascontiguousarray(self._mlp(layer, "down_proj").T)

    def norm_gain(self) -> np.ndarray:
        return self._get("model.norm.weight") + np.float32(self.info.arch.hf_norm_offset)

    def unembedding(self) -> np.ndarray:
        return self._get("model.embed_tokens.weight" if self._tied else "lm_head.weight")

    def tokens(self) -> list[str]:
        vocab: dict[str, int] = {}
        tokenizer_file = self.folder / "tokenizer.json"
        if tokenizer_file.is_file():
            from tokenizers import Tokenizer

            vocab = Tokenizer.from_file(str(tokenizer_file)).get_vocab(with_added_tokens=True)
        return tokens_from_vocab(vocab, self.info.vocab_size)

    def fingerprint(self) -> str:
        return files_sha256(self._files)
