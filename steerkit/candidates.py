"""Rank neurons for a concept from the atlas: what they read, what they write, and with which sign.

A neuron writes ``h * W_down[:, j]`` into the residual stream, so the sign
of ``h`` decides whether it promotes or demotes what its write side decodes
to.  For each neuron the *write* view (``write+`` or ``write-``) that gives
the concept the most probability fixes the sign of the edit: driving ``h``
towards that sign promotes the concept, the opposite sign suppresses it.
The *read* side (``up_proj`` row, either sign) says whether the neuron also
detects the concept; it raises the score (up to doubling it) but never sets
the sign, and cannot make up for a write side that does not promote it.

Specificity: a neuron whose write view puts another token first (the "dog"
neuron writes ``dog`` first and ``Cats`` fifth) is discounted by the ratio of
the concept's probability to that top token's, so a "cat" search does not
pick the dog neuron.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from steerkit.atlas import Atlas
from steerkit.concept import Concept
from steerkit.find import score_tokens
from steerkit.weights import WeightReader

__all__ = ["Candidate", "rank_candidates"]



@dataclass(frozen=True)
class Candidate:
    """A neuron that writes the concept: ``sign`` is the activation sign that promotes it."""

    layer: int
    neuron: int
    sign: int  # +1 if write+ decodes the concept, -1 if write- does
    write_prob: float  # concept probability in that write view
    specificity: float  # min(1, write_prob / probability of the view's top token)
    read_prob: float  # concept probability in the better read view
    read_view: str  # "read+" or "read-"
    tokens: tuple[str, ...]  # top tokens of the write view

    @property
    def score(self) -> float:
        """Ranking score: the write-side probability, discounted by specificity, raised by the read side."""
        return self.write_prob * self.specificity * (1.0 + self.read_prob)


def rank_candidates(reader: WeightReader, atlas: Atlas, concept: Concept, limit: int = 16) -> list[Candidate]:
    """The ``limit`` neurons with the best :attr:`Candidate.score` for the concept, best first."""
    scores = score_tokens(reader, atlas, list(concept.token_ids))  # [layers, d_ff, views]: read+, read-, write+, write-
    write, read = scores[..., 2:], scores[..., :2]
    sign = np.where(write[..., 0] >= write[..., 1], 1, -1)
    write_view = np.where(sign > 0, 2, 3)
    write_best = write.max(axis=-1)
    top_prob = np.take_along_axis(atlas.probs[:, :, :, 0], write_view[..., None], axis=2)[..., 0]
    specificity = np.minimum(1.0, write_best / np.maximum(top_prob, 1e-12))
    combined = write_best * specificity * (1.0 + read.max(axis=-1))
    # llama.cpp's control vectors (how prompt-position edits run there) start at layer 1.
    combined[0] = -1.0
    candidates = []
    for flat in np.argsort(combined.reshape(-1))[::-1][:limit]:
        layer, neuron = (int(v) for v in np.unravel_index(flat, combined.shape))
        read_index = int(read[layer, neuron].argmax())
        top_tokens = atlas.token_ids[layer, neuron, write_view[layer, neuron]][:6]
        candidates.append(Candidate(
            layer, neuron, int(sign[layer, neuron]), float(write_best[layer, neuron]),
            float(specificity[layer, neuron]), float(read[layer, neuron, read_index]), ("read+", "read-")[read_index],
            tuple(atlas.vocab[t] for t in top_tokens),
        ))
    return candidates
