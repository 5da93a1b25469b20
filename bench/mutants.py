"""Hand-made mutants of the code that matters most, and whether the fast tests catch each one.

    python bench/mutants.py [--only NAME ...]   (--only re-runs those and updates the recorded table)

Each mutant is a plausible bug (a dropped norm gain, an inverted position
mask, an off-by-one, a lost sign, a cache key without the version, ...)
written as one exact text replacement.  For each: apply it to a scratch copy
of the repository, run the tests that cover that code (tiny models only, no
real-model tests, stop at the first failure), and record whether they failed.
The working tree is never touched.  Results go to
``bench/results/mutants.{json,md}``; ``docs/measurements.md`` quotes the table.

mutmut (not used, not measured here) mutates every operator and literal,
messages included, and runs the tests for each; these mutants are the bugs
a reviewer would look for, each run against the tests that claim to cover it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

# name: (file, original text, mutated text, test files)
MUTANTS: dict[str, tuple[str, str, str, list[str]]] = {
    "decode: final-norm gain dropped": (
        "steerkit/decode.py", "return torch.mul(vectors, scale).mul_(gain.float())", "return torch.mul(vectors, scale)",
        ["tests/test_decode.py", "tests/test_atlas.py"]),
    "decode: view sign ignored": (
        "steerkit/decode.py", "logits = view.sign * decode_logits(", "logits = 1 * decode_logits(",
        ["tests/test_decode.py"]),
    "atlas: chunk offset lost in the top-k merge": (
        "steerkit/full_decode.py", "high.add(chunk_high, chunk_high_ids + start)", "high.add(chunk_high, chunk_high_ids)",
        ["tests/test_atlas.py"]),
    "atlas: cache key without the version": (
        "steerkit/atlas.py", 'code = hashlib.sha256(f"{ATLAS_FORMAT}|{__version__}|{dtype}".encode())',
        'code = hashlib.sha256(f"{ATLAS_FORMAT}|{dtype}".encode())', ["tests/test_atlas.py"]),
    "profile: clamp keeps the activation": (
        "steerkit/profile.py", "            return 0.0, self.value * strength", "            return 1.0, self.value * strength",
        ["tests/test_profile.py", "tests/test_hf_runtime.py"]),
    "profile: add ignores the strength": (
        "steerkit/profile.py", "            return 1.0, self.value * strength", "            return 1.0, self.value",
        ["tests/test_profile.py", "tests/test_hf_runtime.py"]),
    "hooks: position mask inverted": (
        "runtimes/hf/hooks.py", "edited = torch.where(mask.unsqueeze(-1), edited, selected)",
        "edited = torch.where(mask.unsqueeze(-1), selected, edited)", ["tests/test_hf_runtime.py", "tests/test_discover.py"]),
    "positions: prompt one token too long": (
        "runtimes/hf/positions.py", "in_prompt = absolute < prompt_length", "in_prompt = absolute <= prompt_length",
        ["tests/test_hf_runtime.py", "tests/test_discover.py"]),
    "patch: an existing bias is overwritten": (
        "runtimes/llamacpp/patch.py", "return bias + existing if existing is not None else bias", "return bias",
        ["tests/test_gguf_patch.py"]),
    "scales: second scale field (min) left alone": (
        "runtimes/llamacpp/scales.py", "Q.Q4_1: (0, 2)", "Q.Q4_1: (0,)", ["tests/test_gguf_patch.py"]),
    "gguf: alignment not checked": (
        "steerkit/gguf_file.py", "if alignment <= 0 or alignment & (alignment - 1):", "if alignment <= 0:",
        ["tests/test_hostile_gguf.py"]),
    "candidates: promoting sign flipped": (
        "steerkit/candidates.py", "sign = np.where(write[..., 0] >= write[..., 1], 1, -1)",
        "sign = np.where(write[..., 0] >= write[..., 1], -1, 1)", ["tests/test_discover.py"]),
    "candidates: layer 0 allowed": (
        "steerkit/candidates.py", "    combined[0] = -1.0\n", "", ["tests/test_discover.py"]),
    "discovery: budget ignored in the choice": (
        "steerkit/discovery.py", "return (point.in_budget, round(point.summary.score, 6), rate, -point.stats.nll)",
        "return (round(point.summary.score, 6), point.in_budget, rate, -point.stats.nll)", ["tests/test_discover.py"]),
    "discovery: concept vector sized by the wrong layer's norm": (
        "steerkit/discovery.py", "adds * norms[layer] for layer", "adds * norms[-1] for layer", ["tests/test_discover.py"]),
    "concept vector: direction not normalised": (
        "steerkit/concept_vector.py", "vector / max(np.linalg.norm(vector), 1e-12)", "vector", ["tests/test_discover.py"]),
    "scoring: harmonic mean of zero is not zero": (
        "steerkit/scoring.py", "    if any(v <= 0 for v in values):\n        return 0.0\n", "",
        ["tests/test_scoring.py"]),
    "nll: first answer token always counted": (
        "runtimes/hf/measure.py", "[[int(first_token)] + [1] * (len(a) - 1)", "[[1] + [1] * (len(a) - 1)",
        ["tests/test_scoring.py"]),
    "sampling: repetition penalty rewards repeats": (
        "steerkit/sampling.py", "np.where(values > 0, values / penalty, values * penalty)",
        "np.where(values > 0, values * penalty, values / penalty)", ["tests/test_hf_runtime.py", "tests/test_api.py"]),
    "post-norm fit: gain fitted on uncentred values": (
        "runtimes/hf/post_norm_fit.py", "plain_c, exact_c = plain - plain.mean(0), exact - exact.mean(0)",
        "plain_c, exact_c = plain, exact", ["tests/test_post_norm_fit.py"]),
    "atlas page: every view shows the first view's probability": (
        "steerkit/atlas_html.py", "round(float(atlas.probs[layer, neuron, v, 0]), 4)",
        "round(float(atlas.probs[layer, neuron, 0, 0]), 4)", ["tests/test_atlas.py"]),
    "eval plot: bars of the rows in reverse order": (
        "steerkit/evaluate.py", "values = [getattr(row.summary, key) for row in report.rows]",
        "values = [getattr(row.summary, key) for row in reversed(report.rows)]", ["tests/test_scoring.py"]),
    "profile: a scale ignores the strength": (
        "steerkit/profile.py", "return 1.0 + strength * (self.value - 1.0), 0.0", "return self.value, 0.0",
        ["tests/test_profile.py", "tests/test_cli.py"]),
    "candidates: specificity against the other sign's top token": (
        "steerkit/candidates.py", "np.take_along_axis(atlas.probs[:, :, :, 0], write_view[..., None], axis=2)",
        "np.take_along_axis(atlas.probs[:, :, :, 0], (5 - write_view)[..., None], axis=2)", ["tests/test_discover.py"]),
    "experts hook: the router weight ignored": (
        "runtimes/hf/experts.py", "return output + ((edited - h) * weight) @ down.to(dtype)",
        "return output + (edited - h) @ down.to(dtype)", ["tests/test_experts.py"]),
    "experts hook: gate row read as the up row": (
        "runtimes/hf/experts.py", "return index, self.d_ff + index", "return index, index", ["tests/test_experts.py"]),
    "gpt-oss hook: interleaved gate and up columns swapped": (
        "runtimes/hf/experts.py", "return 2 * index, 2 * index + 1", "return 2 * index + 1, 2 * index",
        ["tests/test_gpt_oss.py"]),
    "gpt-oss hook: the gate/up biases left out": (
        "runtimes/hf/experts.py", "        if self.has_bias:\n            gate_out", "        if False:\n            gate_out",
        ["tests/test_gpt_oss.py"]),
    "gpt-oss reader: gate read as up from the fused checkpoint": (
        "steerkit/weights/hf_reader.py", "self._get(gate_up)[:, :, which::2]", "self._get(gate_up)[:, :, 1 - which::2]",
        ["tests/test_gpt_oss.py"]),
    "gpt-oss patch: an ablated neuron's up bias left at 0": (
        "runtimes/llamacpp/patch.py", "bias.reshape(-1)[neurons[zero]] = -1.0", "bias.reshape(-1)[neurons[zero]] = 0.0",
        ["tests/test_gpt_oss.py"]),
    "gpt-oss bake: clamp's constant added to every expert's bias": (
        "runtimes/hf/bake.py", "index_add_(0, owners, offsets)", "index_add_(0, torch.zeros_like(owners), offsets).add_(offsets.sum(0))",
        ["tests/test_gpt_oss.py"]),
    "GGUF experts: down columns read in the wrong expert order": (
        "steerkit/weights/gguf_reader.py", "return np.ascontiguousarray(np.swapaxes(down, -1, -2).reshape(-1, self.info.d_model))",
        "return np.ascontiguousarray(np.swapaxes(down, -1, -2)[::-1].reshape(-1, self.info.d_model))", ["tests/test_experts.py"]),
    "profile: flat index of an expert's neuron off by one expert": (
        "steerkit/profile.py", "return (self.expert or 0) * d_ff + self.neuron",
        "return max(0, (self.expert or 0) - 1) * d_ff + self.neuron", ["tests/test_experts.py"]),
    "atlas: chunk candidates from the row needing fewest groups": (
        "steerkit/full_decode.py", "int(reaching.sum(dim=1).max())", "int(reaching.sum(dim=1).min())",
        ["tests/test_precision.py", "tests/test_atlas.py"]),
    "atlas: running top-k floored at its best value": (
        "steerkit/full_decode.py", "self.floor = values.amin(dim=1) if self.largest else values.amax(dim=1)",
        "self.floor = values.amax(dim=1) if self.largest else values.amin(dim=1)",
        ["tests/test_precision.py", "tests/test_atlas.py"]),
    "atlas: rescoring gathers a neighbour's candidates": (
        "steerkit/full_decode.py", "exact[row] = rows.index_select(0, ids[row]) @ normed[row]",
        "exact[row] = rows.index_select(0, ids[row - 1]) @ normed[row]",
        ["tests/test_precision.py", "tests/test_atlas.py"]),
    "atlas: bf16 operand rounding left uncorrected": (
        "steerkit/full_decode.py", ".clamp_min(0) * shift.exp()", ".clamp_min(0)",
        ["tests/test_precision.py"]),
    "atlas: bf16 emulation leaves the operand unrounded": (
        "steerkit/full_decode.py", "normed.to(emulate or fast_unembedding_t.dtype).to(fast_unembedding_t.dtype)",
        "normed.to(fast_unembedding_t.dtype)", ["tests/test_precision.py"]),
    "activation scale: mean instead of peak": (
        "runtimes/hf/measure.py", "args[0].detach().abs().flatten(0, -2).amax(dim=0)",
        "args[0].detach().abs().flatten(0, -2).mean(dim=0)", ["tests/test_discover.py"]),
    "profile: YAML aliases accepted": (
        "steerkit/profile.py", 'if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:',
        "if False:", ["tests/test_hostile_files.py", "tests/test_profile.py"]),
    "find: the screening pass keeps its worst candidates": (
        "steerkit/find.py", "kept[torch.topk(both, size).indices] = True",
        "kept[torch.topk(both, size, largest=False).indices] = True", ["tests/test_find.py"]),
    "find: kept candidates lose their neuron": (
        "steerkit/find.py", "newcomers.numpy()], 1)", "slots.numpy()], 1)", ["tests/test_find.py"]),
    "find: newcomers written over the wrong slots": (
        "steerkit/find.py", "slots = torch.nonzero(~kept[:size]).flatten()", "slots = torch.arange(newcomers.numel())",
        ["tests/test_find.py"]),
    "find: the screen drops the final norm's gain": (
        "steerkit/find.py", "(torch.from_numpy(unembedding[tokens]).T * gain[:, None]).contiguous()",
        "torch.from_numpy(unembedding[tokens]).T.contiguous()", ["tests/test_find.py"]),
    "gguf reader: a shortlist's up rows read from the wrong neurons": (
        "steerkit/weights/gguf_reader.py", "data[np.asarray(neurons, dtype=np.int64)]", "data[:len(neurons)]",
        ["tests/test_decode.py", "tests/test_experts.py"]),
    "candidates: the shortlist's read and write sides swapped": (
        "steerkit/candidates.py", "read, write = probs[:len(keys)], probs[len(keys):]",
        "write, read = probs[:len(keys)], probs[len(keys):]", ["tests/test_discover.py"]),
}


def run_mutant(name: str, scratch: Path) -> dict:
    path, original, mutated, tests = MUTANTS[name]
    source = scratch / path
    text = source.read_text()
    if text.count(original) != 1:
        return {"mutant": name, "file": path, "result": "not applicable (text not found once)"}
    source.write_text(text.replace(original, mutated))
    started = time.perf_counter()
    try:
        run = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-m", "not real",
                              *tests], cwd=scratch, capture_output=True, text=True, timeout=900)
        outcome = "caught" if run.returncode != 0 else "survived"
        failed = next((line.split(" - ")[0] for line in run.stdout.splitlines() if line.startswith("FAILED")), "")
    except subprocess.TimeoutExpired:
        outcome, failed = "caught (timeout)", ""
    finally:
        source.write_text(text)
    return {"mutant": name, "file": path, "tests": tests, "result": outcome, "failed": failed,
            "seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="Mutant names to run (default: all).")
    args = parser.parse_args()
    names = args.only or list(MUTANTS)
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder) / "repo"
        shutil.copytree(ROOT, scratch, ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", "results"))
        # The scratch copy must be what the tests import, laid out as installed (runtimes/ and profiles/ inside
        # steerkit/) and first on the path, ahead of the editable install of the working tree.
        (scratch / "steerkit" / "runtimes").symlink_to(scratch / "runtimes")
        (scratch / "steerkit" / "profiles").symlink_to(scratch / "profiles")
        (scratch / "conftest.py").write_text("import sys, pathlib\nsys.path.insert(0, str(pathlib.Path(__file__).parent))\n")
        check = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, '.'); import steerkit.runtimes.hf.hooks "
                                "as m; print(m.__file__)"], cwd=scratch, capture_output=True, text=True)
        if not check.stdout.strip().startswith(str(scratch)):
            sys.exit(f"the scratch copy is not what Python imports ({check.stdout.strip() or check.stderr[-300:]})")
        results = []
        for number, name in enumerate(names, 1):
            results.append(run_mutant(name, scratch))
            print(f"[{number}/{len(names)}] {results[-1]['result']:9s} {name}", flush=True)
    if args.only and (RESULTS / "mutants.json").is_file():  # update those entries of the last full run
        fresh = {r["mutant"]: r for r in results}
        earlier = json.loads((RESULTS / "mutants.json").read_text())
        # Entries of mutants no longer defined (renamed or rewritten with their code) are dropped.
        results = [fresh.pop(r["mutant"], r) for r in earlier if r["mutant"] in MUTANTS] + list(fresh.values())
    caught = sum(r["result"].startswith("caught") for r in results)
    table = ["| mutant | file | result | first failing test |", "|---|---|---|---|"]
    table += [f"| {r['mutant']} | `{r['file']}` | {r['result']} | {r.get('failed', '')} |" for r in results]
    summary = f"\n{caught} of {len(results)} mutants caught by the fast tests.\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "mutants.json").write_text(json.dumps(results, indent=1) + "\n")
    (RESULTS / "mutants.md").write_text("\n".join(table) + "\n" + summary)
    print("\n".join(table) + summary)


if __name__ == "__main__":
    main()
