"""Judge-free scores for steered answers: concept, instruction relevance, fluency, and one combined score.

The field's steering benchmark (AxBench) has a judge model rate every answer
0-2 on three axes -- does it bring in the concept, does it still answer the
instruction, is it fluent -- and combines them per answer by harmonic mean,
so an answer that names the concept but ignores the user scores 0.  No judge
model good enough runs offline here, so each axis is measured instead, under
the *unsteered* model:

* **concept**: the answer names the concept word (for suppression: it does not);
* **relevance**: the pointwise information the answer carries about its own
  prompt, ``mean log p(answer | own prompt) - mean log p(answer | other prompts)``
  per token.  An answer to the question scores well above 0 (SmolLM2's own
  answers: ~0.6 nats/token); one that would fit any prompt ("Dogs, dogs...")
  scores ~0;
* **fluency**: the answer's NLL (every token, nats/token) and its repeated-trigram fraction.

Each axis becomes a 0-1 score against the unsteered answers to the same
prompts: relevance as a fraction of their mean, fluency falling linearly to 0
at :data:`NLL_SPAN` extra nats/token or :data:`REPETITION_SPAN` extra
repetition over the unsteered answer to the same prompt.  The combined score is the per-answer harmonic mean of the
three, averaged over answers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from steerkit.concept import Concept
from steerkit.metrics import AnswerStats, diversity, repetition

__all__ = ["AnswerScores", "Summary", "score_answers", "summarise", "answer_stats_of", "harmonic", "NLL_SPAN", "REPETITION_SPAN",
           "OTHER_PROMPTS"]

NLL_SPAN = 1.0  # extra nats/token at which an answer counts as no longer fluent
REPETITION_SPAN = 0.3  # extra repeated-trigram fraction at which an answer counts as a loop
OTHER_PROMPTS = 3  # prompts each answer is also scored against, for relevance


@dataclass(frozen=True)
class AnswerScores:
    """The raw figures of one answer."""

    mentioned: bool
    nll: float  # nats/token of the whole answer given its prompt, unsteered model
    relevance: float  # nats/token: NLL given other prompts minus NLL given its own
    repetition: float


@dataclass(frozen=True)
class Summary:
    """One setting over all prompts: raw means and the 0-1 scores (see the module doc)."""

    mention_rate: float
    relevance: float
    nll: float
    repetition: float
    concept_score: float
    relevance_score: float
    fluency_score: float
    score: float  # mean per-answer harmonic mean of the three scores

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 4) for k, v in asdict(self).items()}


def harmonic(*values: float) -> float:
    """Harmonic mean; 0 when any value is 0 (an answer that fails one axis fails)."""
    if any(v <= 0 for v in values):
        return 0.0
    return len(values) / sum(1.0 / v for v in values)


def score_answers(backend, concept: Concept, prompts: list[str], rows: list[list[str]],
                  others: int = OTHER_PROMPTS) -> list[list[AnswerScores]]:
    """Raw figures of ``rows[setting][prompt]`` (answers to ``prompts``), scored by ``backend``'s unsteered model.

    Relevance compares each answer's NLL given its own prompt with its mean NLL
    given the next ``others`` prompts of the set (cyclically), so it needs at
    least two prompts.
    """
    n = len(prompts)
    others = min(others, n - 1)
    asked, scored_answers = [], []  # each answer after its own prompt, then after the next `others`
    for row in rows:
        for i, answer in enumerate(row):
            asked += [prompts[(i + k) % n] for k in range(1 + others)]
            scored_answers += [answer] * (1 + others)
    nll = backend.nll(asked, scored_answers, first_token=True)
    results: list[list[AnswerScores]] = []
    stride = 1 + others
    for r, row in enumerate(rows):
        scored = []
        for i, answer in enumerate(row):
            base = (r * n + i) * stride
            own, rest = nll[base], nll[base + 1: base + stride]
            relevance = sum(rest) / len(rest) - own if rest else 0.0
            scored.append(AnswerScores(concept.mentioned_in(answer), own, relevance, repetition(answer)))
        results.append(scored)
    return results


def answer_stats_of(scores: list[AnswerScores], answers: list[str]) -> AnswerStats:
    """Discovery's budget figures (:class:`steerkit.metrics.AnswerStats`) from already scored answers."""
    n = max(1, len(scores))
    return AnswerStats(sum(s.mentioned for s in scores) / n, sum(s.nll for s in scores) / n,
                       sum(s.repetition for s in scores) / n, diversity(answers))


def _clip(value: float) -> float:
    return min(1.0, max(0.0, value))


def summarise(scores: list[AnswerScores], reference: list[AnswerScores], suppress: bool = False) -> Summary:
    """The :class:`Summary` of one setting's answers, scored against the unsteered ``reference`` answers
    to the same prompts: fluency per prompt (this answer against the unsteered one), relevance against
    the unsteered mean (one prompt's figure is too noisy to divide by)."""
    n = max(1, len(scores))
    ref_relevance = max(sum(s.relevance for s in reference) / max(1, len(reference)), 1e-6)
    concept, relevance, fluency, combined = [], [], [], []
    for s, ref in zip(scores, reference, strict=True):
        c = float(s.mentioned != suppress)
        r = _clip(s.relevance / ref_relevance)
        f = (_clip(1 - max(0.0, s.nll - ref.nll) / NLL_SPAN)
             * _clip(1 - max(0.0, s.repetition - ref.repetition) / REPETITION_SPAN))
        concept.append(c)
        relevance.append(r)
        fluency.append(f)
        combined.append(harmonic(c, r, f))
    return Summary(
        sum(s.mentioned for s in scores) / n,
        sum(s.relevance for s in scores) / n,
        sum(s.nll for s in scores) / n,
        sum(s.repetition for s in scores) / n,
        sum(concept) / n, sum(relevance) / n, sum(fluency) / n, sum(combined) / n,
    )
