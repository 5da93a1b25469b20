"""Discovery against the alternatives a user has, over 44 concepts of every kind.

    python bench/bench_concepts.py [--concepts WORD ...] [--positions all] [--fresh] [--reuse EARLIER.jsonl]

For each concept (words and short phrases: animals, objects, places, foods,
colours, feelings, professions, sports, weather, events, abstract ideas):
``discover`` on the default model (its calibration prompts), then ``eval``
on the first 8 built-in neutral prompts (40 greedy tokens) of

* the unsteered model;
* the discovered profile at its calibrated strength;
* prompting: a system message asking the model to bring the concept in;
* prompting plus the profile;
* a mean-difference vector for the concept (strengths 0.5, 1, 2; its best
  row *on these prompts* is reported, which flatters the baseline).

The shipped suppressing profiles are measured the same way on their own
prompt files, against prompting "never mention X" and both together.

Every answer is scored by the unsteered model (``steerkit.scoring``):
concept mention, instruction relevance, fluency, and the per-answer harmonic
mean of the three.  Results go to ``bench/results/concepts.jsonl`` (one line
per concept, appended as it goes: an interrupted run resumes), a markdown
table ``bench/results/concepts.md`` and a plot ``bench/results/concepts.png``.
A concept for which discovery finds nothing that moves still gets its row:
the profile it would have written is evaluated, and ``moved`` says false.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from steerkit.atlas import atlas_for
from steerkit.cache import atomic_write
from steerkit.discovery import discover
from steerkit.errors import SteerkitError
from steerkit.evaluate import evaluate
from steerkit.prompts import builtin_prompts, read_prompts
from steerkit.runtimes import load_backend
from steerkit.shipped import shipped_dir, shipped_profile
from steerkit.profile import DISCOVERY_POSITIONS, load_profile
from steerkit.evaluate import profile_concept
from steerkit.weights import open_weights

RESULTS = Path(__file__).resolve().parent / "results"
CONCEPTS = {
    "animals": ["elephant", "horse", "bird", "fish"],
    "objects": ["car", "book", "phone", "clock"],
    "places": ["Paris", "ocean", "mountain", "New York"],
    "foods": ["pizza", "coffee", "apple", "ice cream"],
    "colours": ["red", "green", "purple", "gold"],
    "feelings": ["love", "fear", "anger", "joy"],
    "professions": ["doctor", "teacher", "pilot", "chef"],
    "sports": ["football", "tennis", "swimming", "chess"],
    "weather": ["rain", "snow", "storm", "sunshine"],
    "events": ["wedding", "birthday", "war", "Christmas"],
    "abstract": ["freedom", "time", "music", "outer space"],
}
# Words and phrases that no experiment of the method's development used: measured once, with the method fixed.
HELD_OUT = {
    "animals": ["tiger", "rabbit", "whale"],
    "objects": ["umbrella", "guitar", "bicycle"],
    "places": ["London", "desert", "island"],
    "foods": ["peanut butter", "banana", "bread"],
    "colours": ["orange", "silver"],
    "feelings": ["sadness", "hope"],
    "professions": ["farmer", "nurse"],
    "sports": ["basketball", "golf"],
    "weather": ["thunder", "fog"],
    "events": ["holiday", "election"],
    "abstract": ["justice", "science"],
}
PROMPTS = 8  # the first 8 built-in neutral prompts: 40 concepts in about an hour on 2 cores
SUPPRESS = ("no-blue", "no-music", "no-teacher")  # shipped suppressing profiles, measured against "never mention X"
METHODS = ("unsteered", "profile", "prompting", "prompting+profile", "mean-difference")
AXES = ("concept_score", "relevance_score", "fluency_score", "score")


def _measure(kind: str, word: str, reader, atlas, backend, positions: str, earlier: dict, reuse: Path | None) -> dict:
    """One concept's record: discovery, then evaluation (or the earlier run's rows for the same profile)."""
    try:
        found = discover(word, reader, atlas, backend, positions=positions)
    except SteerkitError as exc:
        return {"concept": word, "kind": kind, "error": str(exc)}
    setting = found.chosen.setting.label()
    found_now = {"concept": word, "kind": kind, "moved": found.moved, "discover_seconds": round(found.seconds, 1),
                 "setting": setting}
    if earlier.get("setting") == setting and "rows" in earlier:
        return {**earlier, **found_now, "rows_from": reuse.name}
    report = evaluate(found.profile, backend, found.concept, builtin_prompts("neutral")[:PROMPTS], strengths=(1.0,),
                      reader=reader)
    return {**found_now, "rows": {method: report.row(method).as_dict() for method in METHODS},
            "answers": {method: report.row(method).answers[:3] for method in METHODS}}


def run(concepts: list[tuple[str, str]], path: Path, positions: str = "prompt", reuse: Path | None = None) -> None:
    """Discover and evaluate each concept not yet in ``path``.  With ``reuse`` (an earlier run's jsonl), a
    concept whose discovery chose the same setting again (so the same profile: discovery is deterministic)
    keeps that run's evaluation rows instead of being evaluated again."""
    earlier = {r["concept"]: r for r in map(json.loads, reuse.read_text().splitlines())} if reuse else {}
    done = {json.loads(line)["concept"] for line in path.read_text().splitlines()} if path.is_file() else set()
    todo = [(kind, word) for kind, word in concepts if word not in done]
    if not todo:
        return
    reader = open_weights(None)
    atlas = atlas_for(reader)
    backend = load_backend(None, "hf")
    for number, (kind, word) in enumerate(todo, 1):
        started = time.perf_counter()
        record = _measure(kind, word, reader, atlas, backend, positions, earlier.get(word, {}), reuse)
        with path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
        rows = record.get("rows", {})
        print(f"[{number}/{len(todo)}] {word}: " + (record.get("error") or "  ".join(
            f"{m} {rows[m]['mention_rate']:.2f}/{rows[m]['score']:.2f}" for m in METHODS)) +
            f"  ({time.perf_counter() - started:.0f} s)", flush=True)


def run_suppress(path: Path) -> None:
    """The shipped suppressing profiles on their prompt files, against prompting "never mention X"."""
    done = {json.loads(line)["profile"] for line in path.read_text().splitlines()} if path.is_file() else set()
    todo = [name for name in SUPPRESS if name not in done]
    if not todo:
        return
    reader = open_weights(None)
    backend = load_backend(None, "hf")
    for name in todo:
        profile = load_profile(shipped_profile(name))
        concept = profile_concept(profile, reader.tokens())
        prompts = read_prompts(shipped_dir() / "prompts" / f"{concept.word.lower()}.txt")
        report = evaluate(profile, backend, concept, prompts, strengths=(1.0,), reader=reader)
        record = {"profile": name, "concept": concept.word, "prompts": len(prompts),
                  "rows": {m: report.row(m).as_dict() for m in METHODS}}
        with path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
        print(f"{name}: " + "  ".join(f"{m} {record['rows'][m]['mention_rate']:.2f}/{record['rows'][m]['score']:.2f}"
                                     for m in METHODS), flush=True)


def suppress_table(records: list[dict]) -> str:
    """Mention rate and combined score of each way of keeping a concept out."""
    lines = ["| profile (prompts) | " + " | ".join(METHODS) + " |", "|---|" + "---|" * len(METHODS)]
    for r in records:
        lines.append(f"| {r['profile']} ({r['prompts']}) | " + " | ".join(
            f"{r['rows'][m]['mention_rate']:.2f} / {r['rows'][m]['score']:.2f}" for m in METHODS) + " |")
    return "\n".join(lines) + "\n"


def table(records: list[dict]) -> str:
    """The markdown table: per concept, mention and combined score per method; means at the end."""
    head = "| concept | kind | " + " | ".join(METHODS) + " |\n|---|---|" + "---|" * len(METHODS) + "\n"
    lines = []
    for r in records:
        if "error" in r:
            lines.append(f"| {r['concept']} | {r['kind']} | " + " | ".join("refused" for _ in METHODS) + " |")
            continue
        cells = [f"{r['rows'][m]['mention_rate']:.2f} / {r['rows'][m]['score']:.2f}" for m in METHODS]
        lines.append(f"| {r['concept']}{'' if r['moved'] else ' (not moved)'} | {r['kind']} | " + " | ".join(cells) + " |")
    scored = [r for r in records if "error" not in r]
    summary = ["", "| mean over %d concepts | mention | relevance (nats/token) | NLL | repetition | concept | relevance | fluency | **score** |" % len(scored),
               "|---|---|---|---|---|---|---|---|---|"]
    for m in METHODS:
        mean = lambda key: sum(r["rows"][m][key] for r in scored) / max(1, len(scored))  # noqa: E731
        summary.append(f"| {m} | {mean('mention_rate'):.2f} | {mean('relevance'):.2f} | {mean('nll'):.2f} | "
                       f"{mean('repetition'):.2f} | {mean('concept_score'):.2f} | {mean('relevance_score'):.2f} | "
                       f"{mean('fluency_score'):.2f} | **{mean('score'):.3f}** |")
    base = [r["rows"]["unsteered"]["mention_rate"] for r in scored]
    moved = sum(r["rows"]["profile"]["mention_rate"] - b >= 0.5 for r, b in zip(scored, base))
    summary.append(f"\nProfile moves the mention rate by at least 0.5 for {moved} of {len(scored)} concepts; "
                   f"discovery found a setting inside its budget that moves it at all for "
                   f"{sum(r['moved'] for r in scored)}; refused: {len(records) - len(scored)}.")
    return head + "\n".join(lines) + "\n" + "\n".join(summary) + "\n"


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    scored = [r for r in records if "error" not in r]
    figure, axis = plt.subplots(figsize=(8, 3.8), dpi=110)
    width = 0.8 / len(METHODS)
    for k, method in enumerate(METHODS):
        means = [np.mean([r["rows"][method][a] for r in scored]) for a in AXES]
        axis.bar(np.arange(len(AXES)) + (k - (len(METHODS) - 1) / 2) * width, means, width, label=method)
    axis.set_xticks(range(len(AXES)), ["concept", "instruction relevance", "fluency", "combined (harmonic)"])
    axis.set_ylim(0, 1.05)
    axis.set_ylabel(f"mean over {len(scored)} concepts")
    axis.set_title(f"SmolLM2-135M-Instruct, {len(scored)} concepts x {PROMPTS} neutral prompts: "
                   "discovered profiles vs the alternatives", fontsize=10)
    axis.legend(fontsize=8, ncol=3)
    figure.tight_layout()
    with atomic_write(path, suffix=".png") as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concepts", nargs="*", metavar="WORD", help="Concepts to run (default: the 44 above).")
    parser.add_argument("--fresh", action="store_true", help="Start again instead of resuming.")
    parser.add_argument("--output", type=Path, default=None, help="Results stem (default bench/results/concepts).")
    parser.add_argument("--reuse", type=Path, default=None,
                        help="An earlier run's jsonl: concepts whose discovery chose the same setting keep its rows.")
    parser.add_argument("--positions", choices=DISCOVERY_POSITIONS, default="until",
                        help="Discover profiles that steer the answer until it names the concept (default), "
                             "prompt-position ones, or all-position ones that weights carry.")
    parser.add_argument("--held-out", action="store_true",
                        help="Run the held-out words (never used while the method was developed) instead.")
    args = parser.parse_args()
    concepts = [(kind, w) for kind, words in (HELD_OUT if args.held_out else CONCEPTS).items() for w in words]
    if args.concepts:
        concepts = [(dict((w, k) for k, w in concepts).get(w, "other"), w) for w in args.concepts]
    if args.output is None:
        stem = {"until": "concepts", "prompt": "concepts-prompt", "all": "concepts-all-positions"}[args.positions]
        args.output = RESULTS / (stem + ("-held-out" if args.held_out else ""))
    jsonl = args.output.with_suffix(".jsonl")
    jsonl.parent.mkdir(parents=True, exist_ok=True)
    if args.fresh:
        jsonl.unlink(missing_ok=True)
    run(concepts, jsonl, args.positions, args.reuse)
    suppress_path = args.output.with_name(args.output.name + "-suppress.jsonl")
    if not args.concepts and not args.held_out and args.positions == "until":
        if args.fresh:
            suppress_path.unlink(missing_ok=True)
        run_suppress(suppress_path)
    wanted = {w for _, w in concepts}
    records = [r for r in map(json.loads, jsonl.read_text().splitlines()) if r["concept"] in wanted]
    text = table(records)
    if suppress_path.is_file():
        text += "\nSuppression (mention rate / combined score; lower mention is the goal):\n\n" + suppress_table(
            [json.loads(line) for line in suppress_path.read_text().splitlines()])
    with atomic_write(args.output.with_suffix(".md"), suffix=".md") as tmp:
        tmp.write_text(text)
    plot(records, args.output.with_suffix(".png"))
    print(text)


if __name__ == "__main__":
    main()
