"""Weights from a GGUF file, memory-mapped and dequantized (gguf-py) one tensor at a time.

GGUF stores a matrix with ``ne[0]`` as the contiguous (input) dimension, so
gguf-py's ``tensor.data`` is laid out like PyTorch's ``[out, in]``: the
``ffn_up`` rows are neurons, and the ``ffn_down`` columns are neurons.  A
mixture of experts stacks them: ``ffn_up_exps`` is ``[experts, d_ff, d]`` and
``ffn_down_exps`` ``[experts, d, d_ff]``; its rows and columns are read in
expert order, which is steerkit's flat neuron index (``expert * d_ff + i``).
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

_DENSE_KINDS = (MODEL_TENSOR.FFN_GATE, MODEL_TENSOR.FFN_UP, MODEL_TENSOR.FFN_DOWN)
_EXPERT_KINDS = (MODEL_TENSOR.FFN_GATE_EXP, MODEL_TENSOR.FFN_UP_EXP, MODEL_TENSOR.FFN_DOWN_EXP)


def _dequantized(data: np.ndarray, qtype) -> np.ndarray:
    """A tensor's values as a float32 array of its own (not a view of the mapped file).

    gguf-py returns the mapped bytes themselves for F32 and a new array for other types; only the former needs
    a copy (copying the latter again cost 2 s of a first ``find`` for an 8B model's F16 head).
    """
    values = dequantize(data, qtype)
    if values.dtype == np.float32 and not np.may_share_memory(values, data):
        return np.asarray(values)
    return np.array(values, dtype=np.float32)


def _columns(data: np.ndarray, qtype, neurons: np.ndarray, release) -> np.ndarray:
    """Columns ``neurons`` of one ``[rows, cols]`` matrix, transposed, dequantizing only the blocks holding them."""
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    if data.dtype != np.uint8:  # F32 / F16: plain columns
        return np.array(data[:, neurons].T, dtype=np.float32)
    blocks = np.unique(neurons // block_size)
    byte_columns = (blocks[:, None] * type_size + np.arange(type_size)).reshape(-1)
    gathered = np.ascontiguousarray(data[:, byte_columns])
    # Blocks dequantize independently: as one long row, gguf-py does it in one call instead of one per row group (5x).
    values = np.asarray(dequantize(gathered.reshape(1, -1), qtype), dtype=np.float32).reshape(len(data), -1)
    release()  # the gather touched a page in every row
    where = np.searchsorted(blocks, neurons // block_size) * block_size + neurons % block_size
    return np.ascontiguousarray(values[:, where].T)


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
        n_experts = int(self.file.typed(f"{arch_name}.expert_count", "int", 0) or 0)
        arch = arch_for_gguf(arch_name, str(self.path), experts=n_experts > 1)
        if arch.experts and not 1 < n_experts <= MAX_DIMENSION:
            raise SteerkitError(f"{self.path}: GGUF metadata {arch_name}.expert_count: expected 2..{MAX_DIMENSION} "
                                f"for a {arch.name} model, got {n_experts}")
        if n_experts > 1 and not arch.experts:
            raise SteerkitError(f"{self.path}: {arch_name} model with {n_experts} experts: mixture-of-experts "
                                f"{arch_name} is not supported")
        self._tensors = {t.name: t for t in self.file.tensors}
        self._kinds = _EXPERT_KINDS if arch.experts else _DENSE_KINDS
        self._token_strings: list[str] | None = None
        token_embd = self._tensor("token_embd.weight")
        self.info = ModelInfo(
            arch=arch,
            n_layers=int(_field(self.file, f"{arch_name}.block_count", "int")),
            d_model=int(_field(self.file, f"{arch_name}.embedding_length", "int")),
            d_ff=int(_field(self.file, f"{arch_name}.{arch.experts.gguf_width_key if arch.experts else 'feed_forward_length'}",
                            "int")),
            vocab_size=int(self._tensor("output.weight", token_embd).shape[-1]),
            rms_eps=float(_field(self.file, f"{arch_name}.attention.layer_norm_rms_epsilon", "float", 1e-6)),
            label=label or str(self.path),
            n_experts=n_experts if arch.experts else 1,
        )
        self._check_shapes()

    def _check_shapes(self) -> None:
        """Every tensor neuron decoding reads exists with the shape the metadata implies (one line if not)."""
        info = self.info
        wanted = {"token_embd.weight": (info.d_model, info.vocab_size), "output_norm.weight": (info.d_model,)}
        if "output.weight" in self._tensors:
            wanted["output.weight"] = (info.d_model, info.vocab_size)
        stacked = (info.n_experts,) if info.arch.experts else ()  # ne order: the expert axis is last
        gate_kind, up_kind, down_kind = self._kinds
        for layer in range(info.n_layers):
            for kind, shape in ((up_kind, (info.d_model, info.d_ff)), (down_kind, (info.d_ff, info.d_model))):
                wanted[TENSOR_NAMES[kind].format(bid=layer) + ".weight"] = shape + stacked
            gate = TENSOR_NAMES[gate_kind].format(bid=layer) + ".weight"
            if gate in self._tensors:
                wanted[gate] = (info.d_model, info.d_ff) + stacked
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

    def ffn_tensor_name(self, which: str, layer: int) -> str:
        """The GGUF name of layer ``layer``'s ``"gate"``, ``"up"`` or ``"down"`` tensor (``_exps`` for experts)."""
        kind = self._kinds[("gate", "up", "down").index(which)]
        return TENSOR_NAMES[kind].format(bid=layer) + ".weight"

    def _matrix(self, kind: MODEL_TENSOR, layer: int) -> np.ndarray:
        """The dequantized tensor, ``[rows, cols]``, or ``[experts, rows, cols]`` for stacked experts."""
        tensor = self._layer_tensor(kind, layer)
        values = self._values(tensor, tensor.data)
        self.file.release(tensor)  # keep resident memory at one layer, not the whole file
        return values

    def _values(self, tensor, data: np.ndarray) -> np.ndarray:
        """``data`` (all or some rows of ``tensor``) dequantized; a one-line error for a type gguf-py lacks."""
        try:
            return _dequantized(data, tensor.tensor_type)
        except NotImplementedError as exc:
            raise SteerkitError(
                f"{self.path}: tensor {tensor.name} has type {tensor.tensor_type.name}, which gguf-py cannot dequantize"
            ) from exc

    def up_rows(self, layer: int) -> np.ndarray:
        return self._matrix(self._kinds[1], layer).reshape(-1, self.info.d_model)

    def gate_rows(self, layer: int) -> np.ndarray:
        return self._matrix(self._kinds[0], layer).reshape(-1, self.info.d_model)

    def down_cols(self, layer: int) -> np.ndarray:
        down = self._matrix(self._kinds[2], layer)  # [d, d_ff] or [experts, d, d_ff]
        return np.ascontiguousarray(np.swapaxes(down, -1, -2).reshape(-1, self.info.d_model))

    def up_rows_of(self, layer: int, neurons: np.ndarray) -> np.ndarray:
        """``W_up[neurons]``, ``[n, d_model]``, dequantizing only those rows (whole quant blocks, since a row of
        ``ffn_up`` is one neuron: for an 8B model 0.36 s per matrix less than reading all of it)."""
        tensor = self._layer_tensor(self._kinds[1], layer)
        data = tensor.data.reshape(-1, tensor.data.shape[-1])  # experts stacked: flat neuron index
        values = self._values(tensor, np.ascontiguousarray(data[np.asarray(neurons, dtype=np.int64)]))
        self.file.release(tensor)
        return values.reshape(-1, self.info.d_model)

    def down_columns(self, layer: int, neurons: np.ndarray) -> np.ndarray:
        """``W_down[:, neurons]`` transposed, ``[n, d_model]``, dequantizing only the blocks that hold them.

        A neuron's down column is one element in every row of ``ffn_down``;
        reading just its quant block per row is hundreds of times cheaper than
        dequantizing the whole matrix.
        """
        tensor = self._layer_tensor(self._kinds[2], layer)
        neurons = np.asarray(neurons, dtype=np.int64)
        if not self.info.arch.experts:
            return _columns(tensor.data, tensor.tensor_type, neurons, lambda: self.file.release(tensor))
        out = np.empty((len(neurons), self.info.d_model), dtype=np.float32)
        experts, index = np.divmod(neurons, self.info.d_ff)
        for expert in np.unique(experts):
            chosen = experts == expert
            out[chosen] = _columns(tensor.data[expert], tensor.tensor_type, index[chosen], lambda: None)
        self.file.release(tensor)
        return out

    def norm_gain(self) -> np.ndarray:
        # Gemma's GGUF norm weights already hold 1 + w: no offset here.
        tensor = self._tensor("output_norm.weight")
        return _dequantized(tensor.data, tensor.tensor_type).reshape(-1)

    def unembedding(self) -> np.ndarray:
        tensor = self._tensor("output.weight", self._tensors.get("token_embd.weight"))
        return _dequantized(tensor.data, tensor.tensor_type)

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
