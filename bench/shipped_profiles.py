"""Make the shipped profiles with `discover`, evaluate each with `eval`, and record the figures.

    python bench/shipped_profiles.py [--concepts WORD ...] [--suppress WORD=PROMPTS.txt ...] [--positions all] [--table]

For each concept: discovery on the default model (built-in calibration
prompts), then evaluation on the built-in neutral prompts (promote) or the
concept's prompt file (suppress), 40 greedy tokens, strengths 0/0.5/1/1.5.
Every concept's figures go to ``profiles/eval/summary.json`` (the README
table's source and the generality figure); profiles that work -- promoting
ones naming the concept in at least half the answers, suppressing ones
cutting mentions by 80 % -- are written to ``profiles/NAME.yaml`` with
``profiles/eval/NAME.json`` + ``.png``.  ``--positions all`` makes each
concept's all-position variant (``NAME-all``, what `steerkit patch` bakes
into a GGUF) instead of the default one that steers the answer until it
names the concept.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from steerkit.runtimes.hf import load_model
from steerkit.runtimes.hf.backend import HFBackend
from steerkit.atlas import atlas_for
from steerkit.cache import atomic_write
from steerkit.discovery import Budget, discover
from steerkit.evaluate import evaluate, write_report
from steerkit.profile import save_profile
from steerkit.prompts import read_prompts
from steerkit.weights import open_weights

PROFILES = Path(__file__).resolve().parent.parent / "profiles"
# Two or more per kind: animals, places, foods, colours, feelings, professions, sports.
DEFAULT_CONCEPTS = ["dog", "cat", "horse", "bird", "Paris", "London", "ocean", "mountain", "forest", "Japan", "pizza",
                    "coffee", "chocolate", "cheese", "red", "green", "love", "fear", "teacher", "doctor", "football",
                    "tennis", "soccer", "running", "swimming"]
SHIP_MENTION = 0.5  # a promoting profile ships if it names its concept in at least half the neutral answers
DEFAULT_SUPPRESS = [f"{word}=profiles/prompts/{word.lower()}.txt" for word in ("blue", "Paris", "dog", "music", "teacher")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concepts", nargs="*", default=DEFAULT_CONCEPTS, metavar="WORD")
    parser.add_argument("--suppress", nargs="*", default=DEFAULT_SUPPRESS, metavar="WORD=PROMPTS")
    parser.add_argument("--positions", choices=("until", "all"), default="until")
    parser.add_argument("--table", action="store_true", help="Only print summary.json as a markdown table.")
    parser.add_argument("--readme", nargs="*", metavar="NAME", help="Only print README's short table of these rows.")
    args = parser.parse_args()
    if args.table or args.readme is not None:
        summary = json.loads((PROFILES / "eval" / "summary.json").read_text())
        print_readme_table(summary, args.readme) if args.readme is not None else print_table(summary)
        return
    torch.set_num_threads(2)
    reader = open_weights(None)
    atlas = atlas_for(reader)
    model, tokenizer = load_model(None)
    evaluator = HFBackend(model, tokenizer)
    (PROFILES / "eval").mkdir(exist_ok=True)
    summary_path = PROFILES / "eval" / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    jobs = [(word, False, None) for word in args.concepts]
    jobs += [(spec.split("=")[0], True, spec.split("=")[1]) for spec in args.suppress]
    for word, suppress, prompt_file in jobs:
        started = time.perf_counter()
        prompts = read_prompts(prompt_file) if prompt_file else None
        positions = "until" if suppress else args.positions
        found = discover(word, reader, atlas, evaluator, suppress=suppress, prompts=prompts, positions=positions)
        profile = found.profile
        if positions == "all":
            profile.name = f"{profile.name}-all"
        report = evaluate(profile, evaluator, found.concept, prompts, reader=reader)
        base, steered = report.at(0.0), report.at(1.0)
        scores = {m: report.row(m, 1.0 if m in ("profile", "prompting+profile") else None).summary.as_dict()
                  for m in ("profile", "prompting", "prompting+profile", "mean-difference") if _has(report, m)}
        works = (steered.mention_rate <= 0.2 * base.mention_rate and base.mention_rate > 0) if suppress \
            else steered.mention_rate >= SHIP_MENTION
        if works:
            save_profile(profile, PROFILES / f"{profile.name}.yaml")
            write_report(report, PROFILES / "eval" / f"{profile.name}.json", PROFILES / "eval" / f"{profile.name}.png")
        summary[profile.name] = {
            "concept": word, "goal": report.goal, "shipped": works, "edits": len(profile.edits),
            "setting": found.chosen.setting.label(), "positions": profile.positions, "until": profile.until,
            "neurons": [f"{e.layer}:{e.neuron}" for e in profile.edits][:16],
            "prompts": prompt_file or "built-in neutral",
            "mention_unsteered": base.mention_rate, "mention_steered": steered.mention_rate,
            "nll_unsteered": round(base.nll, 3), "nll_steered": round(steered.nll, 3),
            "repetition_unsteered": round(base.repetition, 3), "repetition_steered": round(steered.repetition, 3),
            "diversity_unsteered": round(base.diversity, 3), "diversity_steered": round(steered.diversity, 3),
            "discover_seconds": round(found.seconds, 1),
            "in_budget": Budget().allows(steered, base),
            "scores": scores,
        }
        print(f"{profile.name:12s} {'shipped' if works else 'not shipped'} mention {base.mention_rate:.2f} -> {steered.mention_rate:.2f}  "
              f"nll {base.nll:.2f} -> {steered.nll:.2f}  rep {base.repetition:.2f} -> {steered.repetition:.2f}  "
              f"discover {found.seconds:.0f} s, all {time.perf_counter() - started:.0f} s", flush=True)
        with atomic_write(summary_path, suffix=".json") as tmp:
            tmp.write_text(json.dumps(summary, indent=1) + "\n")


def _has(report, method: str) -> bool:
    return any(r.method == method for r in report.rows)


def print_table(summary: dict) -> None:
    """README's table of every concept tried, and the mean figures over them."""
    print("| profile | goal | positions | setting | mentions | NLL | repetition | score (prompting) | in budget | shipped |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows = sorted(summary.items(), key=lambda item: (item[1]["goal"], not item[1]["shipped"], item[0]))
    for name, row in rows:
        print(f"| `{name}` | {row['goal']} | {_positions(row)} | {row['setting']} | {row['mention_unsteered']:.2f} → {row['mention_steered']:.2f} "
              f"| {row['nll_unsteered']:.2f} → {row['nll_steered']:.2f} "
              f"| {row['repetition_unsteered']:.2f} → {row['repetition_steered']:.2f} "
              f"| {_score(row)} | {'yes' if row['in_budget'] else 'no'} | {'yes' if row['shipped'] else 'no'} |")
    for goal in ("promote", "suppress"):
        for positions in ("generated", "all", "prompt"):
            chosen = [r for r in summary.values() if r["goal"] == goal and r.get("positions", "prompt") == positions]
            shipped = [r for r in chosen if r["shipped"]]
            for label, group in (("all tried", chosen), ("shipped", shipped)):
                if group:
                    mean = lambda key: sum(r[key] for r in group) / len(group)  # noqa: E731
                    print(f"\n{goal}, positions {positions}, {label} ({len(group)}): mention "
                          f"{mean('mention_unsteered'):.2f} → {mean('mention_steered'):.2f}, NLL change "
                          f"{mean('nll_steered') - mean('nll_unsteered'):+.2f}, repetition change "
                          f"{mean('repetition_steered') - mean('repetition_unsteered'):+.2f}, "
                          f"discover {mean('discover_seconds'):.0f} s")


def print_readme_table(summary: dict, names: list[str]) -> None:
    """README's table: the chosen rows, changes against unsteered, and the combined score next to prompting's."""
    print("| profile | positions | mentions | NLL change | repetition change | score (prompting) | shipped |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        row = summary[name]
        print(f"| `{name}` | {_positions(row)} | {row['mention_unsteered']:.2f} → {row['mention_steered']:.2f} "
              f"| {row['nll_steered'] - row['nll_unsteered']:+.2f} "
              f"| {row['repetition_steered'] - row['repetition_unsteered']:+.2f} "
              f"| {_score(row)} | {'yes' if row['shipped'] else 'no'} |")


def _positions(row: dict) -> str:
    # Rows recorded before 'positions' was stored are steerkit 0.3's prompt-position profiles.
    positions = row.get("positions", "prompt")
    return f"{positions} until {row['until']}" if row.get("until") else positions


def _score(row: dict) -> str:
    scores = row.get("scores")
    if not scores:
        return "-"
    return f"{scores['profile']['score']:.2f} ({scores['prompting']['score']:.2f})"


if __name__ == "__main__":
    main()
