"""Whole matrices of vectors decoded over the full vocabulary: each one's top-k tokens and log-sum-exp.

The work is one ``[n, d] @ [d, vocab]`` GEMM, walked in vocabulary chunks of
:data:`CHUNK_VOCAB` tokens so memory stays at one ``[n, CHUNK_VOCAB]`` block.
Each chunk is reduced while hot: its candidates for the running top-k
(:class:`_RunningTop`, pruned by group extremes against a floor) and its
share of both signs' log-sum-exp (one ``exp`` pass, :func:`_chunk_lse`).
In reduced precision (bf16, :mod:`steerkit.precision`) the chunks keep
``top_k + MARGIN`` candidates per sign, rescored in fp32 at the end
(:func:`candidate_logits`).  The atlas (:mod:`steerkit.atlas`) and the
first ``find`` (:mod:`steerkit.find`) are built on :func:`decode_side`.
"""

from __future__ import annotations

import numpy as np
import torch

from steerkit.decode import rms_normalize

__all__ = ["decode_side", "head_operands", "candidate_logits", "CHUNK_VOCAB", "MARGIN"]

CHUNK_VOCAB = 2048  # 1536 neurons x 2048 tokens of fp32 logits = 12.6 MB per chunk
GROUP = 16  # tokens per group in the grouped top-k


