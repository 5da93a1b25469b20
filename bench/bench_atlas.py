"""Atlas speed vs the bare GEMM of the same shapes, measured in the same run.

    python bench/bench_atlas.py [--model smollm2-135m] [--repeat 2]

The baseline is the work no atlas can avoid: one plain ``[d_ff, d] @ [d, vocab]``
fp32 matmul per layer and side (a single torch call each), on the model's own
weights already dequantized in memory.
The atlas time includes reading and dequantizing the GGUF, RMS normalisation,
both top-k and both log-sum-exps.  Prints absolute times and the ratio.
"""

from __future__ import annotations

import argparse
import time

import torch

from steerkit.atlas import build_atlas
from steerkit.weights import open_weights


def bare_gemm_seconds(reader) -> float:
    info = reader.info
    unembedding_t = torch.from_numpy(reader.unembedding()).T.contiguous()
    matrices = [torch.from_numpy(reader.up_rows(layer)) for layer in range(info.n_layers)]
    start = time.perf_counter()
    for matrix in matrices:
        for _ in range(2):  # read and write side have the same shape
            matrix @ unembedding_t
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    reader = open_weights(args.model)
    info = reader.info
    print(f"{info.label}: {info.n_layers} layers x {info.d_ff} neurons, vocab {info.vocab_size}, threads {torch.get_num_threads()}")
    gemm, atlas = [], []
    for _ in range(args.repeat):  # interleave so machine noise hits both
        gemm.append(bare_gemm_seconds(reader))
        start = time.perf_counter()
        build_atlas(reader, top_k=10, progress=False)
        atlas.append(time.perf_counter() - start)
    g, a = min(gemm), min(atlas)
    print(f"bare GEMM (fp32, same shapes): {g:.2f} s")
    print(f"full atlas (read+dequantize, top-k, lse, both sides and signs): {a:.2f} s")
    print(f"ratio atlas / GEMM: {a / g:.2f}")


if __name__ == "__main__":
    main()
