"""The README's discovery figures are the ones bench/bench_concepts.py recorded (re-run the bench, then this)."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("profile", "prompting", "prompting+profile", "mean-difference")


def _records(name: str = "concepts") -> list[dict]:
    lines = (ROOT / "bench" / "results" / f"{name}.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "rows" in r]


def _figures(records: list[dict]) -> dict:
    def avg(method, key):
        return sum(r["rows"][method][key] for r in records) / len(records)

    moved = [r for r in records if r["rows"]["profile"]["mention_rate"] - r["rows"]["unsteered"]["mention_rate"] >= 0.5]
    return {
        "n": len(records), "moved": len(moved),
        "mention": avg("profile", "mention_rate"), "prompting_mention": avg("prompting", "mention_rate"),
        "relevance": avg("profile", "relevance") / avg("unsteered", "relevance"),
        "nll": avg("profile", "nll") - avg("unsteered", "nll"),
        "repetition": avg("profile", "repetition") - avg("unsteered", "repetition"),
        **{m: avg(m, "score") for m in METHODS},
    }


def test_readme_status_matches_the_recorded_benches():
    readme = " ".join((ROOT / "README.md").read_text().split())
    own, held = _figures(_records()), _figures(_records("concepts-held-out"))
    stated = [
        f"on {own['n']} words and phrases of eleven kinds",
        f"names the word in {own['mention']:.0%} of answers (prompting: {own['prompting_mention']:.0%})",
        f"keeps {own['relevance']:.0%} of the answers' relevance",
        f"costs {own['nll']:+.2f} nats/token of fluency and {own['repetition']:+.2f} repetition",
        f"moves the mention rate by at least 0.5 for {own['moved']} of {own['n']} words",
        f"combined score {own['profile']:.3f} against {own['prompting']:.3f} for prompting, "
        f"{own['prompting+profile']:.3f} for profile plus prompting and {own['mean-difference']:.3f} for a "
        f"mean-difference steering vector",
        f"On {held['n']} held-out words and phrases",
        f"mention {held['mention']:.0%} (prompting {held['prompting_mention']:.0%})",
        f"{held['moved']} of {held['n']} moved by at least 0.5",
        f"relevance {held['relevance']:.0%}",
        f"combined {held['profile']:.3f} vs {held['prompting']:.3f}",
    ]
    for phrase in stated:
        assert phrase.replace("%", " %") in readme or phrase in readme, phrase
    for figures in (own, held):
        assert figures["profile"] > figures["mean-difference"] and figures["prompting+profile"] > figures["prompting"]


def test_readme_all_positions_claim_matches_the_recorded_bench():
    readme = " ".join((ROOT / "README.md").read_text().split())
    every = _figures(_records("concepts-all-positions"))
    stated = (f"which steer less well (six words: mention {every['mention']:.0%}, combined {every['profile']:.3f} vs "
              f"{every['prompting']:.3f} for prompting)")
    assert every["n"] == 6 and stated.replace("%", " %") in readme, stated
    assert every["profile"] < _figures(_records())["profile"]  # "less well" than the default mode


def test_measurements_table_is_the_bench_table():
    table = (ROOT / "bench" / "results" / "concepts.md").read_text()
    assert table.strip() in (ROOT / "docs" / "measurements.md").read_text()
    assert re.search(rf"mean over {len(_records())} concepts", table)


def test_readme_suppression_claim_matches_the_recorded_bench():
    """"Suppressing profiles cut mentions to zero where 'never mention X' makes the model say it more"."""
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert 'Suppressing profiles cut mentions to zero where "never mention X" makes the model say it more' in readme
    lines = (ROOT / "bench" / "results" / "concepts-suppress.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) >= 3
    for record in records:
        rows = record["rows"]
        assert rows["profile"]["mention_rate"] == 0.0, record["profile"]
        assert rows["prompting"]["mention_rate"] > rows["unsteered"]["mention_rate"], record["profile"]


def test_readme_shipped_table_is_the_recorded_summary():
    """Each row of the README's table of re-discovered profiles is profiles/eval/summary.json's row."""
    summary = json.loads((ROOT / "profiles" / "eval" / "summary.json").read_text())
    rows = re.findall(r"^\| `([\w-]+)` \| (.+) \|$", (ROOT / "README.md").read_text(), re.MULTILINE)
    assert len(rows) >= 6
    for name, rest in rows:
        row = summary[name]
        cells = [c.strip() for c in rest.split("|")]
        assert cells[1] == f"{row['mention_unsteered']:.2f} → {row['mention_steered']:.2f}", name
        assert cells[2] == f"{row['nll_steered'] - row['nll_unsteered']:+.2f}", name
        assert cells[3] == f"{row['repetition_steered'] - row['repetition_unsteered']:+.2f}", name
        scores = row["scores"]
        assert cells[4] == f"{scores['profile']['score']:.2f} ({scores['prompting']['score']:.2f})", name
        assert cells[5] == ("yes" if row["shipped"] else "no"), name