def _group_extremes(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Each group's minimum and maximum ``[n, groups]`` (``None`` if the chunk is not whole groups).

    A group is every ``groups``-th token of the chunk (token ``t`` is in group ``t % groups``), not a run of
    :data:`GROUP` neighbours: the extremes are then elementwise maxima and minima of :data:`GROUP` contiguous
    slices, which vectorise (5-8x faster on a CPU than reducing runs of 16, or ``aminmax``).
    """
    n, width = logits.shape
    if width % GROUP:
        return None
    slices = logits.view(n, GROUP, width // GROUP)
    return slices.amin(dim=1), slices.amax(dim=1)


def _chunk_candidates(logits: torch.Tensor, extremes: tuple[torch.Tensor, torch.Tensor] | None, top_k: int,
                      largest: bool, floor: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Values of one chunk that may enter the running top-k (unsorted), their ids, and each row's extreme.

    The group extremes (:func:`_group_extremes`) give the k best values' groups: the k best groups.  Without
    ``floor`` the chunk's own top-k comes back.  With ``floor`` (each row's current k-th best over the chunks
    already seen) only groups reaching it can hold a value that enters the running top-k: the candidates are
    every value of the best ``count`` groups, ``count`` being the most groups any row has at or beyond its
    floor.  Late in the vocabulary that is a few groups, so the merge's top-k runs over a few hundred values
    instead of the chunk.  (CPU top-k is slow on many short rows: unsorted selection halves it, and the
    running top-k is sorted once at the end.)
    """
    n, width = logits.shape
    if extremes is None:
        values, ids = torch.topk(logits, min(top_k, width), dim=1, largest=largest, sorted=False)
        return values, ids, (values.amax(dim=1) if largest else values.amin(dim=1))
    n_groups = width // GROUP
    extreme = extremes[1] if largest else extremes[0]
    row_extreme = extreme.amax(dim=1) if largest else extreme.amin(dim=1)
    count = min(top_k, n_groups)
    if floor is not None:
        reaching = extreme >= floor[:, None] if largest else extreme <= floor[:, None]
        count = max(1, min(count, int(reaching.sum(dim=1).max())))
    if count == n_groups:
        candidates, ids = logits, None
    else:
        best_groups = torch.topk(extreme, count, dim=1, largest=largest, sorted=False).indices  # [n, count]
        members = torch.arange(0, width, n_groups, device=logits.device)  # each group's offsets in the chunk
        ids = (best_groups[:, :, None] + members).reshape(n, -1)
        candidates = logits.gather(1, ids)
    if floor is None or ids is None:
        values, where = torch.topk(candidates, min(top_k, candidates.shape[1]), dim=1, largest=largest, sorted=False)
        return values, (where if ids is None else ids.gather(1, where)), row_extreme
    return candidates, ids, row_extreme


class _RunningTop:
    """The best ``keep`` values per row (and their ids) over the chunks seen so far, for one sign.

    Chunks' candidates wait in a list and are merged once they add up to a few times ``keep``: fewer,
    wider top-k calls, since CPU top-k is slow on many short rows.  Between merges the floor (the k-th
    best at the last merge) is stale, so lower than the true one: it lets more candidates through,
    never fewer.
    """

    def __init__(self, keep: int, largest: bool) -> None:
        self.keep, self.largest = keep, largest
        self.values: torch.Tensor | None = None
        self.ids: torch.Tensor | None = None
        self.floor: torch.Tensor | None = None
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._width = 0

    def add(self, values: torch.Tensor, ids: torch.Tensor) -> None:
        self._pending.append((values, ids))
        self._width += values.shape[1]
        if self.values is None or self._width >= 4 * self.keep:
            self._merge()

    def _merge(self) -> None:
        parts = ([(self.values, self.ids)] if self.values is not None else []) + self._pending
        values = torch.cat([v for v, _ in parts], dim=1) if len(parts) > 1 else parts[0][0]
        ids = torch.cat([i for _, i in parts], dim=1) if len(parts) > 1 else parts[0][1]
        if values.shape[1] > self.keep:
            values, where = torch.topk(values, self.keep, dim=1, largest=self.largest, sorted=False)
            ids = ids.gather(1, where)
        self.values, self.ids, self._pending, self._width = values, ids, [], 0
        if values.shape[1] == self.keep:
            self.floor = values.amin(dim=1) if self.largest else values.amax(dim=1)

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The best ``keep`` values, best first, and their ids."""
        if self._pending:
            self._merge()
        order = torch.argsort(self.values, dim=1, descending=self.largest, stable=True)
        return self.values.gather(1, order), self.ids.gather(1, order)


def _chunk_lse(logits: torch.Tensor, high: torch.Tensor, low: torch.Tensor, buffer: torch.Tensor):
    """log-sum-exp of +logits and -logits with a single ``exp`` pass.

    With the centre ``c`` of each row's range, ``e = exp(logits - c)`` gives
    ``sum(e)`` for the + sign and ``sum(1/e)`` for the - sign; both stay in
    float32 range while the half-range is under 80.  Rows with a wider range
    (rare) are redone with two shifted ``exp`` passes.
    """
    centre = (high + low) / 2
    torch.sub(logits, centre[:, None], out=buffer)
    buffer.exp_()
    lse_pos = centre + buffer.sum(dim=1).log()
    lse_neg = -centre + buffer.reciprocal_().sum(dim=1).log()
    wide = (high - low) > 160
    if bool(wide.any()):
        rows = logits[wide]
        lse_pos[wide] = torch.logsumexp(rows, dim=1)
        lse_neg[wide] = torch.logsumexp(-rows, dim=1)
    return lse_pos, lse_neg


# Extra candidates taken from reduced-precision logits and rescored in fp32, so that the top-k ids and their order are
# exact.  Their exact terms also go into the log-sum-exp.  Few are needed: what is left of the bf16 error in the
# log-sum-exp is mostly the operand's rounding, which moves all of a row's logits together and which more
# candidates hardly reduce (see _rescored).  Each costs a 16 KB row read per neuron for an 8B head.  Over every
# SmolLM2 neuron (bf16 rounding emulated) the worst view was off by 0.019 nats with 16 and the operand correction;
# layer 29 alone by 0.029 with 112 candidates and no correction.
MARGIN = 16
RESCORE_ROWS = 256  # neurons rescored at once (bounds the gathered LM-head columns: rows x (k + MARGIN) x d)


def decode_side(
    vectors: torch.Tensor, gain: torch.Tensor, unembedding_t: torch.Tensor, eps: float, top_k: int,
    fast_unembedding_t: torch.Tensor | None = None, emulate: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k ids, probabilities and log-sum-exps of ``vectors`` read with both signs.

    Returns ``ids [n, 2, k]``, ``probs [n, 2, k]`` and ``lse [n, 2]`` where the
    second axis is (+sign, -sign).  ``unembedding_t`` is the LM head
    transposed, ``[d, vocab]``, on the device the work runs on (:func:`head_operands` lays
    it out for the precision: a transposed view of ``[vocab, d]`` where candidates are
    rescored, so their rows are contiguous).  The vocabulary
    is walked in chunks: each chunk's logits are reduced (top-k merged,
    log-sum-exp accumulated) while hot, so memory stays at one ``[n, CHUNK_VOCAB]`` block.

    With ``fast_unembedding_t`` (the same matrix in bf16, see :mod:`steerkit.precision`) the
    chunks are computed in that dtype, ``top_k + MARGIN`` candidates are kept per sign and
    rescored in fp32: ids, their order and logits are exact; the log-sum-exp comes from the
    reduced-precision logits with the candidates' own terms replaced by their exact ones.

    ``emulate`` (for measurements) rounds the operand and each chunk's logits to that dtype around an fp32
    GEMM on ``fast_unembedding_t`` (an fp32 matrix of values already rounded to it): the same errors as
    the dtype's own GEMM accumulating in fp32, on a CPU where that GEMM is too slow to run.
    """
    normed = rms_normalize(vectors, gain, eps)
    fast = fast_unembedding_t is not None
    operand = normed.to(emulate or fast_unembedding_t.dtype).to(fast_unembedding_t.dtype) if fast else normed
    matrix = fast_unembedding_t if fast else unembedding_t
    n, vocab = normed.shape[0], unembedding_t.shape[1]
    keep = min(top_k + MARGIN, vocab) if fast else top_k
    high, low = _RunningTop(keep, largest=True), _RunningTop(keep, largest=False)
    lse_pos = torch.full((n,), -torch.inf, device=normed.device)
    lse_neg = torch.full((n,), -torch.inf, device=normed.device)
    buffer = None
    for start in range(0, vocab, CHUNK_VOCAB):
        logits = operand @ matrix[:, start : start + CHUNK_VOCAB]
        if fast:
            logits = (logits.to(emulate) if emulate else logits).float()
        if buffer is None or buffer.shape != logits.shape:
            buffer = torch.empty_like(logits)
        extremes = _group_extremes(logits)
        chunk_high, chunk_high_ids, top = _chunk_candidates(logits, extremes, keep, True, high.floor)
        chunk_low, chunk_low_ids, bottom = _chunk_candidates(logits, extremes, keep, False, low.floor)
        chunk_pos, chunk_neg = _chunk_lse(logits, top, bottom, buffer)
        lse_pos, lse_neg = torch.logaddexp(lse_pos, chunk_pos), torch.logaddexp(lse_neg, chunk_neg)
        high.add(chunk_high, chunk_high_ids + start)
        low.add(chunk_low, chunk_low_ids + start)
    (high, high_ids), (low, low_ids) = high.result(), low.result()
    if fast:
        # The operand's rounding moved each logit by residual . w_t: to first order, by residual . mean(w) for the
        # tokens that were not rescored (the mean head row standing for their softmax-weighted mean).  The mean
        # is taken over the fp32 head: a contiguous reduction (0.25 s for an 8B head; 7x that over the bf16 copy).
        shift = (normed - operand.float()) @ unembedding_t.mean(dim=1)
        high, high_ids, lse_pos = _rescored(normed, unembedding_t, high, high_ids, lse_pos, top_k, 1.0, shift)
        low, low_ids, lse_neg = _rescored(normed, unembedding_t, low, low_ids, lse_neg, top_k, -1.0, -shift)
        low = -low
    ids = torch.stack([high_ids, low_ids], dim=1).int()
    probs = torch.stack([(high - lse_pos[:, None]).exp(), (-low - lse_neg[:, None]).exp()], dim=1)
    return ids, probs, torch.stack([lse_pos, lse_neg], dim=1)


def head_operands(unembedding: np.ndarray, device: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The LM head ``[vocab, d]`` as :func:`decode_side` takes it: ``(unembedding_t, fast_unembedding_t)``.

    In fp32, ``unembedding_t`` is a contiguous ``[d, vocab]`` copy (the GEMM's operand) and there is no fast
    one.  In a reduced-precision ``dtype`` the GEMM runs on a contiguous ``[d, vocab]`` copy in that dtype,
    and the fp32 matrix is only read to rescore candidates, a token's row at a time: it stays in the
    ``[vocab, d]`` layout, ``unembedding_t`` being its transposed view.
    """
    head = torch.from_numpy(unembedding).to(device)
    if dtype == torch.float32:
        return head.T.contiguous(), None
    return head.T, head.to(dtype).T.contiguous()


def candidate_logits(normed: torch.Tensor, unembedding_t: torch.Tensor, ids: torch.Tensor,
                     per_row: bool | None = None) -> torch.Tensor:
    """Exact fp32 logits ``[n, k]`` of each row's candidate token ``ids`` ``[n, k]``.

    With the head in ``[vocab, d]`` layout (``unembedding_t`` its transposed view), the candidates' rows are
    gathered: on a CPU one neuron at a time (``per_row``; its k rows, 16 KB each for an 8B head, are read
    once and stay in cache: 18x faster than gathering columns of a ``[d, vocab]`` matrix for many neurons
    at once), on an accelerator for blocks of neurons (few, large kernels).
    """
    exact = torch.empty(ids.shape, dtype=normed.dtype, device=normed.device)
    rows = unembedding_t.T  # [vocab, d]
    per_row = rows.device.type == "cpu" if per_row is None else per_row
    if rows.is_contiguous() and per_row:
        for row in range(normed.shape[0]):
            exact[row] = rows.index_select(0, ids[row]) @ normed[row]
        return exact
    for start in range(0, normed.shape[0], RESCORE_ROWS):
        block = slice(start, start + RESCORE_ROWS)
        if rows.is_contiguous():
            gathered = rows.index_select(0, ids[block].reshape(-1)).view(-1, ids.shape[1], rows.shape[1])
            exact[block] = torch.bmm(gathered, normed[block, :, None])[..., 0]
        else:
            columns = unembedding_t[:, ids[block]]  # [d, rows, keep]
            exact[block] = torch.einsum("rd,drk->rk", normed[block], columns)
    return exact


def _rescored(normed, unembedding_t, approx, ids, lse, top_k: int, sign: float, shift: torch.Tensor):
    """Exact fp32 logits (times ``sign``) of the candidate ``ids``, the best ``top_k`` of them, and ``lse`` with
    the candidates' approximate terms swapped for exact ones and the other tokens' terms moved by each row's
    ``shift`` (the operand's rounding error, to first order, times ``sign``).

    Why the shift: rounding the operand to bf16 changes every logit of a row by ``residual . w_t``.  That error
    is shared across the vocabulary, so it does not average out in the sum the way the head's rounding does: on
    SmolLM2's last layer the head's rounding alone moved the log-sum-exp by 0.0064 nats, all three roundings by 0.039.
    """
    exact, approx = sign * candidate_logits(normed, unembedding_t, ids), sign * approx
    # lse = log(sum_rest e^approx * e^shift + sum_candidates e^exact), computed around lse.
    rest = (1 - (approx - lse[:, None]).exp().sum(dim=1)).clamp_min(0) * shift.exp()
    corrected = lse + (rest + (exact - lse[:, None]).exp().sum(dim=1)).log()
    best, where = torch.topk(exact, top_k, dim=1)
    return best, ids.gather(1, where), corrected
