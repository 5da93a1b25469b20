"""An F32 copy of a quantized GGUF: the same weights transformers computes with, for exact-kernel parity checks.

llama.cpp multiplies quantized weights with activations quantized to 8 bits, so a
quantized GGUF never quite matches transformers (which runs the dequantized weights
in fp32).  On an F32 copy both runtimes compute with identical numbers, which
separates what a patch does from what quantized kernels do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGUFValueType, GGUFWriter
from gguf.quants import dequantize

from steerkit.gguf_file import GGUFFile

# Written by GGUFWriter itself, or describing the quantized original.
_SKIP = {"general.architecture", "general.alignment", "general.file_type", "general.quantization_version"}


def write_f32_copy(source: Path, target: Path) -> Path:
    """Write ``source`` with every tensor dequantized to F32 and the metadata kept."""
    file = GGUFFile(source)
    writer = GGUFWriter(str(target), file.value("general.architecture"))
    for key, field in file.fields.items():
        if key in _SKIP:
            continue
        if field.type == GGUFValueType.ARRAY:
            writer.add_key_value(key, list(field.value), field.type, sub_type=field.sub_type)
        else:
            writer.add_key_value(key, field.value, field.type)
    for tensor in file.tensors:
        weights = np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        writer.add_tensor(tensor.name, weights.reshape(tuple(reversed(tensor.shape))))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return target
