"""How exact the bf16 atlas is against fp32, and how fast each is, on the default model.

    python bench/bench_precision.py [--layers 0 10 20 29 | --all] [--rows N] [--device cpu|cuda] [--emulate]

For each chosen layer and side, :func:`steerkit.full_decode.decode_side` runs in
fp32 and with bf16 candidates rescored in fp32 (what
:mod:`steerkit.precision` picks on hardware with native BF16), and the bench
reports, over every neuron view (neuron x sign):

* the share whose top-k token *sets* agree, and whose top token agrees;
* the largest log-sum-exp difference and the largest probability difference;
* seconds per matrix in each dtype, and their ratio.

It also prints which precision this machine would choose and why.  Results
go to ``bench/results/precision.json`` and ``precision.md`` (``precision-emulated.*`` with ``--emulate``).  ``--rows N`` takes the first N neurons of each
matrix: on a CPU without native BF16 a bf16 matmul runs ~7x slower than fp32 (the atlas never uses it
there), so a full layer takes minutes per side.  ``--emulate`` measures the bf16 path's errors at fp32 speed
instead: fp32 GEMMs on bf16-rounded head, operand and logits (``decode_side(..., emulate=torch.bfloat16)``); its
timings are then not bf16's.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from steerkit.full_decode import MARGIN, decode_side, head_operands
from steerkit.cache import atomic_write
from steerkit.decode import SIDES
from steerkit.precision import choose_precision
from steerkit.weights import open_weights

RESULTS = Path(__file__).resolve().parent / "results"
TOP_K = 10


def measure(layers: list[int], device: str, rows: int | None = None, emulate: bool = False) -> dict:
    reader = open_weights(None)
    info = reader.info
    gain = torch.from_numpy(reader.norm_gain()).to(device)
    unembedding_t, fast = head_operands(reader.unembedding(), device, torch.bfloat16)
    if emulate:
        fast = fast.float()
    sets = tops = views = 0
    lse_diff = prob_diff = 0.0
    seconds = {"float32": 0.0, "bfloat16": 0.0}
    for layer in layers:
        for side in SIDES:
            vectors = torch.from_numpy(reader.side_vectors(layer, side))[:rows]
            vectors = vectors.to(device)
            results = {}
            for label, matrix in (("float32", None), ("bfloat16", fast)):
                started = time.perf_counter()
                results[label] = decode_side(vectors, gain, unembedding_t, info.rms_eps, TOP_K, matrix,
                                             torch.bfloat16 if emulate and matrix is not None else None)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                seconds[label] += time.perf_counter() - started
            (ids, probs, lse), (ids_b, probs_b, lse_b) = results["float32"], results["bfloat16"]
            ids, ids_b = ids.cpu().numpy(), ids_b.cpu().numpy()
            sets += int((np.sort(ids, axis=-1) == np.sort(ids_b, axis=-1)).all(axis=-1).sum())
            tops += int((ids[..., 0] == ids_b[..., 0]).sum())
            views += ids.shape[0] * ids.shape[1]
            lse_diff = max(lse_diff, float((lse - lse_b).abs().max()))
            prob_diff = max(prob_diff, float((probs - probs_b).abs().max()))
        print(f"layer {layer}: sets {sets / views:.5f}, top-1 {tops / views:.6f}, max |lse| {lse_diff:.2e}", flush=True)
    chosen = choose_precision(device, info.d_model, info.vocab_size)
    return {
        "model": info.label, "device": device, "emulated": emulate, "margin": MARGIN, "machine": platform.processor() or platform.machine(),
        "layers": layers, "rows_per_matrix": rows or info.d_ff, "views": views, "top_k": TOP_K,
        "topk_set_agreement": sets / views, "top1_agreement": tops / views,
        "max_lse_difference": lse_diff, "max_probability_difference": prob_diff,
        "seconds_per_matrix": {k: v / (2 * len(layers)) for k, v in seconds.items()},
        "bf16_speedup": seconds["float32"] / seconds["bfloat16"],
        "chosen": {"dtype": chosen.label, "reason": chosen.reason},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, nargs="*", default=[0, 10, 20, 29])
    parser.add_argument("--all", action="store_true", help="Every layer.")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rows", type=int, default=None, help="Only the first ROWS neurons of each matrix.")
    parser.add_argument("--emulate", action="store_true", help="bf16 rounding emulated in fp32 (errors, not speed).")
    args = parser.parse_args()
    layers = list(range(open_weights(None).info.n_layers)) if args.all else args.layers
    result = measure(layers, args.device, args.rows, args.emulate)
    RESULTS.mkdir(exist_ok=True)
    name = "precision-emulated" if args.emulate else "precision"
    with atomic_write(RESULTS / f"{name}.json", suffix=".json") as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    per = result["seconds_per_matrix"]
    text = (f"bf16 (rescored{', emulated in fp32' if args.emulate else ''}, {MARGIN} extra candidates) against fp32, {result['model']}, layers {layers} ({result['rows_per_matrix']} neurons per "
            f"matrix), {result['views']} neuron views, "
            f"on {result['device']} ({result['machine']}):\n\n"
            f"| top-{TOP_K} sets agree | top-1 agrees | max lse difference | max probability difference | "
            f"fp32 s/matrix | bf16 s/matrix | bf16 speed-up |\n|---|---|---|---|---|---|---|\n"
            f"| {result['topk_set_agreement']:.5f} | {result['top1_agreement']:.6f} | {result['max_lse_difference']:.2e} | "
            f"{result['max_probability_difference']:.2e} | {per['float32']:.2f} | {per['bfloat16']:.2f} | "
            f"{result['bf16_speedup']:.2f}x |\n\nThis machine chooses {result['chosen']['dtype']}: "
            f"{result['chosen']['reason']}.\n")
    with atomic_write(RESULTS / f"{name}.md", suffix=".md") as tmp:
        tmp.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
