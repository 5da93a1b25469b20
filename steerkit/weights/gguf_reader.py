"""Weights from a GGUF file, memory-mapped and dequantized (gguf-py) one tensor at a time.

GGUF stores a matrix with ``ne[0]`` as the contiguous (input) dimension, so
gguf-py's ``tensor.data`` is laid out like PyTorch's ``[out, in]``: the
``ffn_up`` rows are neurons, and the ``ffn_down`` columns are neurons.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, MODEL_TENSOR, TENSOR_NAMES, GGUFValueType
from gguf.quants import dequantize

from steerkit.architectures import arch_for_gguf
from steerkit.errors import SteerkitError
from steerkit.fingerprint import file_sha256
from steerkit.gguf_file import GGUFFile
from steerkit.profile import joined_vocab_sha256
from steerkit.weights.base import MAX_DIMENSION, ModelInfo, WeightReader

__all__ = ["GGUFWeights"]


def _field(file: GGUFFile, key: str, kind: str, default=None):
    """A metadata value of ``kind`` (see :meth:`GGUFFile.typed`); sizes must be in 1..MAX_DIMENSION."""
    value = file.typed(key, kind, default)
    if value is None:
        raise SteerkitError(f"{file.path}: GGUF metadata key {key!r} is missing")
    if kind == "int" and not 1 <= value <= MAX_DIMENSION:
        raise SteerkitError(f"{file.path}: GGUF metadata {key}: {value} is out of range 1..{MAX_DIMENSION}")
    return value


class GGUFWeights(WeightReader):
    """:class:`WeightReader` over a GGUF file (memory-mapped; nothing loaded up front)."""

    def __init__(self, path: Path, label: str | None = None) -> None:
        self.path = Path(path)
        self.file = GGUFFile(self.path)
        arch_name = _field(self.file, "general.architecture", "string")
        arch = arch_for_gguf(arch_name, str(self.path))
        self._tensors = {t.name: t for t in self.file.tensors}
        self._token_strings: list[str] | None = None
        token_embd = self._tensor("token_embd.weight")
        self.info = ModelInfo(
            arch=arch,
            n_layers=int(_field(self.file, f"{arch_name}.block_count", "int")),
            d_model=int(_field(self.file, f"{arch_name}.embedding_length", "int")),
            d_ff=int(_field(self.file, f"{arch_name}.feed_forward_length", "int")),
            vocab_size=int(self._tensor("output.weight", token_embd).shape[-1]),
            rms_eps=float(_field(self.file, f"{arch_name}.attention.layer_norm_rms_epsilon", "float", 1e-6)),
            label=label or str(self.path),
        )
        self._check_shapes()

    def _check_shapes(self) -> None:
        """Every tensor neuron decoding reads exists with the shape the metadata implies (one line if not)."""
        info = self.info
        wanted = {"token_embd.weight": (info.d_model, info.vocab_size), "output_norm.weight": (info.d_model,)}
        if "output.weight" in self._tensors:
            wanted["output.weight"] = (info.d_model, info.vocab_size)
        for layer in range(info.n_layers):
            for kind, shape in ((MODEL_TENSOR.FFN_UP, (info.d_model, info.d_ff)),
                                (MODEL_TENSOR.FFN_DOWN, (info.d_ff, info.d_model))):
                wanted[TENSOR_NAMES[kind].format(bid=layer) + ".weight"] = shape
            gate = TENSOR_NAMES[MODEL_TENSOR.FFN_GATE].format(bid=layer) + ".weight"
            if gate in self._tensors:
                wanted[gate] = (info.d_model, info.d_ff)
        for name, shape in wanted.items():
            found = self._tensor(name).shape
            if tuple(found) != shape:
                raise SteerkitError(f"{self.path}: tensor {name} has shape {list(found)}, expected {list(shape)} "
                                    f"from the model's metadata")

    def _tensor(self, name: str, fallback=None):
        tensor = self._tensors.get(name, fallback)
        if tensor is None:
            raise SteerkitError(f"{self.path}: tensor {name!r} is missing (is this a complete model?)")
        return tensor

    def _layer_tensor(self, kind: MODEL_TENSOR, layer: int):
        self.check_layer(layer)
        return self._tensor(TENSOR_NAMES[kind].format(bid=layer) + ".weight")

    def _matrix(self, kind: MODEL_TENSOR, layer: int) -> np.ndarray:
        tensor = self._layer_tensor(kind, layer)
        try:
            values = np.array(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)  # a copy, not a view
        except NotImplementedError as exc:
            raise SteerkitError(
                f"{self.path}: tensor {tensor.name} has type {tensor.tensor_type.name}, which gguf-py cannot dequantize"
            ) from exc
        self.file.release(tensor)  # keep resident memory at one layer, not the whole file
        return values

    def up_rows(self, layer: int) -> np.ndarray:
        return self._matrix(MODEL_TENSOR.FFN_UP, layer)

    def gate_rows(self, layer: int) -> np.ndarray:
        return self._matrix(MODEL_TENSOR.FFN_GATE, layer)

    def down_cols(self, layer: int) -> np.ndarray:
        return np.ascontiguousarray(self._matrix(MODEL_TENSOR.FFN_DOWN, layer).T)

    def down_columns(self, layer: int, neurons: np.ndarray) -> np.ndarray:
        """``W_down[:, neurons]`` transposed, ``[n, d_model]``, dequantizing only the blocks that hold them.

        A neuron's down column is one element in every row of ``ffn_down``;
        reading just its quant block per row is hundreds of times cheaper than
        dequantizing the whole matrix.
        """
        tensor = self._layer_tensor(MODEL_TENSOR.FFN_DOWN, layer)
        neurons = np.asarray(neurons, dtype=np.int64)
        block_size, type_size = GGML_QUANT_SIZES[tensor.tensor_type]
        data = tensor.data
        if data.dtype != np.uint8:  # F32 / F16: plain columns
            return np.array(data[:, neurons].T, dtype=np.float32)
        blocks = np.unique(neurons // block_size)
        byte_columns = (blocks[:, None] * type_size + np.arange(type_size)).reshape(-1)
        gathered = np.ascontiguousarray(data[:, byte_columns])
        # Blocks dequantize independently: as one long row, gguf-py does it in one call instead of one per row group (5x).
        values = np.asarray(dequantize(gathered.reshape(1, -1), tensor.tensor_type), dtype=np.float32).reshape(len(data), -1)
        self.file.release(tensor)  # the gather touched a page in every row
        where = np.searchsorted(blocks, neurons // block_size) * block_size + neurons % block_size
        return np.ascontiguousarray(values[:, where].T)

    def norm_gain(self) -> np.ndarray:
        # Gemma's GGUF norm weights already hold 1 + w: no offset here.
        tensor = self._tensor("output_norm.weight")
        return np.array(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32).reshape(-1)

    def unembedding(self) -> np.ndarray:
        tensor = self._tensor("output.weight", self._tensors.get("token_embd.weight"))
        return np.array(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)

    def tokens(self) -> list[str]:
        if self._token_strings is None:
            strings = list(self.file.typed("tokenizer.ggml.tokens", "strings", []))
            strings += [f"<#{i}>" for i in range(len(strings), self.info.vocab_size)]
            self._token_strings = strings[: self.info.vocab_size]
        return self._token_strings

    def fingerprint(self) -> str:
        return file_sha256(self.path)

    def vocab_digest(self) -> str:
        # Hashed from the stored bytes: decoding 49k-262k token strings first would cost 35-140 ms per patch.
        field = self.file.fields.get("tokenizer.ggml.tokens")
        if field is not None and field.sub_type == GGUFValueType.STRING and field.count == self.info.vocab_size:
            joined = field.joined_strings()
            try:
                joined.decode("utf-8")  # tokens() replaces invalid bytes, which would hash differently
            except UnicodeDecodeError:
                return super().vocab_digest()
            return joined_vocab_sha256(joined)
        return super().vocab_digest()
