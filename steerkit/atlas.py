"""The neuron atlas: every MLP neuron decoded through the final norm and LM head.

For each neuron and each of the four views (read/write side x both signs,
see :data:`steerkit.decode.VIEWS`) the atlas keeps the top-k tokens with
their probabilities and the log-sum-exp of the view's logits, so the
probability of *any* token can be scored later from one dot product.

File format (``.npz``, written with :func:`numpy.savez`, no pickle):

============  ==============================  ==========================================
array         shape / dtype                   meaning
============  ==============================  ==========================================
``format``    str                             ``"steerkit-atlas/1"``
``meta``      str (JSON)                      model label, fingerprint, arch, shapes, k, version
``vocab``     str (JSON list)                 token strings, index = token id
``token_ids`` int32 ``[layers, n, 4, k]``     top tokens per view, best first
``probs``     float32 ``[layers, n, 4, k]``    their probabilities
``lse``       float32 ``[layers, n, 4]``      log-sum-exp of each view's logits
============  ==============================  ==========================================

``n`` is ``d_ff``, or ``experts * d_ff`` in a mixture of experts (flat index
``expert * d_ff + i``; ``meta`` records ``n_experts``).  View axis order: ``read+``, ``read-``, ``write+``, ``write-``.  The
log-probability of token ``t`` in view ``(side, sign)`` is
``sign * (U[t] . rmsnorm(w_side)) - lse``.

Speed: the work is one GEMM per layer and side (``[d_ff, d] @ [d, vocab]``),
done in vocabulary chunks so memory stays bounded by one chunk of logits;
top-k (via group extrema) and the log-sum-exp of both signs (one ``exp``
pass, see :func:`_chunk_lse`) are taken from each chunk while it is hot.
"""

from __future__ import annotations

import hashlib
import json
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from steerkit.version import __version__
from steerkit.cache import atomic_write, cache_dir
from steerkit.decode import SIDES, VIEWS, rms_normalize
from steerkit.errors import SteerkitError
from steerkit.precision import Precision, choose_precision
from steerkit.weights import WeightReader

__all__ = ["Atlas", "build_atlas", "load_atlas", "atlas_for", "cached_atlas", "decode_side", "FORMAT"]

FORMAT = "steerkit-atlas/1"
CHUNK_VOCAB = 2048  # 1536 neurons x 2048 tokens of fp32 logits = 12.6 MB per chunk
GROUP = 64  # tokens per group in the grouped top-k


@dataclass
class Atlas:
    """Top tokens and log-sum-exps of every neuron of one model (see module doc)."""

    meta: dict
    vocab: list[str]
    token_ids: np.ndarray
    probs: np.ndarray
    lse: np.ndarray

    @property
    def n_layers(self) -> int:
        return self.token_ids.shape[0]

    @property
    def neurons(self) -> int:
        """Neurons per layer (``d_ff``; times the experts in a mixture of experts, flat index ``e * d_ff + i``)."""
        return self.token_ids.shape[1]

    def save(self, path: str | Path) -> None:
        """Write the atlas atomically to ``path`` (``.npz``)."""
        with atomic_write(path, suffix=".npz") as tmp:
            with tmp.open("wb") as handle:
                np.savez(
                    handle,
                    format=np.array(FORMAT),
                    meta=np.array(json.dumps(self.meta)),
                    vocab=np.array(json.dumps(self.vocab)),
                    token_ids=self.token_ids,
                    probs=self.probs,
                    lse=self.lse,
                )


