"""The concept's output direction: what raises its tokens' logits over the average token's, as neuron adds.

The logit of token ``t`` is ``U[t] . (g * x / rms(x))`` (LM head ``U``, final
norm gain ``g``).  Adding ``d`` to the residual stream ``x`` raises it most,
per unit of ``|d|``, along ``g * U[t]``.  But the rows of ``U`` share a large
common part (on SmolLM2-135M the mean row has two thirds of a row's norm),
and pushing along it raises the anomalous large-norm tokens most ("strugg",
"setattr"): answers fill with them.  So the direction is built from
``U[t] - mean(U)``, which raises ``t`` against the average token instead:
the mean of the concept's word-start tokens' centred rows, each at unit
length, times ``g``, at unit length.

Added a few layers before the end (the later layers still turn it into
text) on the *answer's* positions until the answer names the concept
(``positions: generated``, ``until``), it brings the word in where it fits
and then lets the model write freely: the release is what keeps the push
from becoming a loop ("elephant elephant elephant ...", measured in
docs/method.md).  Like any vector added after a layer, it is exactly an
``add`` on that layer's neurons (:func:`steerkit.concept_vector.neuron_adds`),
so the result is an ordinary profile that both runtimes run.
"""

from __future__ import annotations

import numpy as np

from steerkit.concept import Concept
from steerkit.vocab import space_marker

__all__ = ["output_direction", "output_layers"]

_DEPTHS = (0.83, 0.9)  # of the layers: on SmolLM2 (30 layers) 24 and 26, the best of 20-29 on ten words


def output_layers(n_layers: int) -> list[int]:
    """The layers whose output the direction is tried after."""
    return sorted({min(n_layers - 1, max(1, round(depth * (n_layers - 1)))) for depth in _DEPTHS})


def output_direction(reader, concept: Concept) -> np.ndarray:
    """The unit direction ``[d_model]`` that raises the concept's word-start tokens over the average token
    (see the module doc); all of the concept's tokens where none starts a word."""
    vocab = reader.tokens()
    marker = space_marker(vocab)
    ids = [i for i, token in zip(concept.token_ids, concept.tokens) if token.startswith(marker)] \
        or list(concept.token_ids)
    unembedding = reader.unembedding()
    mean = unembedding.mean(axis=0, dtype=np.float64)
    rows = unembedding[ids].astype(np.float64) - mean
    rows /= np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
    direction = rows.mean(axis=0) * reader.norm_gain().astype(np.float64)
    return direction / max(float(np.linalg.norm(direction)), 1e-12)
