"""Which neurons stand for a word: score every neuron's views on the word's tokens.

A word's probability in a view is the summed probability of its single-token
spellings (see :func:`steerkit.vocab.word_variants`).  The atlas supplies each
view's log-sum-exp, so only the few token columns of the LM head are needed:
one thin GEMM per layer and side instead of the full vocabulary.

Without an atlas (a big model whose atlas is not built yet), :func:`quick_find`
does only the work the question needs: every view's log-sum-exp is
*estimated* from a random sample of the vocabulary (the word's own tokens
counted exactly), the views are ranked by that estimate, and only the best
:data:`DECODE` neurons are decoded over the whole vocabulary, which gives
their exact probabilities and final order.  On SmolLM2-135M it lists the same
neurons as the atlas for the words measured in docs/measurements.md, at a
few per cent of the atlas's arithmetic.
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

__all__ = ["NeuronHit", "score_tokens", "find_word", "quick_find", "SAMPLE", "DECODE"]

SAMPLE = 4096  # vocabulary tokens sampled to estimate each view's log-sum-exp
DECODE = 512  # neurons decoded over the whole vocabulary after the estimate


@dataclass(frozen=True)
class NeuronHit:
    """A neuron that ranks a word highly, in its best view."""

    layer: int
    neuron: int
    view: str  # e.g. "read-"
    prob: float  # summed probability of the word's tokens in this view
    rank: int  # rank of the word's best token in this view's top-k (0 = top), -1 if outside
    top: tuple[int, ...] = ()  # the view's top token ids, best first


def score_tokens(reader: WeightReader, atlas: Atlas, token_ids: list[int]) -> np.ndarray:
    """Summed probability of ``token_ids`` for every neuron and view: ``[layers, neurons, 4]``."""
    info = reader.info
    if atlas.meta.get("fingerprint") != reader.fingerprint():
        raise SteerkitError(f"atlas was made for {atlas.meta.get('model')}, not for {info.label}")
    gain = torch.from_numpy(reader.norm_gain())
    columns = torch.from_numpy(reader.unembedding()[token_ids]).T.contiguous()  # [d, n_tokens]
    lse = torch.from_numpy(atlas.lse)
    scores = np.empty((info.n_layers, info.neurons, len(VIEWS)), dtype=np.float32)
    for layer in range(info.n_layers):
        for side_index, side in enumerate(SIDES):
            vectors = reader.side_vectors(layer, side)
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
        top = atlas.token_ids[layer, neuron, view]
        in_top = np.nonzero(np.isin(top, ids))[0]
        hits.append(
            NeuronHit(int(layer), int(neuron), VIEWS[view].label, float(scores[layer, neuron, view]),
                      int(in_top[0]) if in_top.size else -1, tuple(int(t) for t in top))
        )
    return variants, hits


def quick_find(reader: WeightReader, word: str, limit: int = 20, sample: int = SAMPLE, decode: int = DECODE,
               top_k: int = 10, seed: int = 0) -> tuple[list[tuple[int, str]], list[NeuronHit]]:
    """:func:`find_word` without an atlas (see the module doc): estimate, then decode only the best ``decode``."""
    from steerkit.full_decode import decode_side

    info = reader.info
    variants = word_variants(word, reader.tokens())
    ids = [i for i, _ in variants]
    rest = np.setdiff1d(np.arange(info.vocab_size), ids)
    sampled = np.random.default_rng(seed).choice(rest, size=min(sample, rest.size), replace=False)
    gain = torch.from_numpy(reader.norm_gain())
    unembedding = reader.unembedding()
    word_columns = torch.from_numpy(unembedding[ids]).T.contiguous()
    sample_columns = torch.from_numpy(unembedding[sampled]).T.contiguous()
    scale = float(np.log(rest.size / sampled.size))  # the sample stands for the whole rest of the vocabulary
    estimate = np.empty((info.n_layers, info.neurons, len(VIEWS)), dtype=np.float32)
    for layer in range(info.n_layers):
        for side_index, side in enumerate(SIDES):
            normed = rms_normalize(torch.from_numpy(reader.side_vectors(layer, side)), gain, info.rms_eps)
            word_logits, sample_logits = normed @ word_columns, normed @ sample_columns
            for sign_index, sign in enumerate((1, -1)):
                lse = torch.logaddexp(torch.logsumexp(sign * word_logits, 1),
                                      torch.logsumexp(sign * sample_logits, 1) + scale)
                estimate[layer, :, 2 * side_index + sign_index] = (sign * word_logits - lse[:, None]).exp().sum(1)
    best = estimate.max(axis=2).reshape(-1)
    chosen = np.argsort(best)[::-1][:decode]
    unembedding_t = torch.from_numpy(unembedding).T.contiguous()
    hits = []
    for layer in sorted({int(i) // info.neurons for i in chosen}):
        neurons = np.sort([int(i) % info.neurons for i in chosen if int(i) // info.neurons == layer])
        for side_index, side in enumerate(SIDES):
            vectors = torch.from_numpy(reader.side_vectors(layer, side)[neurons])
            top_ids, _, lse = decode_side(vectors, gain, unembedding_t, info.rms_eps, top_k)
            logits = rms_normalize(vectors, gain, info.rms_eps) @ word_columns
            for sign_index, sign in enumerate((1, -1)):
                probs = (sign * logits - lse[:, sign_index, None]).exp().sum(1)
                for row, neuron in enumerate(neurons):
                    top = tuple(int(t) for t in top_ids[row, sign_index])
                    in_top = [k for k, t in enumerate(top) if t in ids]
                    hits.append(NeuronHit(layer, int(neuron), VIEWS[2 * side_index + sign_index].label,
                                          float(probs[row]), in_top[0] if in_top else -1, top))
    best_per_neuron: dict[tuple[int, int], NeuronHit] = {}
    for hit in hits:
        key = (hit.layer, hit.neuron)
        if key not in best_per_neuron or hit.prob > best_per_neuron[key].prob:
            best_per_neuron[key] = hit
    return variants, sorted(best_per_neuron.values(), key=lambda h: -h.prob)[:limit]
