"""Figures for a set of answers: how often they name a concept, how repetitive they are."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from steerkit.concept import Concept

__all__ = ["repetition", "diversity", "AnswerStats", "answer_stats"]


def repetition(text: str) -> float:
    """Fraction of repeated word trigrams (0 for varied text, near 1 for loops like "dog dog dog ...")."""
    words = text.split()
    trigrams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
    return 1.0 - len(set(trigrams)) / len(trigrams) if trigrams else 0.0


@dataclass(frozen=True)
class AnswerStats:
    """Summary of one set of answers (one setting, all prompts)."""

    mention_rate: float  # fraction of answers naming the concept
    nll: float  # mean NLL of the answers (every token) given their prompts, unsteered model, nats/token
    repetition: float  # mean repeated-trigram fraction
    diversity: float  # distinct word pairs over all answers / all word pairs (falls when answers are alike)

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 4) for k, v in asdict(self).items()}


def diversity(texts: list[str]) -> float:
    """Distinct word pairs over all ``texts`` divided by all word pairs (1 = nothing repeats anywhere)."""
    pairs = [tuple(words[i:i + 2]) for words in (t.lower().split() for t in texts) for i in range(len(words) - 1)]
    return len(set(pairs)) / len(pairs) if pairs else 0.0


def answer_stats(concept: Concept, answers: list[str], nll: list[float]) -> AnswerStats:
    """Mention rate, mean NLL, mean repetition and diversity of ``answers``."""
    n = max(1, len(answers))
    return AnswerStats(
        sum(concept.mentioned_in(a) for a in answers) / n,
        sum(nll) / max(1, len(nll)),
        sum(repetition(a) for a in answers) / n,
        diversity(answers),
    )
