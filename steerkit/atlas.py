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
done in vocabulary chunks by :func:`steerkit.full_decode.decode_side`, so
memory stays bounded by one chunk of logits.
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
from steerkit.decode import SIDES, VIEWS
from steerkit.full_decode import decode_side, head_operands
from steerkit.errors import SteerkitError
from steerkit.precision import Precision, choose_precision
from steerkit.weights import WeightReader

__all__ = ["Atlas", "build_atlas", "load_atlas", "atlas_for", "cached_atlas", "decode_side", "head_operands", "FORMAT"]

FORMAT = "steerkit-atlas/1"


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


def read_matrices(reader: WeightReader, overlap: bool, sides: tuple[str, ...] = SIDES):
    """``(layer, side_index, vectors)`` for every layer and side, dequantized in order; with ``overlap`` the next
    matrix is dequantized in a thread while the caller computes on the current one.  The atlas overlaps on an
    accelerator only (on the CPU its GEMM takes minutes per matrix, the dequantization under a second); `find`'s
    short screening GEMM gains 10-25 % from overlapping on 2 cores too."""
    order = [(layer, SIDES.index(side), side) for layer in range(reader.info.n_layers) for side in sides]

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
    precision = precision or choose_precision(device, reader.info.d_model, reader.info.vocab_size)
    info = reader.info
    top_k = min(top_k, info.vocab_size)
    gain = torch.from_numpy(reader.norm_gain()).to(device)
    unembedding_t, fast = head_operands(reader.unembedding(), device, precision.dtype)
    token_ids = np.empty((info.n_layers, info.neurons, len(VIEWS), top_k), dtype=np.int32)
    probs = np.empty((info.n_layers, info.neurons, len(VIEWS), top_k), dtype=np.float32)
    lse = np.empty((info.n_layers, info.neurons, len(VIEWS)), dtype=np.float32)
    started = time.perf_counter()
    # leave=False: on an error the bar is cleared, so the one-line error message is the last thing shown.
    with tqdm(total=info.n_layers * len(SIDES), desc=f"atlas {info.label} ({precision.label}, {device})",
              unit="matrix", disable=not progress, leave=False) as steps:
        for layer, side_index, vectors in read_matrices(reader, overlap=device != "cpu"):
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


ATLAS_FORMAT = 2  # bump when what an atlas holds or how it is computed changes (2: bf16 log-sum-exp corrected)


def atlas_path(fingerprint: str, top_k: int, dtype: str = "float32") -> Path:
    """Where the cached atlas of a model with this fingerprint lives.

    The key holds everything that determines the entry: the model file, ``top_k``, the arithmetic,
    the atlas format and the steerkit version, so an atlas written by other code is never read back.
    """
    code = hashlib.sha256(f"{ATLAS_FORMAT}|{__version__}|{dtype}".encode()).hexdigest()[:8]
    return cache_dir("atlas") / f"{fingerprint[:24]}-k{top_k}-{code}.npz"


def cached_atlas(reader: WeightReader, top_k: int = 10, device: str = "cpu") -> Atlas | None:
    """The model's atlas if the cache holds a readable one (for ``device``'s precision), else ``None``."""
    fingerprint = reader.fingerprint()
    if not any(atlas_path(fingerprint, top_k, dtype).is_file() for dtype in ("float32", "bfloat16")):
        return None  # none in any precision: no need to probe which one this machine picks (~10 s for an 8B)
    path = atlas_path(fingerprint, top_k, choose_precision(device, reader.info.d_model, reader.info.vocab_size).label)
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
    precision = choose_precision(device, reader.info.d_model, reader.info.vocab_size)
    path = atlas_path(reader.fingerprint(), top_k, precision.label)
    atlas = build_atlas(reader, top_k, progress, device, precision)
    atlas.save(path)
    return atlas
