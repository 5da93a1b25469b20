"""llama.cpp runtime speed, each figure a ratio to a baseline measured in the same run.

    python bench/bench_llamacpp.py [--rounds 5] [--big-gb 0]

1. Patching the default model (the dog profile) vs ``shutil.copyfile`` of it.
2. Greedy decoding tokens/s of the patched model vs the unpatched one (llama-cpp-python).
3. With ``--big-gb N``: a synthetic llama GGUF of about N GB (random Q8_0 blocks) is
   written, then patched in a child process; its peak RSS is printed next to the
   file size, to show memory does not grow with the model.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from steerkit.runtimes.llamacpp import patch_gguf
from steerkit.runtimes.llamacpp.model import LlamaCppModel
from steerkit.profile import load_profile
from steerkit.shipped import shipped_profile
from steerkit.sources import resolve_model


def patch_vs_copy(source: Path, folder: Path, rounds: int) -> None:
    profile = [load_profile(shipped_profile("dog-clamp"))]
    patch, copy = [], []
    for _ in range(rounds):
        for old in ("copy.gguf", "dog.gguf"):  # both write a new file: freeing an old one is not timed
            (folder / old).unlink(missing_ok=True)
        start = time.perf_counter()
        shutil.copyfile(source, folder / "copy.gguf")
        copy.append(time.perf_counter() - start)
        start = time.perf_counter()
        patch_gguf(source, profile, folder / "dog.gguf", progress=False)
        patch.append(time.perf_counter() - start)
    p, c = statistics.median(patch), statistics.median(copy)
    print(f"patch {p:.3f} s, copyfile {c:.3f} s, ratio {p / c:.2f} ({source.stat().st_size / 1e6:.0f} MB, median of {rounds}; "
          f"first round {patch[0]:.3f} s vs {copy[0]:.3f} s)")


def decode_speed(source: Path, patched: Path, rounds: int) -> None:
    messages = [{"role": "user", "content": "Write a short poem about the sea."}]
    models = {"unpatched": LlamaCppModel(source), "patched": LlamaCppModel(patched)}
    speeds: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            model.llm.reset()
            start = time.perf_counter()
            out = model.llm.create_chat_completion(messages, max_tokens=64, temperature=0, top_k=1)
            speeds[name].append(out["usage"]["completion_tokens"] / (time.perf_counter() - start))
    u, p = statistics.median(speeds["unpatched"]), statistics.median(speeds["patched"])
    print(f"decoding: unpatched {u:.1f} tokens/s, patched {p:.1f} tokens/s, ratio {p / u:.3f} (median of {rounds})")


def write_big_model(path: Path, gigabytes: float) -> None:
    from gguf import GGMLQuantizationType as Q, GGUFWriter

    d, d_ff, vocab = 2048, 8192, 32000
    per_layer = 3 * d * d_ff * 34 / 32
    n_layers = max(2, int(gigabytes * 1e9 / per_layer))
    rng = np.random.default_rng(0)
    writer = GGUFWriter(str(path), "llama")
    writer.add_block_count(n_layers)
    writer.add_embedding_length(d)
    writer.add_feed_forward_length(d_ff)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_token_list([f"t{i}" for i in range(vocab)])
    writer.add_tensor("token_embd.weight", rng.normal(size=(vocab, d)).astype(np.float16))
    writer.add_tensor("output_norm.weight", np.ones(d, dtype=np.float32))

    def q8(rows: int, cols: int) -> np.ndarray:
        blocks = rng.integers(0, 256, size=(rows, cols // 32, 34), dtype=np.uint8)
        blocks[:, :, 0:2] = np.full(blocks.shape[:2], 0.01, dtype=np.float16)[..., None].view(np.uint8)
        return blocks.reshape(rows, -1)

    for i in range(n_layers):
        writer.add_tensor(f"blk.{i}.ffn_up.weight", q8(d_ff, d), raw_dtype=Q.Q8_0)
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", q8(d_ff, d), raw_dtype=Q.Q8_0)
        writer.add_tensor(f"blk.{i}.ffn_down.weight", q8(d, d_ff), raw_dtype=Q.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


_CHILD = """
import re, sys, time
from steerkit.runtimes.llamacpp import patch_gguf, gguf_binding
from steerkit.profile import Edit, Profile
from steerkit.weights.gguf_reader import GGUFWeights
source, out = sys.argv[1], sys.argv[2]
binding = gguf_binding(GGUFWeights(source))
edits = [Edit(l, 7, "clamp", 3.0) for l in range(binding.n_layers)] + [Edit(l, 9, "scale", 2.0) for l in range(binding.n_layers)]
start = time.perf_counter()
patch_gguf(source, [Profile("big", binding, edits)], out, progress=False)
print(time.perf_counter() - start)
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent across execve.
print(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
"""


def big_memory(folder: Path, gigabytes: float) -> None:
    source, out = folder / "big.gguf", folder / "big-patched.gguf"
    write_big_model(source, gigabytes)
    start = time.perf_counter()
    shutil.copyfile(source, folder / "big-copy.gguf")
    copy = time.perf_counter() - start
    (folder / "big-copy.gguf").unlink()
    start = time.perf_counter()
    lines = subprocess.run([sys.executable, "-c", _CHILD, str(source), str(out)], capture_output=True, text=True,
                           check=True).stdout.split()
    elapsed, peak_kb = float(lines[-2]), int(lines[-1])
    print(f"big model {source.stat().st_size / 1e9:.2f} GB, an edit in every layer: patched in {elapsed:.1f} s "
          f"vs copyfile {copy:.1f} s (ratio {elapsed / copy:.2f}); peak RSS of the patching process "
          f"{peak_kb / 1e6:.2f} GB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--big-gb", type=float, default=0.0)
    args = parser.parse_args()
    source = resolve_model().path
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        patch_vs_copy(source, folder, args.rounds)
        decode_speed(source, folder / "dog.gguf", args.rounds)
        if args.big_gb > 0:
            big_memory(folder, args.big_gb)


if __name__ == "__main__":
    main()
