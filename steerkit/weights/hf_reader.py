"""Weights from a local Hugging Face model folder (config.json + safetensors)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from steerkit.architectures import arch_for_hf
from steerkit.errors import SteerkitError
from steerkit.files import read_bounded
from steerkit.fingerprint import files_sha256
from steerkit.vocab import tokens_from_vocab
from steerkit.weights.base import MAX_DIMENSION, ModelInfo, WeightReader

__all__ = ["HFWeights"]


_MAX_JSON_BYTES = 64 << 20  # tokenizer.json of a 256k vocabulary is ~35 MB
MXFP4_BLOCK = 32  # values per MXFP4 block: 16 bytes of 4-bit codes and one shared power-of-two scale


def _read_json(path: Path) -> dict:
    """A JSON object from a regular file of bounded size (one line naming the file if not)."""
    data = read_bounded(path, _MAX_JSON_BYTES, "JSON")
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise SteerkitError(f"{path}: cannot read JSON ({type(exc).__name__}: {str(exc)[:200]})") from exc
    if not isinstance(value, dict):
        raise SteerkitError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def _size(config: dict, key: str, where: Path) -> int:
    value = config.get(key)
    if value is None:
        raise SteerkitError(f"{where}: missing field {key!r}")
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_DIMENSION:
        raise SteerkitError(f"{where}: {key}: expected an integer in 1..{MAX_DIMENSION}, got {str(value)[:40]}")
    return value


class HFWeights(WeightReader):
    """:class:`WeightReader` over safetensors files; tensors are read lazily, one at a time."""

    def __init__(self, folder: Path, label: str | None = None) -> None:
        from safetensors import safe_open

        self.folder = Path(folder)
        config = _read_json(self.folder / "config.json")
        config = config.get("text_config", config) if config.get("model_type") == "gemma3" else config
        if not isinstance(config, dict):
            raise SteerkitError(f"{self.folder / 'config.json'}: text_config: expected a JSON object")
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
        where = self.folder / "config.json"
        eps = config.get("rms_norm_eps", 1e-6)
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps):
            raise SteerkitError(f"{where}: rms_norm_eps: expected a finite number, got {str(eps)[:40]}")
        experts = arch.experts
        if experts and (config.get("mlp_only_layers") or config.get("decoder_sparse_step", 1) != 1):
            raise SteerkitError(f"{where}: dense layers among the expert layers (mlp_only_layers, decoder_sparse_step) "
                                "are not supported")
        self.info = ModelInfo(
            arch=arch,
            n_layers=_size(config, "num_hidden_layers", where),
            d_model=_size(config, "hidden_size", where),
            d_ff=_size(config, experts.width_key if experts else "intermediate_size", where),
            vocab_size=_size(config, "vocab_size", where),
            rms_eps=float(eps),
            label=label or str(self.folder),
            n_experts=_size(config, next((k for k in experts.count_keys if k in config), experts.count_keys[0]), where)
            if experts else 1,
        )
        self._check_shapes()

    def _shape(self, name: str) -> tuple[int, ...]:
        for key in (name, f"language_model.{name}", f"model.language_model.{name.removeprefix('model.')}"):
            if key in self._where:
                return tuple(self._handles[self._where[key]].get_slice(key).get_shape())
        raise SteerkitError(f"{self.folder}: tensor {name!r} is missing (is this a complete model?)")

    def _check_shapes(self) -> None:
        """The MLP, norm and head tensors exist with the shapes config.json implies (a one-line error if not)."""
        info = self.info
        wanted = {"model.norm.weight": (info.d_model,), "model.embed_tokens.weight": (info.vocab_size, info.d_model)}
        if not self._tied:
            wanted["lm_head.weight"] = (info.vocab_size, info.d_model)
        experts = info.arch.experts
        for layer in range(info.n_layers):
            if experts is not None and experts.hf_fused:
                gate_up, down = self._fused_names(layer)
                for name, (rows, cols) in ((gate_up, (info.d_model, 2 * info.d_ff)), (down, (info.d_ff, info.d_model))):
                    if self._mxfp4(name):  # packed along the input dimension, transposed: [E, cols, rows / 32, 16]
                        if rows % MXFP4_BLOCK:
                            raise SteerkitError(f"{self.folder}: {name}_blocks: {rows} inputs are not whole MXFP4 "
                                                f"blocks of {MXFP4_BLOCK}")
                        wanted[f"{name}_blocks"] = (info.n_experts, cols, rows // MXFP4_BLOCK, MXFP4_BLOCK // 2)
                        wanted[f"{name}_scales"] = (info.n_experts, cols, rows // MXFP4_BLOCK)
                    else:
                        wanted[name] = (info.n_experts, rows, cols)
                continue
            gate, up, down = self._projection_names(layer)
            for name in gate + up:
                wanted[name] = (info.d_ff, info.d_model)
            for name in down:
                wanted[name] = (info.d_model, info.d_ff)
        for name, shape in wanted.items():
            if self._shape(name) != shape:
                raise SteerkitError(f"{self.folder}: tensor {name} has shape {list(self._shape(name))}, expected "
                                    f"{list(shape)} from config.json")

    def _get(self, name: str) -> np.ndarray:
        return self._tensor(name).float().numpy()

    def _tensor(self, name: str):
        # Checkpoints saved from a multimodal Gemma 3 nest the text model.
        for key in (name, f"language_model.{name}", f"model.language_model.{name.removeprefix('model.')}"):
            if key in self._where:
                return self._handles[self._where[key]].get_tensor(key)
        raise SteerkitError(f"{self.folder}: tensor {name!r} is missing (is this a complete model?)")

    def _mxfp4(self, name: str) -> bool:
        """gpt-oss as OpenAI ships it: ``name`` saved as MXFP4 ``name_blocks`` and ``name_scales``."""
        return name not in self._where and f"{name}_blocks" in self._where

    def _fused(self, name: str) -> np.ndarray:
        """A fused expert tensor as transformers holds it in memory, dequantized from MXFP4 where it is packed
        (by transformers' own ``convert_moe_packed_tensors``, the function its loader calls)."""
        if not self._mxfp4(name):
            return self._get(name)
        import torch
        from transformers.integrations.mxfp4 import convert_moe_packed_tensors

        blocks, scales = self._tensor(f"{name}_blocks"), self._tensor(f"{name}_scales")
        if blocks.dtype != torch.uint8 or scales.dtype != torch.uint8:
            raise SteerkitError(f"{self.folder}: {name}_blocks and _scales: expected uint8 MXFP4 data, got "
                                f"{blocks.dtype} and {scales.dtype}")
        return convert_moe_packed_tensors(blocks, scales, dtype=torch.float32).numpy()

    def _projection_names(self, layer: int) -> tuple[list[str], list[str], list[str]]:
        """The saved gate, up and down tensors of one layer: one each, or one per expert (in expert order)."""
        experts = self.info.arch.experts
        if experts is None:
            prefix = self.info.arch.hf_mlp_path.format(layer=layer)
            return [f"{prefix}.gate_proj.weight"], [f"{prefix}.up_proj.weight"], [f"{prefix}.down_proj.weight"]
        prefixes = [experts.hf_prefix.format(layer=layer, expert=e) for e in range(self.info.n_experts)]
        gate, up, down = ([f"{p}.{name}.weight" for p in prefixes] for name in experts.hf_names)
        return gate, up, down

    def _fused_names(self, layer: int) -> tuple[str, str]:
        """gpt-oss's saved ``gate_up_proj`` ``[E, d, 2*d_ff]`` (gate and up interleaved) and ``down_proj`` ``[E, d_ff, d]``."""
        experts = self.info.arch.experts
        prefix = experts.hf_prefix.format(layer=layer)
        return f"{prefix}.{experts.hf_names[0]}", f"{prefix}.{experts.hf_names[1]}"

    def _mlp(self, layer: int, which: int) -> np.ndarray:
        """Gate (0), up (1) or down (2) vectors of every neuron, ``[neurons, d_model]`` in flat order."""
        self.check_layer(layer)
        experts = self.info.arch.experts
        if experts is not None and experts.hf_fused:
            gate_up, down = self._fused_names(layer)
            if which == 2:
                return self._fused(down).reshape(-1, self.info.d_model)
            columns = self._fused(gate_up)[:, :, which::2]  # [E, d, d_ff]: gate columns even, up columns odd
            return np.ascontiguousarray(columns.transpose(0, 2, 1).reshape(-1, self.info.d_model))
        matrices = [self._get(name) for name in self._projection_names(layer)[which]]
        return np.ascontiguousarray(np.concatenate([m.T for m in matrices] if which == 2 else matrices))

    def up_rows(self, layer: int) -> np.ndarray:
        return self._mlp(layer, 1)

    def gate_rows(self, layer: int) -> np.ndarray:
        return self._mlp(layer, 0)

    def down_cols(self, layer: int) -> np.ndarray:
        return self._mlp(layer, 2)

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
