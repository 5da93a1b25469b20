"""The atlas and a first `find` on Llama-3-8B-shaped layers: measured on a few, projected to the whole model.

    python bench/bench_8b.py [--layers 2] [--rows 1024] [--device cpu|cuda] [--type Q4_0] [--find]

Writes a GGUF with ``--layers`` random llama layers of the 8B shapes
(d_model 4096, d_ff 14,336, vocabulary 128,256; FFN matrices quantized as
``--type``, the LM head F16), then measures on the machine at hand:

* dequantizing one ``ffn_up`` and one ``ffn_down`` matrix (what the atlas reads per layer);
* :func:`steerkit.full_decode.decode_side` on ``--rows`` neurons of each (the whole
  vocabulary, top-k and both log-sum-exps) against the bare GEMM of the same
  shape and dtype, in the precision :mod:`steerkit.precision` picks;
* `find` without an atlas (:func:`steerkit.find.quick_find`): its screening pass on whole matrices and
  its second pass on the share of neuron sides it keeps;

and projects the full 32-layer atlas (time per row x 14,336 rows x 2 sides x
32 layers, plus dequantization) and a first `find dog` without an atlas.  A
row count below 14,336 is exact for the projection because the GEMM's time
is linear in its rows; the figure says how many were measured.  ``--find``
writes all 32 layers (one layer's random matrices repeated) and also times a
first ``steerkit find dog`` on that file end to end, in its own process with
an empty cache.  Results go
to ``bench/results/atlas-8b-<device>[-<cpu kind>].json`` (``cpu-amx``, ``cpu-avx512-bf16``, ``cpu-avx2``, ``cuda``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from steerkit.full_decode import CHUNK_VOCAB, decode_side, head_operands
from steerkit.cache import atomic_write
from steerkit.decode import rms_normalize
from steerkit.precision import check_device, choose_precision, cpu_kind

RESULTS = Path(__file__).resolve().parent / "results"
D_MODEL, D_FF, VOCAB, N_LAYERS = 4096, 14336, 128256, 32
WORD_TOKENS = ("Ġdog", "dog", "ĠDog", "Dog")  # the first token ids: what `find dog` looks up


def write_model(path: Path, layers: int, ffn_type: str) -> Path:
    """A llama GGUF of 8B shapes with ``layers`` random layers (FFN and norms only: all the atlas reads)."""
    from gguf import GGMLQuantizationType, GGUFWriter
    from gguf.quants import quantize

    quant = GGMLQuantizationType[ffn_type]
    rng = np.random.default_rng(0)
    # One random layer's quantized matrices stand for every layer: the timings do not depend on the values, and
    # quantizing 32 layers in numpy would take longer than what is measured.
    ffn = {name: quantize(rng.standard_normal(shape, dtype=np.float32) * 0.02, quant)
           for name, shape in (("ffn_up", (D_FF, D_MODEL)), ("ffn_gate", (D_FF, D_MODEL)), ("ffn_down", (D_MODEL, D_FF)))}
    writer = GGUFWriter(str(path), "llama")
    writer.add_block_count(layers)
    writer.add_embedding_length(D_MODEL)
    writer.add_feed_forward_length(D_FF)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(list(WORD_TOKENS) + [f"t{i}" for i in range(len(WORD_TOKENS), VOCAB)])
    writer.add_tensor("token_embd.weight", (rng.standard_normal((VOCAB, D_MODEL), dtype=np.float32) * 0.02)
                      .astype(np.float16))
    writer.add_tensor("output_norm.weight", np.ones(D_MODEL, dtype=np.float32))
    for layer in range(layers):
        for name, data in ffn.items():
            writer.add_tensor(f"blk.{layer}.{name}.weight", data, raw_dtype=quant)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _timed(fn, device: str):
    started = time.perf_counter()
    result = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return result, time.perf_counter() - started


def measure(path: Path, layers: int, rows: int, device: str) -> dict:
    from steerkit.find import DECODE, KEEP, SAMPLE, SCREEN, sampled_estimate
    from steerkit.weights import open_weights

    reader = open_weights(str(path))
    precision = choose_precision(device, reader.info.d_model, reader.info.vocab_size)
    gain = torch.from_numpy(reader.norm_gain()).to(device)
    unembedding_t, fast = head_operands(reader.unembedding(), device, precision.dtype)
    matrix = fast if fast is not None else unembedding_t
    dequant = decode = bare = screen = 0.0
    head = reader.unembedding()
    word = torch.from_numpy(head[:len(WORD_TOKENS)]).T.contiguous().to(device)  # the word's tokens
    screen_columns = torch.from_numpy(head[len(WORD_TOKENS):len(WORD_TOKENS) + SCREEN]).T.contiguous().to(device)
    sample_columns = torch.from_numpy(head[len(WORD_TOKENS):len(WORD_TOKENS) + SAMPLE]).T.contiguous().to(device)
    for layer in range(layers):
        for side in ("read", "write"):
            vectors, seconds = _timed(lambda: reader.side_vectors(layer, side), "cpu")
            dequant += seconds
            whole = torch.from_numpy(vectors).to(device)
            part = whole[:rows]
            decode_side(part[:8], gain, unembedding_t, 1e-5, 10, fast)  # warm-up
            decode += _timed(lambda: decode_side(part, gain, unembedding_t, 1e-5, 10, fast), device)[1]
            normed = rms_normalize(part, gain, 1e-5).to(matrix.dtype)
            bare += _timed(lambda: [normed @ matrix[:, s:s + CHUNK_VOCAB] for s in range(0, VOCAB, CHUNK_VOCAB)],
                           device)[1]
            screen += _timed(lambda: sampled_estimate(whole, word, screen_columns, 5.0, 1e-5)
                             .amax(1), device)[1]
    # find's second pass: the kept share of all 32 x 2 x 14,336 neuron sides on the whole sample.
    pool = int(np.ceil(KEEP * N_LAYERS * 2 * D_FF))
    kept = whole[torch.arange(pool, device=device) % D_FF]
    refine = _timed(lambda: sampled_estimate(kept, word, sample_columns, 3.0, 1e-5), device)[1]
    matrices = 2 * layers
    per_row = decode / (matrices * rows)
    atlas = N_LAYERS * 2 * (D_FF * per_row + dequant / matrices)
    first_find = N_LAYERS * 2 * (dequant + screen) / matrices + refine + DECODE * per_row
    return {
        "device": device, "machine": platform.processor() or platform.machine(),
        "cpu_kind": cpu_kind(),
        "torch_threads": torch.get_num_threads(), "dtype": precision.label, "precision_reason": precision.reason,
        "shapes": {"layers": N_LAYERS, "d_model": D_MODEL, "d_ff": D_FF, "vocab": VOCAB},
        "measured": {"layers": layers, "rows_per_matrix": rows, "ffn_type": path.stem.split("-")[-1]},
        "dequantize_seconds_per_matrix": dequant / matrices,
        "decode_seconds_per_row": per_row,
        "bare_gemm_seconds_per_row": bare / (matrices * rows),
        "atlas_to_bare_gemm": decode / bare,
        "find_screen_seconds_per_matrix": screen / matrices,
        "find_refine_seconds": refine,
        "find_refined_sides": pool,
        "projected_atlas_seconds": atlas,
        "projected_first_find_seconds": first_find,
        "chunk_logits_bytes": D_FF * CHUNK_VOCAB * 4,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,
    }


def time_first_find(path: Path, word: str = "dog") -> dict:
    """``steerkit find WORD --model PATH`` in a fresh process with an empty cache: what a user's first ``find``
    costs end to end (hashing the file, reading, screening and decoding), and its peak memory."""
    with tempfile.TemporaryDirectory() as cache:
        started = time.perf_counter()
        run = subprocess.run([sys.executable, "-m", "steerkit.cli", "find", word, "--model", str(path), "-n", "3"],
                             env={**os.environ, "STEERKIT_CACHE": cache}, capture_output=True, text=True)
        seconds = time.perf_counter() - started
    if run.returncode:
        raise SystemExit(f"steerkit find failed: {run.stderr.strip().splitlines()[-1:]}")
    return {"word": word, "seconds": seconds, "peak_rss_gib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2 ** 20,
            "listing": run.stdout.splitlines()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--rows", type=int, default=1024, help="Neurons per matrix decoded (of 14,336).")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--type", default="Q4_0", help="gguf-py quantization type of the FFN matrices.")
    parser.add_argument("--find", action="store_true",
                        help="Write all 32 layers (a 4.2 GB GGUF) and time a first `steerkit find dog` on it end to end.")
    args = parser.parse_args()
    check_device(args.device)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"llama-8b-shapes-{args.type}.gguf"
        written = N_LAYERS if args.find else args.layers
        print(f"writing {written} random 8B-shaped layers ({args.type}) ...", flush=True)
        write_model(path, written, args.type)
        first_find = None
        if args.find:  # first, so that the peak memory of child processes is this one's
            print("timing a first `steerkit find dog` on the whole model ...", flush=True)
            first_find = time_first_find(path)
        result = measure(path, args.layers, min(args.rows, D_FF), args.device)
        if first_find:
            result["measured_first_find"] = first_find
    RESULTS.mkdir(exist_ok=True)
    kind = args.device.partition(":")[0]
    out = RESULTS / f"atlas-8b-{kind}{'-' + cpu_kind() if kind == 'cpu' else ''}.json"
    with atomic_write(out, suffix=".json") as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    print(f"projected full atlas: {result['projected_atlas_seconds'] / 60:.1f} min "
          f"({result['atlas_to_bare_gemm']:.2f}x the bare GEMM, {result['dtype']}); first `find` without an atlas: "
          f"{result['projected_first_find_seconds']:.0f} s projected"
          + (f", {first_find['seconds']:.0f} s measured" if first_find else ""))


if __name__ == "__main__":
    main()
