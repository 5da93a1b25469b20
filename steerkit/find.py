"""Which neurons stand for a word: score every neuron's views on the word's tokens.

A word's probability in a view is the summed probability of its single-token
spellings (see :func:`steerkit.vocab.word_variants`).  The atlas supplies each
view's log-sum-exp, so only the few token columns of the LM head are needed:
one thin GEMM per layer and side instead of the full vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from steerkit.atlas import Atlas
from steerkit.decode import SIDES, VIEWS, rms_normalize
from steerkit.errors import SteerkitError
from steerkit.vocab import word_variants
from steerkit.weights import WeightReader

__all__ = ["NeuronHit", "score_tokens", "find_word"]


@dataclass(frozen=True)
class NeuronHit:
    """A neuron that ranks a word highly, in its best view."""

    layer: int
    neuron: int
    view: str  # e.g. "read-"
    prob: float  # summed probability of the word's tokens in this view
    rank: int  # rank of the word's best token in this view's top-k (0 = top), -1 if outside


def score_tokens(reader: WeightReader, atlas: Atlas, token_ids: list[int]) -> np.ndarray:
    """Summed probability of ``token_ids`` for every neuron and view: ``[layers, d_ff, 4]``."""
    info = reader.info
    if atlas.meta.get("fingerprint") != reader.fingerprint():
        raise SteerkitError(f"atlas was made for {atlas.meta.get('model')}, not for {info.label}")
    gain = torch.from_numpy(reader.norm_gain())
    columns = torch.from_numpy(reader.unembedding()[token_ids]).T.contiguous()  # [d, n_tokens]
    lse = torch.from_numpy(atlas.lse)
    scores = np.empty((info.n_layers, info.d_ff, len(VIEWS)), dtype=np.float32)
    for layer in range(info.n_layers):
        for side_index, side in enumerate(SIDES):
            vectors = reader.up_rows(layer) if side == "read" else reader.down_cols(layer)
            logits = rms_normalize(torch.from_numpy(vectors), gain, info.rms_eps) @ columns
            for sign_index, sign in enumerate((1, -1)):
                view = 2 * side_index + sign_index
                logp = sign * logits - lse[layer, :, view, None]
                scores[layer, :, view] = logp.exp().sum(dim=1).numpy()
    return scores


def find_word(reader: WeightReader, atlas: Atlas, word: str, limit: int = 20) -> tuple[list[tuple[int, str]], list[NeuronHit]]:
    """The neuron views that give ``word`` the highest probability, best first.

    Returns the word's token variants and up to ``limit`` hits.

    >>> variants, hits = find_word(reader, atlas, "dog")     # doctest: +SKIP
    >>> (hits[0].layer, hits[0].neuron)
    (29, 808)
    """
    variants = word_variants(word, atlas.vocab)
    ids = [i for i, _ in variants]
    scores = score_tokens(reader, atlas, ids)
    # One hit per neuron, in its best view.
    best_view = scores.argmax(axis=2)
    best = np.take_along_axis(scores, best_view[..., None], axis=2)[..., 0]
    hits = []
    for index in np.argsort(best.reshape(-1))[::-1][:limit]:
        layer, neuron = np.unravel_index(index, best.shape)
        view = best_view[layer, neuron]
        in_top = np.nonzero(np.isin(atlas.token_ids[layer, neuron, view], ids))[0]
        hits.append(
            NeuronHit(int(layer), int(neuron), VIEWS[view].label, float(scores[layer, neuron, view]),
                      int(in_top[0]) if in_top.size else -1)
        )
    return variants, hits
