"""Exact row scaling of quantized GGUF tensors by rewriting only their scale fields.

Every quant block in this table dequantizes to values that are linear in
its fp16 scale fields (``d``, and ``m``/``dmin`` where present).  Multiplying
those fields by ``s`` multiplies the block's values by ``s``: exact (bit for
bit) for ``s`` in {0, +-1, +-2^k} while the result stays in fp16 range; other
factors re-round the fp16 scale (relative error at most 2^-11).  Types whose
scale is not a plain fp16 field (IQ1_M, MXFP4, the ternary TQ types) are
refused: they would need dequantize -> edit -> requantize.
"""

from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as Q

from steerkit.errors import SteerkitError

__all__ = ["SCALE_FIELDS", "scale_rows"]

# quant type -> byte offsets of the fp16 fields that scale the block linearly
SCALE_FIELDS: dict[Q, tuple[int, ...]] = {
    Q.Q4_0: (0,), Q.Q4_1: (0, 2), Q.Q5_0: (0,), Q.Q5_1: (0, 2), Q.Q8_0: (0,),
    Q.Q2_K: (80, 82), Q.Q3_K: (108,), Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,),
    Q.IQ4_NL: (0,), Q.IQ4_XS: (0,), Q.IQ2_XXS: (0,), Q.IQ2_XS: (0,), Q.IQ2_S: (0,),
    Q.IQ3_XXS: (0,), Q.IQ3_S: (0,), Q.IQ1_S: (0,),
}
_FLOAT_TYPES = {Q.F32: np.float32, Q.F16: np.float16}


def _scale_float_rows(rows: np.ndarray, qtype: Q, factors: np.ndarray) -> None:
    if qtype == Q.BF16:
        # bf16 is the top half of an fp32: widen, scale, round to nearest even, narrow.
        wide = (rows.view(np.uint16).astype(np.uint32) << 16).view(np.float32) * factors[:, None]
        if not np.isfinite(wide).all():
            raise SteerkitError("scaling overflows BF16 values (factor too large)")
        bits = wide.view(np.uint32)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        rows.view(np.uint16)[...] = bits.astype(np.uint16)
        return
    values = rows.view(_FLOAT_TYPES[qtype])
    scaled = (values.astype(np.float32) * factors[:, None]).astype(values.dtype)
    if not np.isfinite(scaled).all():
        raise SteerkitError(f"scaling overflows {qtype.name} values (factor too large)")
    values[...] = scaled


def scale_rows(data: np.ndarray, qtype: Q, rows: np.ndarray, factors: np.ndarray, tensor_name: str) -> np.ndarray:
    """Return a copy of a tensor's raw bytes with ``rows`` multiplied by ``factors``.

    ``data`` is gguf-py's ``tensor.data`` (uint8 ``[rows, bytes_per_row]`` for
    quantized types, or the float array).  Only the listed rows' scale fields
    change; every other byte is copied as is.
    """
    qtype = Q(qtype)
    out = np.array(data, copy=True)
    if out.ndim != 2:
        raise SteerkitError(f"{tensor_name}: expected a 2-D tensor, got shape {out.shape}")
    factors = np.asarray(factors, dtype=np.float32)
    if qtype in _FLOAT_TYPES or qtype == Q.BF16:
        selected = out[rows]
        _scale_float_rows(selected, qtype, factors)
        out[rows] = selected
        return out
    if qtype not in SCALE_FIELDS:
        raise SteerkitError(
            f"{tensor_name}: quant type {qtype.name} has no plain scale field; "
            f"scaling its rows exactly is not supported (supported: F32, F16, BF16, {', '.join(t.name for t in SCALE_FIELDS)})"
        )
    _, type_size = GGML_QUANT_SIZES[qtype]
    blocks = out[rows].reshape(len(rows), -1, type_size)  # [n_rows, blocks_per_row, type_size]
    for offset in SCALE_FIELDS[qtype]:
        field = np.ascontiguousarray(blocks[:, :, offset : offset + 2]).view(np.float16)[..., 0]
        scaled = (field.astype(np.float32) * factors[:, None]).astype(np.float16)
        if not np.isfinite(scaled).all():
            raise SteerkitError(f"{tensor_name}: scaling overflows the fp16 scale field (factor too large)")
        blocks[:, :, offset : offset + 2] = scaled[..., None].view(np.uint8)
    out[rows] = blocks.reshape(len(rows), -1)
    return out
