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
``token_ids`` int32 ``[layers, d_ff, 4, k]``  top tokens per view, best first
``probs``     float32 ``[layers, d_ff, 4, k]`` their probabilities
``lse``       float32 ``[layers, d_ff, 4]``   log-sum-exp of each view's logits
============  ==============================  ==========================================

View axis order: ``read+``, ``read-``, ``write+``, ``write-``.  The
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
from steerkit.weights import WeightReader

__all__ = ["Atlas", "build_atlas", "load_atlas", "atlas_for", "decode_side", "FORMAT"]

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
    def d_ff(self) -> int:
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


def decode_side(
    vectors: torch.Tensor, gain: torch.Tensor, unembedding_t: torch.Tensor, eps: float, top_k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k ids, probabilities and log-sum-exps of ``vectors`` read with both signs.

    Returns ``ids [n, 2, k]``, ``probs [n, 2, k]`` and ``lse [n, 2]`` where the
    second axis is (+sign, -sign).  ``unembedding_t`` is the LM head
    transposed, ``[d, vocab]``.  The vocabulary is walked in chunks: each
    chunk's logits are reduced (top-k merged, log-sum-exp accumulated) while
    hot, so memory stays at one ``[n, CHUNK_VOCAB]`` block.
    """
    normed = rms_normalize(vectors, gain, eps)
    n, vocab = normed.shape[0], unembedding_t.shape[1]
    high = high_ids = low = low_ids = None
    lse_pos = torch.full((n,), -torch.inf)
    lse_neg = torch.full((n,), -torch.inf)
    buffer = None
    for start in range(0, vocab, CHUNK_VOCAB):
        logits = normed @ unembedding_t[:, start : start + CHUNK_VOCAB]
        if buffer is None or buffer.shape != logits.shape:
            buffer = torch.empty_like(logits)
        chunk_high, chunk_high_ids = _top_k_grouped(logits, min(top_k, logits.shape[1]), largest=True)
        chunk_low, chunk_low_ids = _top_k_grouped(logits, min(top_k, logits.shape[1]), largest=False)
        chunk_pos, chunk_neg = _chunk_lse(logits, chunk_high[:, 0], chunk_low[:, 0], buffer)
        lse_pos, lse_neg = torch.logaddexp(lse_pos, chunk_pos), torch.logaddexp(lse_neg, chunk_neg)
        high, high_ids = _merge_top(high, high_ids, chunk_high, chunk_high_ids + start, top_k, True)
        low, low_ids = _merge_top(low, low_ids, chunk_low, chunk_low_ids + start, top_k, False)
    ids = torch.stack([high_ids, low_ids], dim=1).int()
    probs = torch.stack([(high - lse_pos[:, None]).exp(), (-low - lse_neg[:, None]).exp()], dim=1)
    return ids, probs, torch.stack([lse_pos, lse_neg], dim=1)


def build_atlas(reader: WeightReader, top_k: int = 10, progress: bool = True) -> Atlas:
    """Decode every neuron of the model behind ``reader`` (see module doc)."""
    if top_k < 1:
        raise SteerkitError(f"top-k must be at least 1, got {top_k}")
    info = reader.info
    top_k = min(top_k, info.vocab_size)
    gain = torch.from_numpy(reader.norm_gain())
    unembedding_t = torch.from_numpy(reader.unembedding()).T.contiguous()
    token_ids = np.empty((info.n_layers, info.d_ff, len(VIEWS), top_k), dtype=np.int32)
    probs = np.empty((info.n_layers, info.d_ff, len(VIEWS), top_k), dtype=np.float32)
    lse = np.empty((info.n_layers, info.d_ff, len(VIEWS)), dtype=np.float32)
    # leave=False: on an error the bar is cleared, so the one-line error message is the last thing shown.
    with tqdm(total=info.n_layers * len(SIDES), desc=f"atlas {info.label}", unit="matrix", disable=not progress,
              leave=False) as steps:
        for layer in range(info.n_layers):
            for side_index, side in enumerate(SIDES):
                vectors = reader.up_rows(layer) if side == "read" else reader.down_cols(layer)
                ids, p, l = decode_side(torch.from_numpy(vectors), gain, unembedding_t, info.rms_eps, top_k)
                views = slice(2 * side_index, 2 * side_index + 2)
                token_ids[layer, :, views], probs[layer, :, views], lse[layer, :, views] = ids, p, l
                steps.update()
    meta = {
        "model": info.label,
        "fingerprint": reader.fingerprint(),
        "arch": info.arch.name,
        "n_layers": info.n_layers,
        "d_model": info.d_model,
        "d_ff": info.d_ff,
        "vocab_size": info.vocab_size,
        "top_k": top_k,
        "views": [v.label for v in VIEWS],
        "steerkit": __version__,
    }
    return Atlas(meta, reader.tokens(), token_ids, probs, lse)


ATLAS_FORMAT = 1  # bump when what an atlas holds or how it is computed changes


def atlas_path(fingerprint: str, top_k: int) -> Path:
    """Where the cached atlas of a model with this fingerprint lives.

    The key holds everything that determines the entry: the model file, ``top_k``, the atlas format
    and the steerkit version, so an atlas written by other code is never read back.
    """
    code = hashlib.sha256(f"{ATLAS_FORMAT}|{__version__}".encode()).hexdigest()[:8]
    return cache_dir("atlas") / f"{fingerprint[:24]}-k{top_k}-{code}.npz"


def atlas_for(reader: WeightReader, top_k: int = 10, progress: bool = True) -> Atlas:
    """The model's atlas from the cache, building and caching it on first use."""
    path = atlas_path(reader.fingerprint(), top_k)
    if path.is_file():
        try:
            return load_atlas(path)
        except SteerkitError:
            pass  # a damaged cache entry is rebuilt, not reported
    atlas = build_atlas(reader, top_k, progress)
    atlas.save(path)
    return atlas
