"""A fast, read-only view of a GGUF file's header, with tensors as memory-mapped arrays.

gguf-py's ``GGUFReader`` turns every string of the tokenizer arrays into its
own numpy view: opening SmolLM2 (98k strings) takes 5-9 s on this machine,
most of it in numpy's memmap bookkeeping.  This module parses the same header
with ``struct`` and numpy in about 0.01 s (string arrays are only located,
and decoded on first use) and keeps each key's raw byte span, so a patch can
copy metadata verbatim.  Types, quant sizes and dequantization still come
from gguf-py.

Layout (GGUF v2/v3): magic, version u32, tensor count u64, KV count u64; KV
entries (key string, value type u32, value); tensor infos (name, n_dims u32,
ne u64 x n_dims, type u32, offset u64); padding to ``general.alignment``
(default 32); tensor data.
"""

from __future__ import annotations

import math
import mmap
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from steerkit.errors import SteerkitError

__all__ = ["GGUFField", "GGUFTensor", "GGUFFile"]

_SCALARS = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H", GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i", GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q", GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d",
}
_U64 = struct.Struct("<Q")
_STRUCTS: dict[str, struct.Struct] = {}
_VECTOR_WALK = 1024  # string arrays this long (tokenizer vocabularies, merges) are located with numpy
_NUMPY_FLOATS = {GGMLQuantizationType.F32: np.float32, GGMLQuantizationType.F16: np.float16}
_INTEGER_TYPES = {GGUFValueType.UINT8, GGUFValueType.INT8, GGUFValueType.UINT16, GGUFValueType.INT16,
                  GGUFValueType.UINT32, GGUFValueType.INT32, GGUFValueType.UINT64, GGUFValueType.INT64}
_KIND_NAMES = {"string": "a string", "strings": "an array of strings", "int": "an integer", "float": "a number"}
_MAX_TENSOR_NAME = 64  # GGML_MAX_NAME: llama.cpp refuses names this long or longer
_MAX_DIMS = 4  # GGML_MAX_DIMS


class _Truncated(Exception):
    pass


def _string_offsets(data: np.ndarray, start: int, count: int) -> np.ndarray | None:
    """Where ``count`` length-prefixed strings from ``start`` begin, plus where the last ends; ``None`` if unsure.

    A vectorised stand-in for a Python walk over 100k strings (SmolLM2's tokens: 2 ms
    instead of 7-12 ms).  A string can only begin where the next 8 bytes read as a
    length below 2**24, i.e. bytes 3-7 are zero; of a run of such positions only the
    last can (the ones just before a true start see the same zeros).  The guess is then
    checked exactly, start by start: each start + 8 + its length must be the next start.
    What the guess misses (empty strings, strings starting with NUL, lengths >= 2**24)
    fails the check, and the caller walks instead.
    """
    window = count * 24
    while True:
        view = data[start : start + window]
        size, whole = len(view), start + window >= len(data)
        if whole:  # nothing follows: let bytes past the end read as non-zero, so the last strings are judged too
            view = np.concatenate([view, np.full(16, 255, dtype=np.uint8)])
        n = len(view) - 16  # a position needs its own 8 bytes, and the next position's to judge the run
        zero = view == 0
        small = zero[3 : 4 + n] & zero[4 : 5 + n] & zero[5 : 6 + n] & zero[6 : 7 + n] & zero[7 : 8 + n]
        found = np.flatnonzero(small[:n] & ~small[1:])[:count]
        if len(found) == count:
            ends = found + 8 + (view[found].astype(np.int64) | view[found + 1].astype(np.int64) << 8
                                | view[found + 2].astype(np.int64) << 16)
            if ends[-1] <= size:
                if found[0] != 0 or not np.array_equal(ends[:-1], found[1:]):
                    return None
                return np.append(found, ends[-1]) + start
        if whole:
            return None
        window = max(2 * window, int(window * count / max(len(found), 1) * 1.2))


def _plain(value: Any) -> Any:
    """A numeric array as the Python list gguf-py's reader gives; anything else as it is."""
    return value.tolist() if isinstance(value, np.ndarray) else value


