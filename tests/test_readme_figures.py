"""The README's discovery figures are the ones bench/bench_concepts.py recorded (re-run the bench, then this)."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("profile", "prompting", "prompting+profile", "mean-difference")


def _records() -> list[dict]:
    lines = (ROOT / "bench" / "results" / "concepts.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "rows" in r]


def test_readme_status_matches_the_recorded_bench():
    records = _records()
    readme = " ".join((ROOT / "README.md").read_text().split())
    mean = {m: sum(r["rows"][m]["score"] for r in records) / len(records) for m in METHODS}
    working = [r for r in records if r["rows"]["profile"]["mention_rate"] - r["rows"]["unsteered"]["mention_rate"] >= 0.5]
    vector = [r for r in records if r["setting"].startswith("vector")]  # discovery's fallback was chosen
    unmoved = [r for r in records if not r["moved"]]

    def avg(rows, method, key):
        return sum(r["rows"][method][key] for r in rows) / len(rows)

    stated = [
        f"on {len(records)} words and phrases",
        f"({len(working)} of {len(records)})",
        f"names it in {avg(working, 'profile', 'mention_rate'):.0%} of answers",
        f"against {avg(working, 'prompting', 'mention_rate'):.0%} for prompting",
        f"keeping {avg(working, 'profile', 'relevance_score') / avg(working, 'unsteered', 'relevance_score'):.0%}",
        f"(combined score {avg(working, 'profile', 'score'):.2f} vs {avg(working, 'prompting', 'score'):.2f})",
        f"for those {len(vector)} words",
        f"({avg(vector, 'profile', 'mention_rate'):.0%} vs {avg(vector, 'prompting', 'mention_rate'):.0%})",
        f"(combined {avg(vector, 'profile', 'score'):.2f} vs {avg(vector, 'prompting', 'score'):.2f})",
        f"For {len(unmoved)} words nothing moves",
        f"a profile ({mean['profile']:.3f}) is ahead of prompting ({mean['prompting']:.3f}) and of profile plus "
        f"prompting ({mean['prompting+profile']:.3f})",
        f"vector scores {mean['mean-difference']:.2f}",
    ]
    for phrase in stated:
        assert phrase.replace("%", " %") in readme or phrase in readme, phrase
    assert mean["profile"] > mean["prompting+profile"] > mean["prompting"] > mean["mean-difference"]


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
