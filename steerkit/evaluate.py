"""How well a profile steers, next to what a user would do instead.

``steerkit eval`` answers a prompt set with the profile at several strengths
and with the alternatives -- the unsteered model, prompting (a system message
asking for the concept), prompting plus the profile, and a mean-difference
vector for the same concept -- and scores every answer on concept,
instruction relevance and fluency (:mod:`steerkit.scoring`).  Results go to
JSON and a PNG plot.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from steerkit.cache import atomic_write
from steerkit.concept import Concept, concept_from_word
from steerkit.diffmean import concept_messages, diffmean_profile
from steerkit.metrics import AnswerStats
from steerkit.plan import Plan, compile_plan
from steerkit.profile import Profile
from steerkit.prompts import builtin_prompts
from steerkit.scoring import (NLL_SPAN, OTHER_PROMPTS, REPETITION_SPAN, Summary, answer_stats_of, score_answers,
                              summarise)

__all__ = ["EvalReport", "Row", "METHODS", "PLOTTED_SCORES", "profile_goal", "profile_concept", "evaluate", "report_figure",
           "write_report"]

STRENGTHS = (0.0, 0.5, 1.0, 1.5)


def profile_goal(profile: Profile) -> str:
    """``"suppress"`` or ``"promote"``, from the profile's provenance (or its ``no-`` name)."""
    goal = profile.provenance.get("goal")
    if goal in ("promote", "suppress"):
        return goal
    return "suppress" if profile.name.startswith("no-") else "promote"


def profile_concept(profile: Profile, vocab: list[str], word: str | None = None) -> Concept:
    """The concept a profile is about: ``word``, the provenance's concept, or the profile name."""
    if word is None:
        recorded = profile.provenance.get("concept")
        word = recorded.get("word") if isinstance(recorded, dict) else None
    if word is None:
        word = profile.name.removeprefix("no-")
    return concept_from_word(word, vocab)


METHODS = ("unsteered", "profile", "prompting", "prompting+profile", "mean-difference")
DIFFMEAN_STRENGTHS = (0.5, 1.0, 2.0)


@dataclass
class Row:
    """One way of answering the prompts: a method at a strength, its answers and their figures."""

    method: str  # one of METHODS
    strength: float  # the profile's (or mean-difference vector's) strength; 0 where nothing is steered
    stats: AnswerStats  # discovery's figures (mention rate, NLL, repetition, diversity): what its budget judges
    summary: Summary  # concept, relevance, fluency and the combined score (steerkit.scoring)
    answers: list[str]

    @property
    def label(self) -> str:
        return self.method if self.method in ("unsteered", "prompting") else f"{self.method} x{self.strength:g}"

    def as_dict(self) -> dict:
        return {"method": self.method, "strength": self.strength, **self.summary.as_dict(),
                "diversity": round(self.stats.diversity, 4)}


@dataclass
class EvalReport:
    """Every method's figures on one prompt set (see :func:`evaluate`)."""

    profile: str
    concept: str
    goal: str
    prompts: list[str]
    rows: list[Row]
    max_new_tokens: int
    notes: list[str]

    @property
    def sweep(self) -> list[Row]:
        """The unsteered row and the profile at each strength, by strength."""
        return sorted((r for r in self.rows if r.method in ("unsteered", "profile")), key=lambda r: r.strength)

    @property
    def strengths(self) -> list[float]:
        return [r.strength for r in self.sweep]

    @property
    def stats(self) -> list[AnswerStats]:
        return [r.stats for r in self.sweep]

    @property
    def answers(self) -> list[list[str]]:
        return [r.answers for r in self.sweep]

    def at(self, strength: float) -> AnswerStats:
        """Discovery's figures of the profile at ``strength`` (0: unsteered)."""
        return self.stats[self.strengths.index(strength)]

    def row(self, method: str, strength: float | None = None) -> Row:
        """The row of ``method`` (at ``strength``, else its best-scoring one)."""
        rows = [r for r in self.rows if r.method == method and (strength is None or r.strength == strength)]
        if not rows:
            raise KeyError(f"no {method!r} row" + (f" at strength {strength:g}" if strength is not None else ""))
        return max(rows, key=lambda r: r.summary.score)

    def as_dict(self) -> dict:
        return {
            "profile": self.profile, "concept": self.concept, "goal": self.goal,
            "max_new_tokens": self.max_new_tokens, "prompts": self.prompts, "notes": self.notes,
            "scoring": {"nll_span": NLL_SPAN, "repetition_span": REPETITION_SPAN, "other_prompts": OTHER_PROMPTS},
            "rows": [r.as_dict() for r in self.rows],
            "answers": {r.label: r.answers for r in self.rows},
        }