@dataclass
class _LazyStrings:
    """Where a string array lies in the file; decoded only when asked for."""

    data: Any
    start: int
    count: int
    offsets: np.ndarray  # each string's start (its length field), then the end of the last one

    def decode(self) -> list[str]:
        bounds, data = self.offsets.tolist(), self.data
        return [data[a + 8 : b].decode("utf-8", errors="replace") for a, b in zip(bounds, bounds[1:])]

    def joined(self) -> bytes:
        """The strings' bytes as stored, each after the first preceded by one NUL byte."""
        starts, end = self.offsets[:-1], int(self.offsets[-1])
        region = np.frombuffer(self.data, dtype=np.uint8, count=end - self.start, offset=self.start)
        keep = np.ones(len(region), dtype=bool)
        for k in range(7):  # drop the length fields; the last byte of each (zero: lengths < 2**56) is the separator
            keep[starts - self.start + k] = False
        keep[7] = False  # no separator before the first string
        return region[keep].tobytes()


@dataclass
class GGUFField:
    """One metadata entry; ``start:end`` is its raw byte span (key included).

    String arrays (tokenizer vocabularies, merges) are decoded on first use of
    ``value``: most commands never read the merges.
    """

    key: str
    type: GGUFValueType
    start: int
    end: int
    _value: Any
    sub_type: GGUFValueType | None = None
    _strings: _LazyStrings | None = None  # a string array's place in the file (its value is decoded on first use)

    @property
    def value(self) -> Any:
        if self._value is None and self._strings is not None:
            self._value = self._strings.decode()
        self._value = _plain(self._value)
        return self._value

    @property
    def count(self) -> int:
        """How many items an array holds."""
        return self._strings.count if self._strings is not None else len(self._value)

    def joined_strings(self) -> bytes:
        """A string array's UTF-8 bytes as stored, joined by NUL bytes, without decoding each string."""
        if self._strings is None:
            raise ValueError(f"{self.key} is not a string array")
        return self._strings.joined()


