"""The reader interface shared by the GGUF and Hugging Face weight readers."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from steerkit.architectures import ArchSpec
from steerkit.errors import SteerkitError

__all__ = ["ModelInfo", "WeightReader", "MAX_DIMENSION"]

#: Bound on layer counts, widths and vocabulary sizes read from a model's metadata (real models are far below).
MAX_DIMENSION = 1 << 20


@dataclass(frozen=True)
class ModelInfo:
    """Shapes and conventions of one model, independent of its file format."""

    arch: ArchSpec
    n_layers: int
    d_model: int
    d_ff: int
    vocab_size: int
    rms_eps: float
    label: str  # how to name the model in messages


class WeightReader(ABC):
    """Per-layer access to the weights neuron decoding needs (float32 numpy)."""

    info: ModelInfo

    @abstractmethod
    def up_rows(self, layer: int) -> np.ndarray:
        """``up_proj`` weight ``[d_ff, d_model]``: row j is what neuron j reads."""

    @abstractmethod
    def gate_rows(self, layer: int) -> np.ndarray:
        """``gate_proj`` weight ``[d_ff, d_model]``."""

    @abstractmethod
    def down_cols(self, layer: int) -> np.ndarray:
        """``down_proj`` weight transposed, ``[d_ff, d_model]``: row j is what neuron j writes."""

    def side_vectors(self, layer: int, side: str) -> np.ndarray:
        """One side's neuron vectors, ``[d_ff, d_model]``: ``"read"`` is :meth:`up_rows`, ``"write"`` :meth:`down_cols`."""
        return self.up_rows(layer) if side == "read" else self.down_cols(layer)

    def down_columns(self, layer: int, neurons: np.ndarray) -> np.ndarray:
        """``W_down[:, neurons]`` transposed, ``[n, d_model]`` (readers may avoid reading the whole matrix)."""
        return self.down_cols(layer)[np.asarray(neurons)]

    def down_offset(self, layer: int, neurons: np.ndarray, amounts: np.ndarray) -> np.ndarray:
        """``sum_j amounts[j] * W_down[:, neurons[j]]``, ``[d_model]`` float32: what constant activations add.

        The bias of a baked clamp/add, and the direction of a control vector.
        """
        columns = self.down_columns(layer, neurons)
        return (np.asarray(amounts, dtype=np.float64)[:, None] * columns).sum(axis=0).astype(np.float32)

    @abstractmethod
    def norm_gain(self) -> np.ndarray:
        """The effective final RMSNorm gain ``[d_model]`` (Gemma's +1 applied)."""

    @abstractmethod
    def unembedding(self) -> np.ndarray:
        """The LM head ``[vocab, d_model]`` (the tied embedding where there is no separate head)."""

    @abstractmethod
    def tokens(self) -> list[str]:
        """The vocabulary's token strings as stored (``Ġ``/``▁`` space markers kept)."""

    @abstractmethod
    def fingerprint(self) -> str:
        """sha256 of the model's files: the key of everything cached about it."""

    def binding(self):
        """The :class:`steerkit.profile.ModelBinding` a profile must match to apply to this model."""
        from steerkit.profile import ModelBinding

        info = self.info
        return ModelBinding(info.arch.name, info.n_layers, info.d_model, info.d_ff, info.vocab_size,
                            self.vocab_digest())

    def vocab_digest(self) -> str:
        """:func:`steerkit.profile.vocab_sha256` of this model's tokens (readers may cache it)."""
        from steerkit.profile import vocab_sha256

        return vocab_sha256(self.tokens())

    def check_layer(self, layer: int) -> None:
        """Raise a one-line error unless ``layer`` exists."""
        if not 0 <= layer < self.info.n_layers:
            raise SteerkitError(
                f"{self.info.label}: layer {layer} out of range (model has layers 0..{self.info.n_layers - 1})"
            )

    def check_neuron(self, layer: int, neuron: int) -> None:
        """Raise a one-line error unless neuron ``layer:neuron`` exists."""
        self.check_layer(layer)
        if not 0 <= neuron < self.info.d_ff:
            raise SteerkitError(
                f"{self.info.label}: neuron {layer}:{neuron} out of range (layers have neurons 0..{self.info.d_ff - 1})"
            )
