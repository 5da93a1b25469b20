"""Which neurons stand for a word: score every neuron's views on the word's tokens.

A word's probability in a view is the summed probability of its single-token
spellings (see :func:`steerkit.vocab.word_variants`).  The atlas supplies each
view's log-sum-exp, so only the few token columns of the LM head are needed:
one thin GEMM per layer and side instead of the full vocabulary.

Without an atlas (a big model whose atlas is not built yet), :func:`quick_find`
does only the work the question needs.  Each view's log-sum-exp is
*estimated* from a random sample of the vocabulary (the word's own tokens
counted exactly): first coarsely, from :data:`SCREEN` tokens, over every neuron
side as its matrix is read; the best :data:`KEEP` share of sides (kept with
their vectors, so no matrix is read twice) again from :data:`SAMPLE` tokens;
and only the best :data:`DECODE` of those are decoded over the whole
vocabulary, which gives their exact probabilities and final order.  On
SmolLM2-135M it lists the same neurons as the atlas for the words measured in
docs/measurements.md, at a few per cent of the atlas's arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from steerkit.atlas import Atlas, read_matrices
from steerkit.decode import SIDES, VIEWS, rms_normalize
from steerkit.errors import SteerkitError
from steerkit.vocab import word_variants
from steerkit.weights import WeightReader

__all__ = ["NeuronHit", "score_tokens", "find_word", "quick_find", "shortlist", "concept_probs", "sampled_estimate",
           "SCREEN", "KEEP", "SAMPLE", "DECODE"]

SCREEN = 512  # vocabulary tokens sampled for the coarse pass over every neuron side
KEEP = 0.05  # share of all neuron sides the coarse pass keeps for the finer estimate
SAMPLE = 4096  # vocabulary tokens sampled for the finer estimate
DECODE = 1024  # neuron sides decoded over the whole vocabulary after it


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


def sampled_estimate(vectors: torch.Tensor, word_columns: torch.Tensor, sample_columns: torch.Tensor,
                     scale: float, eps: float) -> torch.Tensor:
    """The word's summed probability in both signs of each row of raw ``vectors``, ``[n, 2]``, with the
    log-sum-exp estimated from the sample (its terms times ``exp(scale)``, standing for the rest of the
    vocabulary) and the word's own tokens.

    The final norm is folded in: the columns are the head's times the norm's gain, and each row's logits are
    multiplied by its RMS scale (``normed @ C == rsqrt(mean(v^2) + eps) * (v @ (gain * C))``), so no
    normalized copy of an 8B matrix (235 MB) is written per screened matrix.
    """
    vectors = vectors.float()
    row_scale = torch.rsqrt(torch.linalg.vector_norm(vectors, dim=1, keepdim=True).square_() / vectors.shape[1] + eps)
    word_logits, sample_logits = (vectors @ word_columns).mul_(row_scale), (vectors @ sample_columns).mul_(row_scale)
    out = torch.empty((vectors.shape[0], 2))
    for sign_index, sign in enumerate((1, -1)):
        lse = torch.logaddexp(torch.logsumexp(sign * word_logits, 1), torch.logsumexp(sign * sample_logits, 1) + scale)
        out[:, sign_index] = (sign * word_logits - lse[:, None]).exp().sum(1)
    return out


class _Pool:
    """The ``size`` best-scoring neuron sides seen so far, with their vectors, in fixed slots.

    A newcomer takes the slot of a side it pushes out, so a matrix costs a copy of only the rows that enter
    (concatenating the pool with each matrix and selecting again copied ~1 GB per matrix for an 8B model:
    a third of a first ``find``).
    """

    def __init__(self, size: int, d_model: int) -> None:
        self.scores = torch.full((size,), -torch.inf)
        self.keys = np.zeros((size, 3), dtype=np.int64)
        self.vectors = torch.empty((size, d_model))
        self.occupied = torch.zeros(size, dtype=torch.bool)

    def offer(self, scores: torch.Tensor, vectors: torch.Tensor, layer: int, side_index: int) -> None:
        """Take the rows of one matrix (``scores [n]``, ``vectors [n, d]``) that belong among the best."""
        size = self.scores.numel()
        if bool(self.occupied.all()):
            entering = torch.nonzero(scores > self.scores.min()).flatten()
        else:
            entering = torch.arange(scores.numel())
        if entering.numel() > size:
            entering = entering[torch.topk(scores[entering], size).indices]
        both = torch.cat([self.scores, scores[entering]])
        kept = torch.zeros(both.numel(), dtype=torch.bool)
        kept[torch.topk(both, size).indices] = True
        newcomers = entering[kept[size:]]
        slots = torch.nonzero(~kept[:size]).flatten()  # as many as newcomers: exactly `size` are kept
        self.scores[slots] = scores[newcomers]
        self.vectors[slots] = vectors[newcomers]
        self.keys[slots.numpy()] = np.stack([np.full(newcomers.numel(), layer), np.full(newcomers.numel(), side_index),
                                             newcomers.numpy()], 1)
        self.occupied[slots] = True

    def contents(self) -> tuple[np.ndarray, torch.Tensor]:
        """The keys and vectors of the sides in the pool (in slot order)."""
        if bool(self.occupied.all()):
            return self.keys, self.vectors
        slots = torch.nonzero(self.occupied).flatten()
        return self.keys[slots.numpy()], self.vectors[slots]


def shortlist(reader: WeightReader, unembedding: np.ndarray, token_ids: list[int], count: int,
              sides: tuple[str, ...] = SIDES,
              sample: int = SAMPLE, screen: int = SCREEN, keep: float = KEEP, seed: int = 0, progress: bool = False,
              ) -> tuple[np.ndarray, torch.Tensor]:
    """The ``count`` neuron sides most likely to give ``token_ids`` the most probability, without an atlas.

    Every side is screened on ``screen`` sampled tokens as its matrix is read; the best ``keep`` share is kept
    with its vectors (so no matrix is read twice) and estimated again on ``sample`` tokens (``progress``: a bar
    over the matrices, the part that grows with the model: about 1 s each for an 8B one).  ``unembedding`` is
    ``reader.unembedding()``, read once by the caller (a GGUF dequantizes it on every call).  Returns keys
    ``[count, 3]`` (layer, index of the side in :data:`SIDES`, neuron) and the sides' raw vectors, best first.
    """
    info = reader.info
    rest = np.setdiff1d(np.arange(info.vocab_size), token_ids)
    sampled = np.random.default_rng(seed).choice(rest, size=min(sample, rest.size), replace=False)
    gain = torch.from_numpy(reader.norm_gain())

    def columns(tokens) -> torch.Tensor:  # the head's columns for these tokens, times the final norm's gain
        return (torch.from_numpy(unembedding[tokens]).T * gain[:, None]).contiguous()

    screened = sampled[:screen]  # a random part of a random sample: itself uniform
    word_columns, screen_columns, sample_columns = columns(token_ids), columns(screened), columns(sampled)
    screen_scale, sample_scale = float(np.log(rest.size / screened.size)), float(np.log(rest.size / sampled.size))
    pool_size = max(count, int(np.ceil(keep * info.n_layers * len(sides) * info.neurons)))
    pool = _Pool(pool_size, info.d_model)
    # leave=False: on an error the bar is cleared, so the one-line error message is the last thing shown.
    with tqdm(total=info.n_layers * len(sides), desc=f"screening {info.label}", unit="matrix",
              disable=not progress, leave=False) as steps:
        for layer, side_index, vectors in read_matrices(reader, overlap=True, sides=sides):
            vectors = torch.from_numpy(vectors)
            scores = sampled_estimate(vectors, word_columns, screen_columns, screen_scale, info.rms_eps).amax(1)
            pool.offer(scores, vectors, layer, side_index)
            steps.update()
    pool_keys, pool_vectors = pool.contents()
    refined = sampled_estimate(pool_vectors, word_columns, sample_columns, sample_scale, info.rms_eps).amax(1)
    chosen = torch.topk(refined, min(count, refined.numel())).indices
    return pool_keys[chosen.numpy()], pool_vectors[chosen]


def concept_probs(reader: WeightReader, unembedding: np.ndarray, vectors: torch.Tensor, token_ids: list[int],
                  top_k: int = 10) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decode ``vectors`` over the whole vocabulary (``unembedding``: ``reader.unembedding()``), both signs: the
    summed probability of ``token_ids`` ``[n, 2]``, and the top-k ids and probabilities ``[n, 2, k]``
    (:func:`steerkit.full_decode.decode_side`)."""
    from steerkit.full_decode import decode_side

    info = reader.info
    gain = torch.from_numpy(reader.norm_gain())
    top_ids, top_probs, lse = decode_side(vectors, gain, torch.from_numpy(unembedding).T.contiguous(), info.rms_eps,
                                          top_k)
    logits = rms_normalize(vectors, gain, info.rms_eps) @ torch.from_numpy(unembedding[token_ids]).T
    probs = torch.stack([(sign * logits - lse[:, i, None]).exp().sum(1) for i, sign in enumerate((1, -1))], 1)
    return probs, top_ids, top_probs


