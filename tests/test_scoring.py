"""Judge-free scores (concept, relevance, fluency, harmonic mean), the HF scorer against a plain
computation, the mean-difference baseline's exactness, and evaluation's rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from steerkit.concept import concept_from_word
from steerkit.diffmean import CONCEPT_SYSTEM, diffmean_profiles
from steerkit.evaluate import PLOTTED_SCORES, evaluate, report_figure, write_report
from steerkit.profile import Edit, Profile
from steerkit.runtimes.hf.measure import answer_nll, answer_states, residual_norms
from steerkit.scoring import NLL_SPAN, REPETITION_SPAN, AnswerScores, harmonic, score_answers, summarise
from steerkit.weights import open_weights
from test_discover import _Tokenizer
from tiny_models import save_gguf, tiny_model

VOCAB = ["dog", "Ġdog", "ĠDogs", "cat", "Ġthe"]


def test_harmonic_mean_fails_an_answer_that_fails_one_axis():
    assert harmonic(1, 1, 1) == 1.0
    assert harmonic(1.0, 0.5, 0.5) == pytest.approx(0.6)  # 3 / (1 + 2 + 2)
    assert harmonic(1.0, 1.0, 0.0) == 0.0 and harmonic(0.0, 1.0, 1.0) == 0.0


class _ScoringBackend:
    """nll = 2 for every answer, 1.5 where the answer quotes the prompt it is scored against."""

    def __init__(self):
        self.calls = []

    def nll(self, prompts, answers, first_token=False):
        self.calls.append((list(prompts), list(answers), first_token))
        return [1.5 if p in a else 2.0 for p, a in zip(prompts, answers)]


def test_relevance_is_the_information_an_answer_carries_about_its_own_prompt():
    backend = _ScoringBackend()
    prompts = ["p0", "p1", "p2", "p3", "p4"]
    rows = [[f"about {p}" for p in prompts], ["dog dog dog dog dog"] * 5]
    scores = score_answers(backend, concept_from_word("dog", VOCAB), prompts, rows, others=3)
    (asked, answers, first_token), = backend.calls
    assert first_token  # evaluation scores the whole answer
    assert asked[:4] == ["p0", "p1", "p2", "p3"] and answers[:4] == ["about p0"] * 4  # own, then the next three
    assert asked[4 * 4:4 * 4 + 4] == ["p4", "p0", "p1", "p2"]  # cyclic
    assert [s.relevance for s in scores[0]] == [0.5] * 5 and [s.nll for s in scores[0]] == [1.5] * 5
    assert [s.relevance for s in scores[1]] == [0.0] * 5 and all(s.mentioned for s in scores[1])
    assert scores[1][0].repetition == pytest.approx(2 / 3)


def test_summary_scores_each_axis_against_the_unsteered_answer():
    reference = [AnswerScores(False, 1.0, 0.5, 0.1), AnswerScores(False, 2.0, 0.5, 0.0)]
    steered = [AnswerScores(True, 1.0 + NLL_SPAN / 2, 0.25, 0.1),  # half the relevance, half the fluency
               AnswerScores(True, 2.0, 0.5, REPETITION_SPAN / 2)]  # repetition costs half the fluency
    summary = summarise(steered, reference)
    # Per answer: harmonic(1, 0.5, 0.5) = 0.6 and harmonic(1, 1, 0.5) = 0.75.
    assert summary.score == pytest.approx((0.6 + 0.75) / 2)
    assert (summary.mention_rate, summary.concept_score) == (1.0, 1.0)
    assert summary.relevance_score == pytest.approx(0.75) and summary.fluency_score == pytest.approx(0.5)
    assert summary.nll == pytest.approx(1.75) and summary.relevance == pytest.approx(0.375)
    assert summarise(reference, reference).fluency_score == 1.0  # the unsteered answers are the yardstick
    assert summarise(reference, reference).score == 0.0  # ... and never name the concept
    assert summarise(reference, reference, suppress=True).score == pytest.approx(1.0)  # nor do they, suppressing
    assert summarise(steered, reference, suppress=True).score == 0.0


def _plain_nll(model, tokenizer, prompt: str, answer: str, first_token: bool) -> float:
    """Reference: one unbatched forward pass over prompt + answer, no cache, no padding."""
    prompt_ids = tokenizer(prompt).input_ids
    answer_ids = tokenizer(answer).input_ids
    ids = torch.tensor([prompt_ids + answer_ids])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(ids).logits[0].double(), dim=-1)
    nll = [-float(log_probs[len(prompt_ids) + k - 1, t]) for k, t in enumerate(answer_ids)]
    scored = nll if first_token else nll[1:]
    return sum(scored) / len(scored)


@pytest.mark.parametrize("first_token", [False, True])
def test_answer_nll_matches_one_plain_forward_pass_per_answer(first_token):
    model, tokenizer = tiny_model("llama"), _Tokenizer()
    prompts = ["hello", "a much longer prompt", "hello", "hello", "x"]
    answers = ["abc", "defghij", "k" * 12, "lm", "nop"]  # shared prompts, ragged answers
    got = answer_nll(model, tokenizer, prompts, answers, batch_size=2, first_token=first_token)
    want = [_plain_nll(model, tokenizer, p, a, first_token) for p, a in zip(prompts, answers)]
    np.testing.assert_allclose(got, want, rtol=1e-5)


def _unnormed_states(model, ids: list[int]) -> tuple[torch.Tensor, ...]:
    """transformers' own hidden states with the final norm taken out, so the last one is the residual
    stream after the last layer too (transformers reports it after the norm)."""
    norm, model.model.norm = model.model.norm, torch.nn.Identity()
    try:
        with torch.no_grad():
            return model(torch.tensor([ids]), output_hidden_states=True).hidden_states
    finally:
        model.model.norm = norm


def test_answer_states_average_the_residual_stream_over_answer_tokens():
    model, tokenizer = tiny_model("llama"), _Tokenizer()
    prompts, answers = ["hi", "a longer one"], ["abcd", "ef"]
    got = answer_states(model, tokenizer, prompts, answers, [0, 2])
    rows = []
    for prompt, answer in zip(prompts, answers):
        p, a = tokenizer(prompt).input_ids, tokenizer(answer).input_ids
        states = _unnormed_states(model, p + a)
        rows.append(torch.stack([states[layer + 1][0, len(p):] for layer in (0, 2)]))
    want = torch.cat(rows, dim=1).mean(dim=1).numpy()  # every answer token counts once
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_residual_norms_are_median_token_norms_after_each_layer():
    model, tokenizer = tiny_model("llama"), _Tokenizer()
    text = "some reference text with a few words"
    states = _unnormed_states(model, tokenizer(text).input_ids)
    want = [float(states[layer + 1][0, 1:].norm(dim=-1).median()) for layer in range(3)]
    np.testing.assert_allclose(residual_norms(model, tokenizer, text), want, rtol=1e-5)


class _StatesBackend:
    """Answers and residual means chosen by the test."""

    def __init__(self, positive, negative):
        self.positive, self.negative, self.asked = positive, negative, []

    def generate(self, prompts, plans, max_new_tokens):
        self.asked = prompts
        return [["about" if "Tell" in p or "about" in p or "Describe" in p else "plain" for p in prompts]]

    def answer_states(self, prompts, answers, layers):
        source = self.positive if answers[0] == "about" else self.negative
        return np.stack([source[layer] for layer in layers])


def test_mean_difference_profile_writes_exactly_the_vector(tmp_path):
    model = tiny_model("llama")
    reader = open_weights(str(save_gguf(model, tmp_path / "tiny.gguf")))
    d = reader.info.d_model
    rng = np.random.default_rng(0)
    positive = {layer: rng.normal(size=d) for layer in range(3)}
    negative = {layer: rng.normal(size=d) for layer in range(3)}
    backend = _StatesBackend(positive, negative)
    profiles = diffmean_profiles("dog", backend, reader, ["p1", "p2"], [1, 2])
    assert any("dog" in p for p in backend.asked) and backend.asked[-2:] == ["p1", "p2"]
    for layer, profile in zip([1, 2], profiles):
        assert profile.positions == "all" and {e.layer for e in profile.edits} == {layer}
        neurons = np.array([e.neuron for e in profile.edits])
        amounts = np.array([e.value for e in profile.edits])
        written = reader.down_offset(layer, neurons, amounts)  # what the edits add to the residual stream
        np.testing.assert_allclose(written, positive[layer] - negative[layer], rtol=1e-4, atol=1e-4)


class _EvalBackend:
    """Answers that name the concept under a plan; prompted rows are recognised by their system message."""

    name, measures_activations, batches_rows = "scripted", False, True

    def __init__(self, binding):
        self.binding, self.calls = binding, []

    def generate(self, prompts, plans, max_new_tokens):
        self.calls.append((prompts, plans))
        prompted = isinstance(prompts[0], list)
        return [[("dog " if plan is not None else "") + ("system " if prompted else "") + f"answer to {i}"
                 for i in range(len(prompts))] for plan in plans]

    def nll(self, prompts, answers, first_token=False):
        return [1.0 if a.endswith(f"answer to {i % 4}") else 1.5 for i, a in enumerate(answers)]


def test_evaluate_scores_every_alternative_on_the_same_prompts(tmp_path):
    model = tiny_model("llama")
    reader = open_weights(str(save_gguf(model, tmp_path / "tiny.gguf")))
    backend = _EvalBackend(reader.binding())
    profile = Profile("dog", reader.binding(), [Edit(1, 5, "add", 2.0)], positions="prompt")
    report = evaluate(profile, backend, concept_from_word("dog", VOCAB), ["q0", "q1", "q2", "q3"],
                      strengths=(0.5, 1.0), reader=reader)
    assert [r.label for r in report.rows] == ["unsteered", "profile x0.5", "profile x1", "prompting",
                                              "prompting+profile x1"]
    assert report.notes and "mean-difference" in report.notes[0]  # this backend cannot build it: said so
    prompted, plans = backend.calls[1]
    assert prompted[0][0] == {"role": "system", "content": CONCEPT_SYSTEM.format(word="dog")}
    assert prompted[0][1] == {"role": "user", "content": "q0"} and plans[0] is None and plans[1] is not None
    assert report.row("unsteered").summary.mention_rate == 0.0 and report.row("profile").summary.mention_rate == 1.0
    assert report.strengths == [0.0, 0.5, 1.0] and report.at(1.0).mention_rate == 1.0
    data = report.as_dict()
    assert {row["method"] for row in data["rows"]} == {"unsteered", "profile", "prompting", "prompting+profile"}
    assert data["answers"]["prompting"][0] == "system answer to 0"


def test_the_plot_shows_each_rows_scores_in_order(tmp_path):
    """Each bar of the eval plot is the score it is labelled with, row by row; the PNG is that figure."""
    import matplotlib.image

    model = tiny_model("llama")
    reader = open_weights(str(save_gguf(model, tmp_path / "tiny.gguf")))
    profile = Profile("dog", reader.binding(), [Edit(1, 5, "add", 2.0)], positions="prompt")
    report = evaluate(profile, _EvalBackend(reader.binding()), concept_from_word("dog", VOCAB), ["q0", "q1", "q2", "q3"],
                      strengths=(0.5, 1.0), reader=reader)
    figure = report_figure(report)
    axis = figure.axes[0]
    assert [t.get_text() for t in axis.get_xticklabels()] == [row.label for row in report.rows]
    for container, (key, label) in zip(axis.containers, PLOTTED_SCORES, strict=True):
        assert container.get_label() == label
        assert [bar.get_height() for bar in container] == [getattr(row.summary, key) for row in report.rows]
    assert len({row.summary.score for row in report.rows}) > 1  # the bars differ: a constant plot would fail above
    write_report(report, tmp_path / "eval.json", tmp_path / "eval.png")
    image = matplotlib.image.imread(tmp_path / "eval.png")
    width, height = figure.get_size_inches() * figure.dpi
    assert image.shape[:2] == (round(height), round(width)) and image.std() > 0.05
