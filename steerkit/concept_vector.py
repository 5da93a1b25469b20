"""The model's own representation of a concept, as a residual-stream direction written as neuron adds.

Where no single neuron writes a concept (this model has none for "elephant",
"doctor" or "chess": the best one gives the word ~1 % of its write view),
discovery falls back on a direction read from the model itself: the mean
residual stream over short sentences that name the concept ("I love
elephants."), minus the same sentences with "something" in its place, each
read as the model's own answer to a calibration prompt.  This is ActAdd's
contrast (Turner et al., 2023) on in-context sentences, averaged over
templates.  Added on the prompt positions after a middle layer, at a
fraction of the residual stream's norm there, it moves the answer towards
the concept the way a mention of it in the prompt would.

A vector added after layer L is exactly an ``add`` on that layer's neurons
(:func:`neuron_adds`), so the result is an ordinary profile.
"""

from __future__ import annotations

import numpy as np

from steerkit.errors import SteerkitError

__all__ = ["SENTENCES", "vector_layers", "neuron_adds", "concept_directions"]

#: Sentences naming the concept; the contrast puts "something" in its place.
SENTENCES = ("I love {}.", "Let's talk about {}.", "This is about {}.", "{} is what I think about.")
_DEPTHS = (0.27, 0.55)  # of the layers: on SmolLM2 (30 layers) 8 and 16, the best of 4, 8, 12, 16 on four words


def vector_layers(n_layers: int) -> list[int]:
    """The layers whose output a concept vector is tried after."""
    return sorted({max(1, round(depth * (n_layers - 1))) for depth in _DEPTHS})


def neuron_adds(reader, layer: int, vector: np.ndarray) -> np.ndarray:
    """The minimum-norm neuron activations ``a`` with ``W_down a = vector`` on ``layer`` (``[d_ff]``): ``W_down``
    (``d_model x d_ff``, ``d_ff > d_model``) has full row rank, so adding ``a`` adds exactly ``vector``.

    Refused for a mixture of experts: an expert's neurons write only for the tokens routed to it, scaled
    by the router, so no set of neuron adds is a constant vector in the residual stream."""
    if reader.info.n_experts > 1:
        raise SteerkitError(f"{reader.info.label}: residual-stream directions (discover --positions until, diffmean "
                            "baselines) cannot be carried by expert neurons, which write only when their expert is "
                            "routed to; use neuron edits (discover --positions prompt or all, --suppress)")
    down = reader.down_cols(layer).astype(np.float64)  # [d_ff, d_model]: row j is what neuron j writes
    return np.linalg.lstsq(down.T, np.asarray(vector, dtype=np.float64), rcond=None)[0]


def concept_directions(word: str, backend, reader, layers: list[int], prompts: list[str]) -> dict[int, np.ndarray]:
    """For each of ``layers``, the neuron adds of the unit concept direction after it (see the module doc),
    measured with ``backend`` (one that reads the residual stream) as answers to ``prompts``."""
    chosen = [prompts[k % len(prompts)] for k in range(len(SENTENCES))]
    about = backend.answer_states(chosen, [s.format(word) for s in SENTENCES], layers)
    plain = backend.answer_states(chosen, [s.format("something") for s in SENTENCES], layers)
    directions = {}
    for layer, vector in zip(layers, (about - plain).astype(np.float64)):
        directions[layer] = neuron_adds(reader, layer, vector / max(np.linalg.norm(vector), 1e-12))
    return directions
