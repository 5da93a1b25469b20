"""Write a GGUF that is an existing file plus a few metadata keys and tensors, streaming.

Kept metadata is copied byte for byte from the source header; the tensor
data section is copied file to file with the source's own offsets, then the
edited bytes are written over it; new tensors go after it.  Only the edited
bytes are ever held in memory.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType

from steerkit.errors import SteerkitError
from steerkit.gguf_file import GGUFFile

__all__ = ["pack_string_kv", "pack_string_array_kv", "write_gguf_copy", "check_finite"]

_PAGE = 4096
_COPY_ALIGNMENT = 1 << 16  # where the destination's page-aligned copy should start (see _copy_padding)


def _pack_string(text: str) -> bytes:
    data = text.encode("utf-8")
    return struct.pack("<Q", len(data)) + data


def pack_string_kv(key: str, value: str) -> bytes:
    """A GGUF metadata entry holding a string."""
    return _pack_string(key) + struct.pack("<I", GGUFValueType.STRING) + _pack_string(value)


def pack_string_array_kv(key: str, values: list[str]) -> bytes:
    """A GGUF metadata entry holding an array of strings."""
    head = _pack_string(key) + struct.pack("<IIQ", GGUFValueType.ARRAY, GGUFValueType.STRING, len(values))
    return head + b"".join(_pack_string(v) for v in values)


def check_finite(name: str, data: np.ndarray) -> None:
    """Refuse to write a float tensor holding inf or NaN (an edit too large for the weights' type)."""
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        raise SteerkitError(f"{name}: the edits would write non-finite values (too large for this tensor's type); "
                            f"use a smaller value or strength")


def _pad(size: int, alignment: int) -> int:
    return -(-size // alignment) * alignment


def write_gguf_copy(
    source: GGUFFile,
    target: Path,
    drop_keys: Callable[[str], bool],
    new_kv: list[bytes],
    replaced: dict[str, np.ndarray],
    added: dict[str, np.ndarray],
    on_bytes: Callable[[int], None] = lambda n: None,
    row_patches: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
    padding_key: str | None = None,
) -> None:
    """Write ``source`` to ``target`` with keys dropped/added and tensors replaced/added.

    ``replaced`` tensors must keep their type and byte size; ``added`` ones are
    F32.  ``row_patches`` maps a tensor to ``(row indices, new row bytes)``.
    Kept tensors keep their source offsets, so the whole data section is one
    file-to-file copy; replaced tensors and patched rows are then written over
    it (only they are ever held in memory), and added tensors go after it.
    With ``padding_key``, a string entry of that name pads the header so that
    the data section lands where the kernel copies it fastest (:func:`_copy_padding`).
    """
    row_patches = row_patches or {}
    for name, data in (*replaced.items(), *added.items()):
        check_finite(name, data)
    fields = [f for f in source.fields.values() if not drop_keys(f.key)]
    for name, data in replaced.items():
        size = next(t.n_bytes for t in source.tensors if t.name == name)
        if data.nbytes != size:
            raise ValueError(f"replacement for {name} has {data.nbytes} bytes, expected {size}")
    alignment = source.alignment
    end = max((t.offset + t.n_bytes for t in source.tensors), default=0)
    infos = [(t.name, t.shape, t.tensor_type, t.offset) for t in source.tensors]
    added_offsets = []
    offset = _pad(end, alignment)
    for name, data in added.items():
        infos.append((name, tuple(reversed(data.shape)), GGMLQuantizationType.F32, offset))
        added_offsets.append(offset)
        offset = _pad(offset + data.nbytes, alignment)
    tensor_infos = b"".join(
        _pack_string(name) + struct.pack("<I", len(shape)) + struct.pack(f"<{len(shape)}Q", *shape)
        + struct.pack("<IQ", tensor_type, tensor_offset)
        for name, shape, tensor_type, tensor_offset in infos
    )
    entries = [source.raw_field(field.key) for field in fields] + list(new_kv)
    if padding_key:
        entries.append(_copy_padding(padding_key, 24 + sum(map(len, entries)) + len(tensor_infos), source.data_start,
                                     alignment))
    # No O_TRUNC: on ext4, truncating a file (even the empty one atomic_write made) makes its close
    # start writeback of everything written, which doubled the patch time of the 98 MB model.
    with os.fdopen(os.open(target, os.O_WRONLY | os.O_CREAT, 0o666), "wb") as out:
        out.write(b"GGUF" + struct.pack("<IQQ", 3, len(infos), len(entries)))
        for entry in entries:
            out.write(entry)
        out.write(tensor_infos)
        out.write(b"\0" * (_pad(out.tell(), alignment) - out.tell()))
        data_start = out.tell()
        out.flush()
        _reserve(out.fileno(), data_start + offset)
        with open(source.path, "rb") as src:
            _copy_range(src, out, source.data_start, end)
        on_bytes(end)
        for tensor in source.tensors:
            _overwrite(out, data_start + tensor.offset, tensor, replaced.get(tensor.name), row_patches.get(tensor.name))
        out.seek(data_start + end)
        for data, tensor_offset in zip(added.values(), added_offsets):
            out.write(b"\0" * (data_start + tensor_offset - out.tell()))
            out.write(np.ascontiguousarray(data).tobytes())
        out.write(b"\0" * (data_start + offset - out.tell()))
        if os.fstat(out.fileno()).st_size > out.tell():  # the target held a longer file
            out.truncate()


def _copy_padding(key: str, header_size: int, source_data_start: int, alignment: int) -> bytes:
    """A string entry that ends the header where the kernel copies the data section fastest.

    Measured on this machine's ext4 (kernel 6.18), copying the 98 MB model's data section:
    52 ms when the source offset is page aligned and the destination offset a multiple of
    64 KiB (as fast as ``shutil.copyfile``), 63-73 ms for other page-aligned pairs, ~125 ms
    when the two offsets differ modulo 4 KiB.  :func:`_copy_range` writes the source's
    first partial page by hand, so the data section starts that many bytes before a
    64 KiB boundary.  Alignments that do not divide 4 KiB get no padding entry's help.
    """
    fixed = len(_pack_string(key)) + 4 + 8  # key, value type, string length
    if _PAGE % alignment:  # the data start must stay a multiple of the alignment: no placement
        target = _pad(header_size + fixed, alignment)
    else:
        head = -source_data_start % _PAGE  # bytes before the source's first page boundary
        target = header_size + fixed
        target += (-head - target) % _COPY_ALIGNMENT
    return _pack_string(key) + struct.pack("<I", GGUFValueType.STRING) + _pack_string(" " * (target - header_size - fixed))


def _reserve(fd: int, size: int) -> None:
    """Allocate the whole output before copying into it.

    On this machine's ext4 the data section copies ~20 % faster into allocated blocks
    (42 vs 53 ms for the 98 MB model), and a full disk fails here, before any data is
    copied.  File systems without ``fallocate`` get glibc's emulation or nothing.
    """
    if not hasattr(os, "posix_fallocate"):
        return
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            raise


def _overwrite(out, start: int, tensor, data, row_patch) -> None:
    """Write a replaced tensor, or a tensor's patched rows, over the copied bytes at ``start``."""
    if data is not None:
        out.seek(start)
        out.write(np.ascontiguousarray(data).tobytes())
    if row_patch is not None:
        rows, row_bytes = row_patch
        width = tensor.n_bytes // int(np.prod(tensor.shape[1:]))
        for row, data_row in zip(rows.tolist(), row_bytes):
            out.seek(start + row * width)
            out.write(np.ascontiguousarray(data_row).tobytes())


def _copy_range(src, dst, offset: int, size: int) -> None:
    """Copy ``size`` bytes at ``offset`` of ``src`` to the end of ``dst``.

    A file-to-file copy (``copy_file_range`` where the OS has it, else 8 MB
    reads) rather than through the memory map: mapped pages would pile up in
    the process's resident memory on a multi-GB model.
    """
    # The part up to the source's first page boundary by hand: the kernel copies page-aligned ranges faster.
    head = min(-offset % _PAGE, size)
    src.seek(offset)
    dst.write(src.read(head))
    dst.flush()
    offset, size = offset + head, size - head
    remaining = size
    if hasattr(os, "copy_file_range"):
        try:
            while remaining:
                copied = os.copy_file_range(src.fileno(), dst.fileno(), min(remaining, 1 << 30), offset + size - remaining)
                if copied == 0:
                    break
                remaining -= copied
            dst.seek(0, os.SEEK_END)
        except OSError:
            pass  # e.g. across file systems on old kernels: fall back to reads
    src.seek(offset + size - remaining)
    while remaining:
        block = src.read(min(remaining, 8 << 20))
        if not block:
            raise ValueError(f"{src.name}: unexpected end of file")
        dst.write(block)
        remaining -= len(block)