def evaluate(profile: Profile, backend, concept: Concept, prompts: list[str] | None = None,
             strengths: tuple[float, ...] = STRENGTHS, max_new_tokens: int = 40, baselines: bool = True,
             reader=None, log: Callable[[str], None] = lambda message: None) -> EvalReport:
    """Answer ``prompts`` (default: the built-in neutral set, or the elicit set for suppressing profiles)
    greedily with the profile at each strength and, with ``baselines``, with the alternatives a user has:
    prompting (a system message), prompting plus the profile, and a mean-difference vector for the same
    concept (built when the backend measures the residual stream and ``reader`` is given).  Every row is
    scored on the same prompts by the unsteered model (:mod:`steerkit.scoring`)."""
    goal = profile_goal(profile)
    suppress = goal == "suppress"
    prompts = prompts or builtin_prompts("elicit" if suppress else "neutral")
    notes: list[str] = []
    plain: list[tuple[str, float, Plan | None]] = [("unsteered", 0.0, None)]
    plain += [("profile", s, compile_plan([profile], backend.binding, s)) for s in sorted(set(strengths) - {0.0})]
    prompted: list[tuple[str, float, Plan | None]] = []
    if baselines:
        prompted = [("prompting", 0.0, None), ("prompting+profile", 1.0, compile_plan([profile], backend.binding))]
        if backend.measures_activations and reader is not None:
            log("building the mean-difference baseline")
            vector = diffmean_profile(concept.word, backend, reader, builtin_prompts("calibration"), max_new_tokens)
            sign = -1.0 if suppress else 1.0
            plain += [("mean-difference", s, compile_plan([vector], backend.binding, sign * s))
                      for s in DIFFMEAN_STRENGTHS]
        else:
            notes.append(f"mean-difference baseline left out: the {backend.name} backend cannot measure the "
                         f"residual stream (use --runtime hf)")
    log(f"answering {len(prompts)} prompts {len(plain) + len(prompted)} ways")
    answers = backend.generate(prompts, [plan for _, _, plan in plain], max_new_tokens)
    if prompted:
        answers += backend.generate([concept_messages(p, concept.word, suppress) for p in prompts],
                                    [plan for _, _, plan in prompted], max_new_tokens)
    log("scoring the answers with the unsteered model")
    scores = score_answers(backend, concept, prompts, answers)
    rows = []
    for k, ((method, strength, _), row) in enumerate(zip(plain + prompted, answers)):
        stats = answer_stats_of(scores[k], row)
        rows.append(Row(method, strength, stats, summarise(scores[k], scores[0], suppress), row))
    return EvalReport(profile.name, concept.word, goal, prompts, rows, max_new_tokens, notes)


PLOTTED_SCORES = (("concept_score", "concept"), ("relevance_score", "relevance"), ("fluency_score", "fluency"),
                  ("score", "combined"))


def report_figure(report: EvalReport):
    """A matplotlib figure of the report: per row, one bar for each of ``PLOTTED_SCORES`` in that order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    figure, axis = plt.subplots(figsize=(max(6.0, 1.1 * len(report.rows)), 3.8), dpi=110)
    width = 0.8 / len(PLOTTED_SCORES)
    for k, (key, label) in enumerate(PLOTTED_SCORES):
        values = [getattr(row.summary, key) for row in report.rows]
        axis.bar(np.arange(len(report.rows)) + (k - (len(PLOTTED_SCORES) - 1) / 2) * width, values, width, label=label)
    axis.set_xticks(range(len(report.rows)), [row.label for row in report.rows], rotation=20, ha="right", fontsize=8)
    axis.set_ylim(0, 1.05)
    axis.set_ylabel("score (0-1, scored by the unsteered model)")
    axis.legend(fontsize=8, ncol=4, loc="upper right")
    axis.set_title(f"{report.profile}: {report.goal} {report.concept!r}, {len(report.prompts)} prompts, "
                   f"{report.max_new_tokens} tokens", fontsize=10)
    figure.tight_layout()
    return figure


def write_report(report: EvalReport, json_path: Path, png_path: Path | None) -> None:
    """Write the report as JSON and (optionally) a PNG: each row's concept, relevance, fluency and combined score."""
    with atomic_write(json_path, suffix=".json") as tmp:
        tmp.write_text(json.dumps(report.as_dict(), indent=1, ensure_ascii=False), encoding="utf-8")
    if png_path is None:
        return
    import matplotlib.pyplot as plt

    figure = report_figure(report)
    with atomic_write(png_path, suffix=".png") as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)
