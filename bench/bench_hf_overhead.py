"""Steered vs unsteered decoding speed in the HF runtime, measured in the same run.

    python bench/bench_hf_overhead.py [--tokens 48] [--rounds 5]

Greedy decoding of the default model with a KV cache, three ways,
interleaved round by round so machine noise hits all of them: unsteered,
steered by hooks (the shipped dog-clamp profile), steered by baked weights.
Prints the median tokens/s of each and the ratios to unsteered.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from steerkit.runtimes.hf import attach, bake, load_model, model_binding
from steerkit.runtimes.hf.generate import build_inputs
from steerkit.plan import compile_plan
from steerkit.profile import load_profile
from steerkit.shipped import shipped_profile


def tokens_per_second(model, inputs, tokens: int) -> float:
    with torch.no_grad():
        start = time.perf_counter()
        out = model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                             pad_token_id=0, temperature=None, top_p=None, top_k=None)
        elapsed = time.perf_counter() - start
    return (out.shape[1] - inputs["input_ids"].shape[1]) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    model, tokenizer = load_model()
    plan = compile_plan([load_profile(shipped_profile("dog-clamp"))], model_binding(model, tokenizer))
    inputs = build_inputs(tokenizer, ["Write a short poem about the sea."], model.device)
    tokens_per_second(model, inputs, 8)  # warm-up
    results: dict[str, list[float]] = {"unsteered": [], "hooks": [], "baked": []}
    for _ in range(args.rounds):
        results["unsteered"].append(tokens_per_second(model, inputs, args.tokens))
        handle = attach(model, plan)
        results["hooks"].append(tokens_per_second(model, inputs, args.tokens))
        handle.remove()
        handle = bake(model, plan)
        results["baked"].append(tokens_per_second(model, inputs, args.tokens))
        handle.remove()
    medians = {name: statistics.median(values) for name, values in results.items()}
    print(f"threads {torch.get_num_threads()}, {args.tokens} tokens x {args.rounds} rounds (median)")
    for name, value in medians.items():
        print(f"{name:10s} {value:7.1f} tokens/s  ratio {value / medians['unsteered']:.3f}")


if __name__ == "__main__":
    main()
