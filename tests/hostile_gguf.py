"""Build GGUF files byte by byte, valid or hostile, for the hardening tests.

gguf-py's writer refuses most of what a hostile file holds (duplicate names,
odd alignments, nested arrays), so the tests write the format themselves:
magic, version, counts, metadata entries, tensor infos, padding, data.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

# GGUF value types
U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
_PACK = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<?", U64: "<Q",
         I64: "<q", F64: "<d"}
GGML_F32 = 0


def pack_string(text: str | bytes) -> bytes:
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    return struct.pack("<Q", len(data)) + data


def pack_value(value_type: int, value, item_type: int | None = None) -> bytes:
    if value_type == STRING:
        return pack_string(value)
    if value_type == ARRAY and isinstance(value, bytes):  # an array packed by the caller (nesting)
        return value
    if value_type == ARRAY:
        body = b"".join(pack_value(item_type, v, None) for v in value)
        return struct.pack("<IQ", item_type, len(value)) + body
    return struct.pack(_PACK[value_type], value)


@dataclass
class RawGGUF:
    """A GGUF as lists of metadata entries and tensors; :meth:`bytes` lays it out."""

    kv: list[tuple[str, int, object, int | None]] = field(default_factory=list)  # key, type, value, item type
    tensors: list[tuple[str, tuple[int, ...], int, int | None, bytes]] = field(default_factory=list)
    alignment: int = 32
    version: int = 3
    n_kv: int | None = None  # lie about the counts
    n_tensors: int | None = None

    def bytes(self) -> bytes:
        head = b"GGUF" + struct.pack("<IQQ", self.version,
                                     len(self.tensors) if self.n_tensors is None else self.n_tensors,
                                     len(self.kv) if self.n_kv is None else self.n_kv)
        for key, value_type, value, item_type in self.kv:
            head += pack_string(key) + struct.pack("<I", value_type) + pack_value(value_type, value, item_type)
        offset, data = 0, b""
        pad = max(self.alignment, 1)
        for name, shape, tensor_type, explicit_offset, payload in self.tensors:
            head += pack_string(name) + struct.pack("<I", len(shape)) + struct.pack(f"<{len(shape)}Q", *shape)
            head += struct.pack("<IQ", tensor_type, offset if explicit_offset is None else explicit_offset)
            data += payload + b"\0" * (-len(payload) % pad)
            offset = len(data)
        head += b"\0" * (-len(head) % pad)
        return head + data


def nested_array(depth: int) -> bytes:
    """An array of arrays ``depth`` deep around ``[1]`` (u8): the value bytes of an ARRAY entry."""
    return struct.pack("<IQ", ARRAY, 1) * depth + struct.pack("<IQ", U8, 1) + b"\x01"


def tiny_llama(d_model: int = 8, d_ff: int = 16, vocab: int = 12, layers: int = 2, seed: int = 0) -> RawGGUF:
    """A complete (random, F32) llama GGUF that steerkit and llama.cpp's header reader accept."""
    rng = np.random.default_rng(seed)

    def f32(*shape_ne: int) -> bytes:
        return rng.normal(size=int(np.prod(shape_ne))).astype(np.float32).tobytes()

    gguf = RawGGUF()
    gguf.kv = [
        ("general.architecture", STRING, "llama", None),
        ("general.alignment", U32, 32, None),
        ("llama.block_count", U32, layers, None),
        ("llama.embedding_length", U32, d_model, None),
        ("llama.feed_forward_length", U32, d_ff, None),
        ("llama.attention.layer_norm_rms_epsilon", F32, 1e-5, None),
        ("tokenizer.ggml.tokens", ARRAY, [f"t{i}" for i in range(vocab)], STRING),
    ]
    gguf.tensors = [("token_embd.weight", (d_model, vocab), GGML_F32, None, f32(d_model, vocab)),
                    ("output_norm.weight", (d_model,), GGML_F32, None, f32(d_model))]
    for layer in range(layers):
        gguf.tensors += [
            (f"blk.{layer}.ffn_up.weight", (d_model, d_ff), GGML_F32, None, f32(d_model, d_ff)),
            (f"blk.{layer}.ffn_gate.weight", (d_model, d_ff), GGML_F32, None, f32(d_model, d_ff)),
            (f"blk.{layer}.ffn_down.weight", (d_ff, d_model), GGML_F32, None, f32(d_ff, d_model)),
        ]
    return gguf