def load_atlas(path: str | Path) -> Atlas:
    """Read an atlas file written by :meth:`Atlas.save`."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["format"]) != FORMAT:
                raise SteerkitError(f"{path}: not a {FORMAT} file (format {str(data['format'])[:40]!r})")
            atlas = Atlas(
                meta=json.loads(str(data["meta"])),
                vocab=json.loads(str(data["vocab"])),
                token_ids=data["token_ids"],
                probs=data["probs"],
                lse=data["lse"],
            )
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise SteerkitError(f"{path}: cannot read atlas ({type(exc).__name__}: {str(exc)[:200]})") from exc
    shape = atlas.token_ids.shape
    if (atlas.token_ids.ndim != 4 or atlas.probs.shape != shape or atlas.lse.shape != shape[:3]
            or not isinstance(atlas.vocab, list) or not isinstance(atlas.meta, dict)
            or (atlas.token_ids.size and (atlas.token_ids.min() < 0 or atlas.token_ids.max() >= len(atlas.vocab)))):
        raise SteerkitError(f"{path}: damaged atlas (arrays or vocabulary do not fit together)")
    return atlas


def _top_k_grouped(logits: torch.Tensor, top_k: int, largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k along dim 1 via group extrema: the k best values lie in the k best groups.

    One pass over the chunk for the group maxima (or minima), then top-k over
    k groups only; about twice as fast as ``torch.topk`` on wide rows.
    """
    n, width = logits.shape
    if width % GROUP or top_k > width // GROUP:
        return torch.topk(logits, top_k, dim=1, largest=largest)
    groups = logits.view(n, width // GROUP, GROUP)
    extreme = groups.amax(dim=2) if largest else groups.amin(dim=2)
    best_groups = torch.topk(extreme, top_k, dim=1, largest=largest).indices  # [n, k]
    candidates = torch.gather(groups, 1, best_groups[:, :, None].expand(n, top_k, GROUP)).reshape(n, -1)
    values, where = torch.topk(candidates, top_k, dim=1, largest=largest)
    ids = best_groups.gather(1, where // GROUP) * GROUP + where % GROUP
    return values, ids


def _merge_top(values: torch.Tensor | None, ids: torch.Tensor | None, new_values, new_ids, top_k: int, largest: bool):
    if values is None:
        return new_values, new_ids
    both = torch.cat([values, new_values], dim=1)
    best, where = torch.topk(both, top_k, dim=1, largest=largest)
    return best, torch.cat([ids, new_ids], dim=1).gather(1, where)


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


# Extra candidates taken from reduced-precision logits and rescored in fp32.  Their exact terms also go into the
# log-sum-exp, so the bf16 error left there is the tail's: on SmolLM2's layer 29 (384 neurons, AVX2) the worst
# view moved 0.007 nats with 16, 0.0036 with 48 and 0.0024 with 112, at the same time (the GEMM dominates).
MARGIN = 112
RESCORE_ROWS = 256  # neurons rescored at once (bounds the gathered LM-head columns: rows x (k + MARGIN) x d)


def decode_side(
    vectors: torch.Tensor, gain: torch.Tensor, unembedding_t: torch.Tensor, eps: float, top_k: int,
    fast_unembedding_t: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k ids, probabilities and log-sum-exps of ``vectors`` read with both signs.

    Returns ``ids [n, 2, k]``, ``probs [n, 2, k]`` and ``lse [n, 2]`` where the
    second axis is (+sign, -sign).  ``unembedding_t`` is the LM head
    transposed, ``[d, vocab]``, on the device the work runs on.  The vocabulary
    is walked in chunks: each chunk's logits are reduced (top-k merged,
    log-sum-exp accumulated) while hot, so memory stays at one ``[n, CHUNK_VOCAB]`` block.

    With ``fast_unembedding_t`` (the same matrix in bf16, see :mod:`steerkit.precision`) the
    chunks are computed in that dtype, ``top_k + MARGIN`` candidates are kept per sign and
    rescored in fp32: ids, their order and logits are exact; the log-sum-exp comes from the
    reduced-precision logits with the candidates' own terms replaced by their exact ones.
    """
    normed = rms_normalize(vectors, gain, eps)
    fast = fast_unembedding_t is not None
    operand = normed.to(fast_unembedding_t.dtype) if fast else normed
    matrix = fast_unembedding_t if fast else unembedding_t
    n, vocab = normed.shape[0], unembedding_t.shape[1]
    keep = min(top_k + MARGIN, vocab) if fast else top_k
    high = high_ids = low = low_ids = None
    lse_pos = torch.full((n,), -torch.inf, device=normed.device)
    lse_neg = torch.full((n,), -torch.inf, device=normed.device)
    buffer = None
    for start in range(0, vocab, CHUNK_VOCAB):
        logits = operand @ matrix[:, start : start + CHUNK_VOCAB]
        if fast:
            logits = logits.float()
        if buffer is None or buffer.shape != logits.shape:
            buffer = torch.empty_like(logits)
        chunk_high, chunk_high_ids = _top_k_grouped(logits, min(keep, logits.shape[1]), largest=True)
        chunk_low, chunk_low_ids = _top_k_grouped(logits, min(keep, logits.shape[1]), largest=False)
        chunk_pos, chunk_neg = _chunk_lse(logits, chunk_high[:, 0], chunk_low[:, 0], buffer)
        lse_pos, lse_neg = torch.logaddexp(lse_pos, chunk_pos), torch.logaddexp(lse_neg, chunk_neg)
        high, high_ids = _merge_top(high, high_ids, chunk_high, chunk_high_ids + start, keep, True)
        low, low_ids = _merge_top(low, low_ids, chunk_low, chunk_low_ids + start, keep, False)
    if fast:
        high, high_ids, lse_pos = _rescored(normed, unembedding_t, high, high_ids, lse_pos, top_k, 1.0)
        low, low_ids, lse_neg = _rescored(normed, unembedding_t, low, low_ids, lse_neg, top_k, -1.0)
        low = -low
    ids = torch.stack([high_ids, low_ids], dim=1).int()
    probs = torch.stack([(high - lse_pos[:, None]).exp(), (-low - lse_neg[:, None]).exp()], dim=1)
    return ids, probs, torch.stack([lse_pos, lse_neg], dim=1)


def _rescored(normed, unembedding_t, approx, ids, lse, top_k: int, sign: float):
    """Exact fp32 logits (times ``sign``) of the candidate ``ids``, the best ``top_k`` of them, and ``lse`` with
    the candidates' approximate terms swapped for exact ones."""
    exact = torch.empty_like(approx)
    for start in range(0, normed.shape[0], RESCORE_ROWS):
        rows = slice(start, start + RESCORE_ROWS)
        columns = unembedding_t[:, ids[rows]]  # [d, rows, keep]
        exact[rows] = torch.einsum("rd,drk->rk", normed[rows], columns)
    exact, approx = sign * exact, sign * approx
    # lse = log(sum_all e^approx - sum_candidates e^approx + sum_candidates e^exact), computed around lse.
    rest = (1 - (approx - lse[:, None]).exp().sum(dim=1)).clamp_min(0)
    corrected = lse + (rest + (exact - lse[:, None]).exp().sum(dim=1)).log()
    best, where = torch.topk(exact, top_k, dim=1)
    return best, ids.gather(1, where), corrected


def _matrices(reader: WeightReader, overlap: bool):
    """``(layer, side_index, vectors)`` for every layer and side, dequantized in order; with ``overlap`` the next
    matrix is dequantized in a thread while the caller computes on the current one (an accelerator does the
    GEMM, so the CPU is free; on the CPU both would compete for the same cores)."""
    order = [(layer, k, side) for layer in range(reader.info.n_layers) for k, side in enumerate(SIDES)]

    def load(item):
        layer, _, side = item
        return reader.side_vectors(layer, side)

    if not overlap:
        for item in order:
            yield item[0], item[1], load(item)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(load, order[0])
        for index, item in enumerate(order):
            vectors = pending.result()
            if index + 1 < len(order):
                pending = pool.submit(load, order[index + 1])
            yield item[0], item[1], vectors


def build_atlas(reader: WeightReader, top_k: int = 10, progress: bool = True, device: str = "cpu",
                precision: Precision | None = None) -> Atlas:
    """Decode every neuron of the model behind ``reader`` (see module doc) on ``device``, in the precision
    :func:`steerkit.precision.choose_precision` picks for it unless ``precision`` is given."""
    if top_k < 1:
        raise SteerkitError(f"top-k must be at least 1, got {top_k}")
    precision = precision or choose_precision(device)
    info = reader.info
    top_k = min(top_k, info.vocab_size)
    gain = torch.from_numpy(reader.norm_gain()).to(device)
    unembedding_t = torch.from_numpy(reader.unembedding()).T.contiguous().to(device)
    fast = unembedding_t.to(precision.dtype) if precision.dtype != torch.float32 else None
    token_ids = np.empty((info.n_layers, info.neurons, len(VIEWS), top_k), dtype=np.int32)
    probs = np.empty((info.n_layers, info.neurons, len(VIEWS), top_k), dtype=np.float32)
    lse = np.empty((info.n_layers, info.neurons, len(VIEWS)), dtype=np.float32)
    started = time.perf_counter()
    # leave=False: on an error the bar is cleared, so the one-line error message is the last thing shown.
    with tqdm(total=info.n_layers * len(SIDES), desc=f"atlas {info.label} ({precision.label}, {device})",
              unit="matrix", disable=not progress, leave=False) as steps:
        for layer, side_index, vectors in _matrices(reader, overlap=device != "cpu"):
            ids, p, l = decode_side(torch.from_numpy(vectors).to(device), gain, unembedding_t, info.rms_eps, top_k,
                                    fast)
            views = slice(2 * side_index, 2 * side_index + 2)
            token_ids[layer, :, views], probs[layer, :, views], lse[layer, :, views] = ids.cpu(), p.cpu(), l.cpu()
            steps.update()
    meta = {
        "model": info.label,
        "fingerprint": reader.fingerprint(),
        "arch": info.arch.name,
        "n_layers": info.n_layers,
        "d_model": info.d_model,
        "d_ff": info.d_ff,
        "n_experts": info.n_experts,
        "vocab_size": info.vocab_size,
        "top_k": top_k,
        "views": [v.label for v in VIEWS],
        "steerkit": __version__,
        "device": device,
        "dtype": precision.label,
        "precision_reason": precision.reason,
        "seconds": round(time.perf_counter() - started, 2),
    }
    return Atlas(meta, reader.tokens(), token_ids, probs, lse)


ATLAS_FORMAT = 1  # bump when what an atlas holds or how it is computed changes


def atlas_path(fingerprint: str, top_k: int, dtype: str = "float32") -> Path:
    """Where the cached atlas of a model with this fingerprint lives.

    The key holds everything that determines the entry: the model file, ``top_k``, the arithmetic,
    the atlas format and the steerkit version, so an atlas written by other code is never read back.
    """
    code = hashlib.sha256(f"{ATLAS_FORMAT}|{__version__}|{dtype}".encode()).hexdigest()[:8]
    return cache_dir("atlas") / f"{fingerprint[:24]}-k{top_k}-{code}.npz"


def cached_atlas(reader: WeightReader, top_k: int = 10, device: str = "cpu") -> Atlas | None:
    """The model's atlas if the cache holds a readable one (for ``device``'s precision), else ``None``."""
    path = atlas_path(reader.fingerprint(), top_k, choose_precision(device).label)
    if path.is_file():
        try:
            return load_atlas(path)
        except SteerkitError:
            pass  # a damaged cache entry is rebuilt, not reported
    return None


def atlas_for(reader: WeightReader, top_k: int = 10, progress: bool = True, device: str = "cpu") -> Atlas:
    """The model's atlas from the cache, building (on ``device``) and caching it on first use."""
    cached = cached_atlas(reader, top_k, device)
    if cached is not None:
        return cached
    precision = choose_precision(device)
    path = atlas_path(reader.fingerprint(), top_k, precision.label)
    atlas = build_atlas(reader, top_k, progress, device, precision)
    atlas.save(path)
    return atlas
