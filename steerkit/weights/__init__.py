"""Read the weights that neuron decoding needs, without building a torch model.

:func:`open_weights` gives a :class:`WeightReader` for any model source.
Readers hand out one layer at a time as float32 numpy arrays, so memory
stays bounded by a layer, not the model.
"""

from __future__ import annotations

from steerkit.sources import ModelSource, resolve_model
from steerkit.weights.base import ModelInfo, WeightReader

__all__ = ["ModelInfo", "WeightReader", "open_weights"]


def open_weights(model: str | ModelSource | None = None) -> WeightReader:
    """Open a model's weights for decoding.

    ``model`` is a model name (see :func:`steerkit.sources.resolve_model`),
    an already resolved source, or ``None`` for the default model.

    >>> reader = open_weights("smollm2-135m")     # doctest: +SKIP
    >>> reader.up_rows(29).shape
    (1536, 576)
    """
    source = model if isinstance(model, ModelSource) else resolve_model(model)
    if source.kind == "gguf":
        from steerkit.weights.gguf_reader import GGUFWeights

        return GGUFWeights(source.path, source.name)
    from steerkit.weights.hf_reader import HFWeights

    return HFWeights(source.path, source.name)
