"""Figures for a set of answers: how often they name a concept, how repetitive they are."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from steerkit.concept import Concept

__all__ = ["repetition", "diversity", "AnswerStats", "answer_stats", "measure_plans"]


def repetition(text: str) -> float:
    """Fraction of repeated word trigrams (0 for varied text, near 1 for loops like "dog dog dog ...")."""
    words = text.split()
    trigrams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
    return 1.0 - len(set(trigrams)) / len(trigrams) if trigrams else 0.0


@dataclass(frozen=True)
class AnswerStats:
    """Summary of one set of answers (one setting, all prompts)."""

    mention_rate: float  # fraction of answers naming the concept
    nll: float  # mean NLL of the answers (after their first token) given their prompts, unsteered model, nats/token
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


def measure_plans(backend, concept: Concept, prompts: list[str], plans: list, max_new_tokens: int
                  ) -> tuple[list[list[str]], list[AnswerStats]]:
    """Answer ``prompts`` greedily under each plan (``None``: unsteered) with a backend
    (:class:`steerkit.runtimes.base.Backend`: anything with ``generate`` and ``nll``);
    return the answers ``[plan][prompt]`` and one :class:`AnswerStats` per plan."""
    answers = backend.generate(prompts, plans, max_new_tokens)
    nll = backend.nll([p for _ in answers for p in prompts], [a for row in answers for a in row])
    n = len(prompts)
    return answers, [answer_stats(concept, row, nll[k * n:(k + 1) * n]) for k, row in enumerate(answers)]
