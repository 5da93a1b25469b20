"""The reader interface shared by the GGUF and Hugging Face weight readers."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from steerkit.architectures import ArchSpec
from steerkit.errors import SteerkitError, UnsupportedEdit

__all__ = ["ModelInfo", "WeightReader", "MAX_DIMENSION"]

#: Bound on layer counts, widths and vocabulary sizes read from a model's metadata (real models are far below).
MAX_DIMENSION = 1 << 20


@dataclass(frozen=True)
class ModelInfo:
    """Shapes and conventions of one model, independent of its file format."""

    arch: ArchSpec
    n_layers: int
    d_model: int
    d_ff: int  # neurons per MLP (per expert in a mixture of experts)
    vocab_size: int
    rms_eps: float
    label: str  # how to name the model in messages
    n_experts: int = 1  # experts per layer (1: a dense MLP)

    @property
    def neurons(self) -> int:
        """Neurons per layer, every expert's: flat index ``expert * d_ff + index``."""
        return self.n_experts * self.d_ff


class WeightReader(ABC):
    """Per-layer access to the weights neuron decoding needs (float32 numpy)."""

    info: ModelInfo

    @abstractmethod
    def up_rows(self, layer: int) -> np.ndarray:
        """``up_proj`` weight ``[neurons, d_model]``: row j is what neuron j reads (experts stacked, in order)."""

    @abstractmethod
    def gate_rows(self, layer: int) -> np.ndarray:
        """``gate_proj`` weight ``[neurons, d_model]``."""

    @abstractmethod
    def down_cols(self, layer: int) -> np.ndarray:
        """``down_proj`` weight transposed, ``[neurons, d_model]``: row j is what neuron j writes."""

    def side_vectors(self, layer: int, side: str) -> np.ndarray:
        """One side's neuron vectors, ``[neurons, d_model]``: ``"read"`` is :meth:`up_rows`, ``"write"`` :meth:`down_cols`."""
        return self.up_rows(layer) if side == "read" else self.down_cols(layer)

    def down_columns(self, layer: int, neurons: np.ndarray) -> np.ndarray:
        """``W_down[:, neurons]`` transposed, ``[n, d_model]`` (readers may avoid reading the whole matrix)."""
        return self.down_cols(layer)[np.asarray(neurons)]

    def up_rows_of(self, layer: int, neurons: np.ndarray) -> np.ndarray:
        """``W_up[neurons]``, ``[n, d_model]`` (readers may avoid reading the whole matrix)."""
        return self.up_rows(layer)[np.asarray(neurons)]

    def down_offset(self, layer: int, neurons: np.ndarray, amounts: np.ndarray) -> np.ndarray:
        """``sum_j amounts[j] * W_down[:, neurons[j]]``, ``[d_model]`` float32: what constant activations add.

        The bias of a baked clamp/add, and the direction of a control vector.  Refused for expert neurons,
        which write only for the tokens routed to their expert: no constant vector stands for them.
        """
        if self.info.n_experts > 1:
            raise UnsupportedEdit(f"{self.info.label}: clamp/add edits of expert neurons cannot become a constant "
                                  "vector (bias or control vector): an expert writes only for the tokens routed to it; "
                                  "use the transformers hooks, or scale/ablate edits", "weights")
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
                            self.vocab_digest(), info.n_experts)

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
        """Raise a one-line error unless neuron ``layer:neuron`` exists (``neuron``: the flat index for experts)."""
        self.check_layer(layer)
        if not 0 <= neuron < self.info.neurons:
            raise SteerkitError(
                f"{self.info.label}: neuron {layer}:{neuron} out of range (layers have neurons 0..{self.info.neurons - 1})"
            )
