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
import torch

from steerkit.atlas import Atlas
from steerkit.concept import Concept
from steerkit.find import concept_probs, score_tokens, shortlist
from steerkit.weights import WeightReader

__all__ = ["Candidate", "rank_candidates", "SHORTLISTED"]

SHORTLISTED = 1024  # write sides decoded exactly when there is no atlas to rank from


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


def rank_candidates(reader: WeightReader, atlas: Atlas | None, concept: Concept, limit: int = 16,
                    shortlisted: int = SHORTLISTED) -> list[Candidate]:
    """The ``limit`` neurons with the best :attr:`Candidate.score` for the concept, best first.

    Without ``atlas`` only what the ranking needs is computed (as :func:`steerkit.find.quick_find` does): the
    ``shortlisted`` write sides most likely to promote the concept are estimated from vocabulary samples, then
    their neurons are decoded exactly on both sides; the scores are the atlas's, for those neurons.
    """
    if atlas is None:
        return _rank_shortlist(reader, concept, limit, shortlisted)
    scores = score_tokens(reader, atlas, list(concept.token_ids))  # [layers, neurons, views]: read+, read-, write+, write-
    layers, neurons = np.indices(scores.shape[:2])
    write_top = atlas.token_ids[:, :, 2:, :6]
    return _ranked(layers.reshape(-1), neurons.reshape(-1), scores.reshape(-1, 4),
                   atlas.probs[:, :, 2:, 0].reshape(-1, 2), write_top.reshape(-1, 2, write_top.shape[-1]),
                   atlas.vocab, limit)


def _rank_shortlist(reader: WeightReader, concept: Concept, limit: int, shortlisted: int) -> list[Candidate]:
    ids = list(concept.token_ids)
    unembedding = reader.unembedding()
    keys, write_vectors = shortlist(reader, unembedding, ids, shortlisted, sides=("write",))
    layers, neurons = keys[:, 0], keys[:, 2]
    read_vectors = torch.empty_like(write_vectors)
    for layer in np.unique(layers):  # read sides of the shortlisted neurons: only their rows of each up matrix
        rows = np.nonzero(layers == layer)[0]
        read_vectors[rows] = torch.from_numpy(reader.up_rows_of(int(layer), neurons[rows]))
    probs, top_ids, top_probs = concept_probs(reader, unembedding, torch.cat([read_vectors, write_vectors]), ids)
    read, write = probs[:len(keys)], probs[len(keys):]
    return _ranked(layers, neurons, torch.cat([read, write], 1).numpy(), top_probs[len(keys):, :, 0].numpy(),
                   top_ids[len(keys):, :, :6].numpy(), reader.tokens(), limit)


def _ranked(layers: np.ndarray, neurons: np.ndarray, scores: np.ndarray, write_top_prob: np.ndarray,
            write_top_ids: np.ndarray, vocab: list[str], limit: int) -> list[Candidate]:
    """Candidates from per-neuron arrays: ``scores [n, 4]`` (the concept's probability in read+, read-, write+,
    write-), the top token's probability ``[n, 2]`` and top ids ``[n, 2, 6]`` of write+ and write-."""
    write, read = scores[:, 2:], scores[:, :2]
    sign_index = np.where(write[:, 0] >= write[:, 1], 0, 1)
    write_best = write.max(axis=-1)
    top_prob = np.take_along_axis(write_top_prob, sign_index[:, None], axis=1)[:, 0]
    specificity = np.minimum(1.0, write_best / np.maximum(top_prob, 1e-12))
    combined = write_best * specificity * (1.0 + read.max(axis=-1))
    order = np.argsort(combined)[::-1]
    # llama.cpp's control vectors (how prompt-position edits run there) start at layer 1: layer 0 is never chosen.
    candidates = []
    for row in order[layers[order] != 0][:limit]:
        read_index = int(read[row].argmax())
        candidates.append(Candidate(
            int(layers[row]), int(neurons[row]), 1 - 2 * int(sign_index[row]), float(write_best[row]),
            float(specificity[row]), float(read[row, read_index]), ("read+", "read-")[read_index],
            tuple(vocab[t] for t in write_top_ids[row, sign_index[row]]),
        ))
    return candidates