def quick_find(reader: WeightReader, word: str, limit: int = 20, sample: int = SAMPLE, decode: int = DECODE,
               top_k: int = 10, seed: int = 0, screen: int = SCREEN, keep: float = KEEP, progress: bool = False,
               ) -> tuple[list[tuple[int, str]], list[NeuronHit]]:
    """:func:`find_word` without an atlas (see the module doc): :func:`shortlist` ``decode`` neuron sides, then
    decode them exactly."""
    variants = word_variants(word, reader.tokens())
    ids = [i for i, _ in variants]
    unembedding = reader.unembedding()
    keys, vectors = shortlist(reader, unembedding, ids, decode, sample=sample, screen=screen, keep=keep, seed=seed,
                             progress=progress)
    probs, top_ids, _ = concept_probs(reader, unembedding, vectors, ids, top_k)
    best_per_neuron: dict[tuple[int, int], NeuronHit] = {}
    for row, (layer, side_index, neuron) in enumerate(keys.tolist()):
        for sign_index in range(2):
            top = tuple(int(t) for t in top_ids[row, sign_index])
            in_top = [k for k, t in enumerate(top) if t in ids]
            hit = NeuronHit(layer, neuron, VIEWS[2 * side_index + sign_index].label, float(probs[row, sign_index]),
                            in_top[0] if in_top else -1, top)
            if (layer, neuron) not in best_per_neuron or hit.prob > best_per_neuron[layer, neuron].prob:
                best_per_neuron[layer, neuron] = hit
    return variants, sorted(best_per_neuron.values(), key=lambda h: -h.prob)[:limit]
