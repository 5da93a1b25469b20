"""How well a profile steers: mention rate and fluency against the unsteered model, over a strength sweep.

``steerkit eval`` answers a prompt set at several strengths (strength 0 is the
unsteered model) and reports, for each, the concept mention rate and the
fluency figures of :mod:`steerkit.metrics`.  Results go to JSON and a PNG plot.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from steerkit.cache import atomic_write
from steerkit.concept import Concept, concept_from_word
from steerkit.metrics import AnswerStats, measure_plans
from steerkit.plan import compile_plan
from steerkit.profile import Profile
from steerkit.prompts import builtin_prompts

__all__ = ["EvalReport", "profile_goal", "profile_concept", "evaluate", "write_report"]

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


@dataclass
class EvalReport:
    """Figures per strength (strength 0 = unsteered) on one prompt set."""

    profile: str
    concept: str
    goal: str
    prompts: list[str]
    strengths: list[float]
    stats: list[AnswerStats]
    answers: list[list[str]]
    max_new_tokens: int

    def at(self, strength: float) -> AnswerStats:
        return self.stats[self.strengths.index(strength)]

    def as_dict(self) -> dict:
        return {
            "profile": self.profile, "concept": self.concept, "goal": self.goal,
            "max_new_tokens": self.max_new_tokens, "prompts": self.prompts,
            "sweep": [{"strength": s, **st.as_dict()} for s, st in zip(self.strengths, self.stats)],
            "answers": {str(s): a for s, a in zip(self.strengths, self.answers)},
        }


def evaluate(profile: Profile, backend, concept: Concept, prompts: list[str] | None = None,
             strengths: tuple[float, ...] = STRENGTHS, max_new_tokens: int = 40) -> EvalReport:
    """Answer ``prompts`` (default: the built-in neutral set, or the elicit set for suppressing profiles)
    at each strength and summarise each set of answers."""
    goal = profile_goal(profile)
    prompts = prompts or builtin_prompts("elicit" if goal == "suppress" else "neutral")
    strengths = tuple(sorted({0.0, *strengths}))
    plans = [None if s == 0 else compile_plan([profile], backend.binding, s) for s in strengths]
    answers, stats = measure_plans(backend, concept, prompts, plans, max_new_tokens)
    return EvalReport(profile.name, concept.word, goal, prompts, list(strengths), stats, answers, max_new_tokens)


def write_report(report: EvalReport, json_path: Path, png_path: Path | None) -> None:
    """Write the report as JSON and (optionally) a PNG plot of mention rate and fluency against strength."""
    with atomic_write(json_path, suffix=".json") as tmp:
        tmp.write_text(json.dumps(report.as_dict(), indent=1, ensure_ascii=False), encoding="utf-8")
    if png_path is None:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, mention_axis = plt.subplots(figsize=(6, 3.6), dpi=110)
    mention_axis.plot(report.strengths, [s.mention_rate for s in report.stats], "o-", color="tab:blue",
                      label=f"mentions of {report.concept!r}")
    mention_axis.set_xlabel("strength (0 = unsteered)")
    mention_axis.set_ylabel("mention rate", color="tab:blue")
    mention_axis.set_ylim(-0.05, 1.05)
    fluency_axis = mention_axis.twinx()
    fluency_axis.plot(report.strengths, [s.nll for s in report.stats], "s--", color="tab:red", label="NLL (nats/token)")
    fluency_axis.plot(report.strengths, [s.repetition * 10 for s in report.stats], "^:", color="tab:orange",
                      label="repetition x10")
    fluency_axis.set_ylabel("fluency cost", color="tab:red")
    handles = mention_axis.get_legend_handles_labels()[0] + fluency_axis.get_legend_handles_labels()[0]
    mention_axis.legend(handles, [h.get_label() for h in handles], loc="upper left", fontsize=8)
    mention_axis.set_title(f"{report.profile}: {report.goal} {report.concept!r}, {len(report.prompts)} prompts")
    figure.tight_layout()
    with atomic_write(png_path, suffix=".png") as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)