@dataclass
class GGUFTensor:
    """One tensor's info; ``shape`` is in GGUF ``ne`` order (contiguous dimension first)."""

    name: str
    shape: tuple[int, ...]
    tensor_type: GGMLQuantizationType
    offset: int  # relative to the data section
    data_offset: int  # absolute
    n_bytes: int
    _buffer: np.ndarray

    @property
    def data(self) -> np.ndarray:
        """The raw tensor like gguf-py gives it: reversed ``ne``; uint8 rows for quantized types."""
        raw = self._buffer[self.data_offset : self.data_offset + self.n_bytes]
        shape = tuple(reversed(self.shape))
        if self.tensor_type in _NUMPY_FLOATS:
            return raw.view(_NUMPY_FLOATS[self.tensor_type]).reshape(shape)
        block_size, type_size = GGML_QUANT_SIZES[self.tensor_type]
        return raw.reshape(shape[:-1] + (shape[-1] // block_size * type_size,))


class GGUFFile:
    """Parsed header of a GGUF file, memory-mapped read-only."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            # A FIFO or device would block or never end: only regular files are models.
            if not stat.S_ISREG(os.stat(self.path).st_mode):
                raise SteerkitError(f"{self.path}: not a regular file")
            self.buffer = np.memmap(self.path, dtype=np.uint8, mode="r")
        except (OSError, ValueError) as exc:
            raise SteerkitError(f"{self.path}: cannot read ({exc})") from exc
        try:
            with open(self.path, "rb") as handle:
                # Python's mmap slices to bytes directly: the fastest way to walk 100k header strings.
                self._bytes = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:
            raise SteerkitError(f"{self.path}: cannot read ({exc})") from exc
        try:
            self._parse()
        except _Truncated:
            raise SteerkitError(f"{self.path}: truncated GGUF (the header runs past the end of the file)") from None
        except (struct.error, UnicodeDecodeError, ValueError, KeyError) as exc:
            raise SteerkitError(f"{self.path}: damaged GGUF header ({type(exc).__name__}: {exc})") from exc

    # -- parsing -------------------------------------------------------------------------
    def _read(self, fmt: str) -> Any:
        layout = _STRUCTS.get(fmt) or _STRUCTS.setdefault(fmt, struct.Struct(fmt))
        if self.pos + layout.size > len(self._bytes):
            raise _Truncated
        (value,) = layout.unpack_from(self._bytes, self.pos)
        self.pos += layout.size
        return value

    def _string(self) -> str:
        length = self._read("<Q")
        if self.pos + length > len(self._bytes):
            raise _Truncated
        text = self._bytes[self.pos : self.pos + length].decode("utf-8", errors="replace")
        self.pos += length
        return text

    def _walk_strings(self, count: int) -> np.ndarray:
        """Walk ``count`` length-prefixed strings from ``pos``: their starts, then the end of the last one."""
        data, pos, end = self._bytes, self.pos, len(self._bytes)
        unpack = _U64.unpack_from
        offsets = []
        for _ in range(count):
            if pos + 8 > end:
                raise _Truncated
            offsets.append(pos)
            pos += 8 + unpack(data, pos)[0]
        if pos > end:
            raise _Truncated
        self.pos = pos
        offsets.append(pos)
        return np.array(offsets, dtype=np.int64)

    def _value(self, value_type: GGUFValueType, key: str) -> tuple[Any, GGUFValueType | None]:
        if value_type == GGUFValueType.STRING:
            return self._string(), None
        if value_type == GGUFValueType.ARRAY:
            item_type = self._value_type(key)
            if item_type == GGUFValueType.ARRAY:
                raise self._damaged(f"metadata key {key!r} holds an array of arrays (llama.cpp refuses them)")
            count = self._read("<Q")
            if item_type in _SCALARS:
                fmt = _SCALARS[item_type]
                size = struct.calcsize(fmt)
                if self.pos + size * count > len(self._bytes):
                    raise _Truncated
                # Kept as an array until read: Gemma's scores and token types (2 x 262k) cost 14 ms as lists.
                values = np.frombuffer(self._bytes, dtype=np.dtype(fmt), count=count, offset=self.pos)
                self.pos += size * count
                return values, item_type
            if item_type == GGUFValueType.STRING:
                start = self.pos
                offsets = _string_offsets(self.buffer, start, count) if count >= _VECTOR_WALK else None
                if offsets is None:
                    offsets = self._walk_strings(count)
                self.pos = int(offsets[-1])
                return _LazyStrings(self._bytes, start, count, offsets), item_type
            raise self._damaged(f"metadata key {key!r} holds an array of {item_type.name}")
        return self._read(_SCALARS[value_type]), None

    def _parse(self) -> None:
        self.pos = 0
        if self._bytes[:4] != b"GGUF":
            raise SteerkitError(f"{self.path}: not a GGUF file (bad magic {self._bytes[:4]!r})")
        self.pos = 4
        self.version = self._read("<I")
        if self.version not in (2, 3):
            raise SteerkitError(f"{self.path}: unsupported GGUF version {self.version}")
        n_tensors, n_fields = self._read("<Q"), self._read("<Q")
        room = len(self._bytes) - self.pos
        # Each entry takes at least 13 (metadata) or 25 (tensor info) bytes: bound the loops by the file.
        if n_fields > room // 13 or n_tensors > room // 25:
            raise self._damaged(f"the header claims {n_fields} metadata entries and {n_tensors} tensors, "
                                f"more than its {len(self._bytes)} bytes can hold")
        self.fields: dict[str, GGUFField] = {}
        for _ in range(n_fields):
            start = self.pos
            key = self._string()
            if not key:
                raise self._damaged("a metadata key is empty")
            if key in self.fields:
                raise self._damaged(f"metadata key {key!r} appears twice")
            value_type = self._value_type(key)
            value, sub_type = self._value(value_type, key)
            if isinstance(value, _LazyStrings):
                self.fields[key] = GGUFField(key, value_type, start, self.pos, None, sub_type, value)
            else:
                self.fields[key] = GGUFField(key, value_type, start, self.pos, value, sub_type)
        self.alignment = self._alignment()
        infos = []
        names: set[str] = set()
        for _ in range(n_tensors):
            name = self._string()
            if len(name.encode("utf-8", "surrogatepass")) >= _MAX_TENSOR_NAME:
                raise self._damaged(f"tensor name {name[:80]!r} is {len(name)} bytes long (llama.cpp takes under "
                                    f"{_MAX_TENSOR_NAME})")
            if name in names:
                raise self._damaged(f"tensor {name!r} appears twice")
            names.add(name)
            n_dims = self._read("<I")
            if n_dims > _MAX_DIMS:
                raise self._damaged(f"tensor {name!r} has {n_dims} dimensions (at most {_MAX_DIMS})")
            shape = tuple(self._read("<Q") for _ in range(n_dims))
            type_id = self._read("<I")
            try:
                tensor_type = GGMLQuantizationType(type_id)
                block_size, type_size = GGML_QUANT_SIZES[tensor_type]
            except (ValueError, KeyError):
                raise self._damaged(f"tensor {name!r} has unknown type {type_id}") from None
            if any(n >= 1 << 63 for n in shape) or math.prod(shape) >= 1 << 63:
                raise self._damaged(f"tensor {name!r} has shape {shape}: too many elements")
            if shape and shape[0] % block_size:
                raise self._damaged(f"tensor {name!r} ({tensor_type.name}) has rows of {shape[0]} values, "
                                    f"not a multiple of its block of {block_size}")
            infos.append((name, shape, tensor_type, self._read("<Q"), math.prod(shape) // block_size * type_size))
        self.data_start = -(-self.pos // self.alignment) * self.alignment
        self.tensors: list[GGUFTensor] = []
        expected = 0
        for name, shape, tensor_type, offset, n_bytes in infos:
            # llama.cpp requires the tensors back to back in header order, each padded to the alignment.
            if offset != expected:
                raise self._damaged(f"tensor {name!r} is at data offset {offset}, expected {expected} "
                                    f"(tensors must follow each other, aligned to {self.alignment})")
            start = self.data_start + offset
            if start + n_bytes > len(self._bytes):
                raise SteerkitError(f"{self.path}: truncated GGUF (tensor {name} runs past the end of the file)")
            self.tensors.append(GGUFTensor(name, shape, tensor_type, offset, start, n_bytes, self.buffer))
            expected = offset + -(-n_bytes // self.alignment) * self.alignment

    def _damaged(self, problem: str) -> SteerkitError:
        return SteerkitError(f"{self.path}: damaged GGUF: {problem}")

    def _value_type(self, key: str) -> GGUFValueType:
        type_id = self._read("<I")
        try:
            return GGUFValueType(type_id)
        except ValueError:
            raise self._damaged(f"metadata key {key!r} has unknown value type {type_id}") from None

    def _alignment(self) -> int:
        """``general.alignment``: a u32 power of two, as llama.cpp requires (default 32)."""
        field = self.fields.get("general.alignment")
        if field is None:
            return 32
        if field.type != GGUFValueType.UINT32:
            raise self._damaged(f"general.alignment must be a UINT32, not {field.type.name}")
        alignment = int(field.value)
        if alignment <= 0 or alignment & (alignment - 1):
            raise self._damaged(f"general.alignment is {alignment}, not a power of two")
        return alignment

    # -- access --------------------------------------------------------------------------
    def value(self, key: str, default: Any = None) -> Any:
        """A metadata value (``default`` if absent)."""
        field = self.fields.get(key)
        return default if field is None else field.value

    def typed(self, key: str, kind: str, default: Any = None) -> Any:
        """A metadata value checked to be of ``kind``; ``default`` if absent; a one-line error naming the key if not.

        ``kind``: ``"string"``, ``"int"`` or ``"float"`` (a per-layer array of them gives its first
        item, as llama.cpp's ``feed_forward_length`` arrays do), or ``"strings"`` (a string array).
        """
        field = self.fields.get(key)
        if field is None:
            return default
        item = field.sub_type if field.type == GGUFValueType.ARRAY else field.type
        wanted = {"string": {GGUFValueType.STRING}, "strings": {GGUFValueType.STRING}, "int": _INTEGER_TYPES,
                  "float": _INTEGER_TYPES | {GGUFValueType.FLOAT32, GGUFValueType.FLOAT64}}[kind]
        is_array = field.type == GGUFValueType.ARRAY
        if item not in wanted or is_array != (kind == "strings") and not (is_array and kind in ("int", "float")):
            got = f"an array of {item.name}" if is_array else item.name
            raise SteerkitError(f"{self.path}: GGUF metadata {key}: expected {_KIND_NAMES[kind]}, got {got}")
        value = field.value
        if is_array and kind != "strings":
            if not value:
                raise SteerkitError(f"{self.path}: GGUF metadata {key}: the array is empty")
            value = value[0]
        if kind == "float" and not math.isfinite(value):
            raise SteerkitError(f"{self.path}: GGUF metadata {key}: expected a finite number, got {value}")
        return value

    def release(self, tensor: GGUFTensor) -> None:
        """Drop a tensor's pages from this process's resident memory once it has been read.

        Mapped file pages count as resident until the kernel reclaims them; on
        a multi-GB model, walking every layer would otherwise grow RSS to the
        file size.  The data stays readable (pages fault back in on access).
        """
        handle = getattr(self.buffer, "_mmap", None)
        if handle is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        page = mmap.PAGESIZE
        start = tensor.data_offset // page * page
        handle.madvise(mmap.MADV_DONTNEED, start, tensor.data_offset + tensor.n_bytes - start)

    def raw_field(self, key: str) -> bytes:
        """A metadata entry's bytes exactly as stored (key, type and value)."""
        field = self.fields[key]
        return self._bytes[field.start : field.end]
