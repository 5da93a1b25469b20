"""Discovery pieces on tiny models: candidate signs, per-row hooks, the sweep's choice, the profile it writes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from steerkit.runtimes.hf import attach, model_binding
from steerkit.runtimes.hf.hooks import attach_rows
from steerkit.runtimes.hf.measure import activation_scale, answer_nll, generate_rows
from steerkit.atlas import build_atlas
from steerkit.candidates import rank_candidates
from steerkit.concept import concept_from_word
from steerkit.discovery import Budget, atlas_for_discovery, discover
from steerkit.errors import SteerkitError, UnsupportedEdit
from steerkit.metrics import AnswerStats
from steerkit.plan import compile_plan
from steerkit.profile import Edit, Profile, dump_profile, parse_profile
from steerkit.weights import open_weights
from reference import activations
from tiny_models import save_gguf, tiny_model


@pytest.fixture
def planted(tmp_path):
    """A tiny llama whose neuron 2:7 writes *against* "dog" (write- view) and 1:5 writes for it."""
    model = tiny_model("llama")
    with torch.no_grad():
        dog = model.model.embed_tokens.weight[[0, 1, 2, 3]].sum(0)
        model.model.layers[2].mlp.down_proj.weight[:, 7] = -10 * dog / dog.norm()
        model.model.layers[1].mlp.down_proj.weight[:, 5] = 6 * dog / dog.norm()
        model.model.layers[0].mlp.down_proj.weight[:, 3] = 20 * dog / dog.norm()  # layer 0: never chosen
    path = save_gguf(model, tmp_path / "planted.gguf")
    reader = open_weights(str(path))
    return model, reader, build_atlas(reader, top_k=5, progress=False)


def test_candidates_take_the_sign_that_promotes_the_concept(planted):
    _, reader, atlas = planted
    candidates = rank_candidates(reader, atlas, concept_from_word("dog", atlas.vocab), limit=4)
    found = {(c.layer, c.neuron): c for c in candidates}
    assert found[(2, 7)].sign == -1 and found[(1, 5)].sign == 1
    assert {(c.layer, c.neuron) for c in candidates[:2]} == {(2, 7), (1, 5)}  # same direction: same decoding
    assert all(c.layer > 0 for c in candidates)  # llama.cpp control vectors cannot reach layer 0
    assert all(0 < c.specificity <= 1 for c in candidates[:2]) and "dog" in "".join(found[(2, 7)].tokens).lower()


def test_candidate_scores_are_what_the_model_predicts_from_each_vector(planted):
    """Each candidate's figures, recomputed from the model itself (its final norm and LM head on the neuron's
    up row and down column, both signs): concept probability, specificity against the top token, score."""
    model, reader, atlas = planted

    def predicted(vector):
        with torch.no_grad():
            return torch.softmax(model.lm_head(model.model.norm(vector[None, None]))[0, 0].double(), -1)

    # "dog": the best six, planted ones among them; "cat": every neuron past layer 0 (layer 0 is left out,
    # never chosen), most of them with another top token.
    every = (reader.info.n_layers - 1) * reader.info.d_ff
    # Ranked from the atlas, and without one from a shortlist of write sides.
    concepts = [(concept_from_word(word, atlas.vocab), limit) for word, limit in (("dog", 6), ("cat", every))]
    ranked = [(concept, rank_candidates(reader, source, concept, limit=limit, shortlisted=shortlisted))
              for concept, limit in concepts for source, shortlisted in ((atlas, 0), (None, 24), (None, 1024))]
    assert [(c.layer, c.neuron, c.sign) for c in ranked[0][1]] == [(c.layer, c.neuron, c.sign) for c in ranked[1][1]]
    assert len(ranked[5][1]) == every and {(c.layer, c.neuron) for c in ranked[5][1]} == {
        (c.layer, c.neuron) for c in ranked[3][1]}  # a shortlist of every side: every neuron
    assert any(c.specificity < 0.9 for _, candidates in ranked for c in candidates)  # the min(1, ...) does not hide it
    for concept, c in ((concept, c) for concept, candidates in ranked for c in candidates):
        mlp = model.model.layers[c.layer].mlp
        write = predicted(c.sign * mlp.down_proj.weight[:, c.neuron])
        reads = [predicted(sign * mlp.up_proj.weight[c.neuron]) for sign in (1, -1)]
        write_prob = float(write[list(concept.token_ids)].sum())
        read_prob = max(float(r[list(concept.token_ids)].sum()) for r in reads)
        specificity = min(1.0, write_prob / float(write.max()))
        assert c.write_prob == pytest.approx(write_prob, rel=1e-4, abs=1e-7)
        assert c.read_prob == pytest.approx(read_prob, rel=1e-4, abs=1e-7)
        assert c.specificity == pytest.approx(specificity, rel=1e-4, abs=1e-7)
        assert c.score == pytest.approx(write_prob * specificity * (1 + read_prob), rel=1e-3, abs=1e-7)
    for _, candidates in ranked:
        assert [c.score for c in candidates] == sorted((c.score for c in candidates), reverse=True)


def test_rows_of_a_batch_get_their_own_plan(tmp_path):
    model = tiny_model("llama")
    binding = model_binding(model)
    plans = [
        compile_plan([Profile("a", binding, [Edit(1, 3, "clamp", 4.0), Edit(2, 9, "scale", -2.0)])]),
        compile_plan([Profile("b", binding, [Edit(2, 9, "add", 3.0)], positions="prompt")]),
        compile_plan([]),
    ]
    ids = torch.randint(3, 96, (3, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = model(ids).logits
    handle = attach_rows(model, plans)
    handle.set_prompt_length(6)
    with torch.no_grad():
        together = model(ids).logits
    handle.remove()
    for row, plan in enumerate(plans):
        single = attach(model, plan)
        single.set_prompt_length(6)
        with torch.no_grad():
            alone = model(ids[row:row + 1]).logits[0]
        single.remove()
        torch.testing.assert_close(together[row], alone, atol=1e-5, rtol=1e-5)
    assert torch.equal(together[2], plain[2]) and not torch.allclose(together[0], plain[0])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, plain)  # every hook removed


class _Tokenizer:
    """Just enough of a tokenizer for the tiny model (token i <-> "t{i} ")."""

    pad_token_id, eos_token_id, pad_token, eos_token, chat_template, padding_side = 0, 2, "p", "e", None, "left"

    def __call__(self, texts, return_tensors=None, padding=False, add_special_tokens=True):
        single = isinstance(texts, str)
        rows = [[3 + (ord(c) % 90) for c in t] or [3] for t in ([texts] if single else texts)]
        if return_tensors is None:
            return type("Enc", (), {"input_ids": rows[0] if single else rows})()
        width = max(len(r) for r in rows)
        ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])

        class Batch(dict):
            input_ids = ids

            def to(self, device):
                return self

        return Batch(input_ids=ids, attention_mask=mask)

    def batch_decode(self, rows, skip_special_tokens=True):
        return [" ".join(f"t{int(i)}" for i in row) for row in rows]


def test_measurements_on_a_tiny_model():
    model, tokenizer = tiny_model("llama"), _Tokenizer()
    scale = activation_scale(model, tokenizer, "some reference text")
    # Reference: each MLP's input as transformers passes it, and h = act(gate x) * up x computed by hand.
    inputs = {}
    handles = [layer.mlp.register_forward_hook(lambda m, args, out, k=k: inputs.__setitem__(k, args[0]))
               for k, layer in enumerate(model.model.layers)]
    with torch.no_grad():
        model(tokenizer("some reference text", return_tensors="pt").input_ids)
    for handle in handles:
        handle.remove()
    for k, layer in enumerate(model.model.layers):
        mlp, x = layer.mlp, inputs[k][0]
        h = activations(x, mlp.gate_proj.weight, mlp.up_proj.weight)
        np.testing.assert_allclose(scale[k], h.detach().abs().amax(0).numpy(), rtol=1e-5, atol=1e-7)
    binding = model_binding(model)
    plan = compile_plan([Profile("a", binding, [Edit(2, 9, "add", 50.0)], positions="prompt")])
    answers = generate_rows(model, tokenizer, ["hi", "hello there"], [None, plan], 4, batch_size=3)
    assert len(answers) == 2 and all(len(row) == 2 for row in answers)
    # Prompt-position edits under left padding (discovery batches prompts of different lengths): each row of a
    # batch answers as that prompt alone, and the edit is seen (the steered answers differ from the plain ones).
    prompts = ["hi", "hello there", "a much longer prompt than the others"]
    batched = generate_rows(model, tokenizer, prompts, [None, plan], 6, batch_size=6)
    alone = [generate_rows(model, tokenizer, [p], [None, plan], 6, batch_size=1) for p in prompts]
    assert all(batched[r][k] == alone[k][r][0] for r in range(2) for k in range(3))  # [plan][prompt]
    assert batched[0] != batched[1]
    nll = answer_nll(model, tokenizer, ["hi", "hello"], ["abc", "de"])
    assert len(nll) == 2 and all(v > 0 for v in nll)


class _ScriptedEvaluator:
    """An evaluator whose answers mention the concept more as the summed edit size grows.

    Answers stay fluent ("x") up to ``fluent_up_to`` and keep to their prompt (they quote it, and
    the scorer finds them likelier after it) up to ``relevant_up_to``.
    """

    def __init__(self, binding, fluent_up_to: float, relevant_up_to: float = float("inf")):
        self.binding, self.fluent_up_to, self.relevant_up_to, self.plans = binding, fluent_up_to, relevant_up_to, []

    def activation_scale(self, text):
        return torch.ones(3, 48).numpy()

    def generate(self, prompts, plans, max_new_tokens):
        self.plans = plans
        rows = []
        for plan in plans:
            size = 0.0 if plan is None else sum(abs(e.add).sum() for g in plan.groups for e in g.layers)
            rows.append([("dog " if size >= 16 * (k + 1) else "cat ") + (f"{p} " if size <= self.relevant_up_to else f"w{k} ")
                         + ("x" if size <= self.fluent_up_to else "y") for k, p in enumerate(prompts)])
        return rows

    def nll(self, prompts, answers, first_token=False):
        return [(1.0 if a.endswith("x") else 9.0) - (0.5 if f" {p} " in a else 0.0) for p, a in zip(prompts, answers)]


def test_discover_chooses_the_strongest_setting_inside_the_budget(planted):
    _, reader, atlas = planted
    evaluator = _ScriptedEvaluator(reader.binding(), fluent_up_to=64)
    found = discover("dog", reader, atlas, evaluator, prompts=["p1", "p2", "p3"], positions="prompt")
    profile = found.profile
    assert found.chosen.in_budget and found.chosen.stats.mention_rate == 1.0
    assert sum(abs(e.value) for e in profile.edits) <= 64
    # Among equally good settings, the most fluent (then the first) wins; none over budget is chosen.
    assert all(not p.in_budget or p.stats.mention_rate <= found.chosen.stats.mention_rate for p in found.sweep)
    assert profile.positions == "prompt" and all(e.op == "add" for e in profile.edits)
    signs = {(c.layer, c.neuron): c.sign for c in found.candidates}
    assert all((e.value > 0) == (signs[(e.layer, e.neuron)] > 0) for e in profile.edits)
    again = parse_profile(dump_profile(profile))  # what discover writes is a valid profile
    assert again.edits == profile.edits and again.provenance["goal"] == "promote"
    calibration = again.provenance["calibration"]
    assert calibration["chosen"]["in_budget"] and len(calibration["sweep"]) == len(found.sweep)
    assert {c["neuron"] for c in again.provenance["candidates"][:2]} == {"2:7", "1:5"}


def test_discover_prefers_answers_that_still_answer_the_question(planted):
    """Past ``relevant_up_to`` answers name the concept more but stop answering: the combined score says no."""
    _, reader, atlas = planted
    evaluator = _ScriptedEvaluator(reader.binding(), fluent_up_to=1e9, relevant_up_to=32)
    found = discover("dog", reader, atlas, evaluator, prompts=["p1", "p2", "p3"], positions="prompt")
    size = sum(abs(e.value) for e in found.profile.edits)
    assert size <= 32 and found.chosen.stats.mention_rate == pytest.approx(2 / 3) and found.moved
    louder = [p for p in found.sweep if p.in_budget and p.stats.mention_rate > found.chosen.stats.mention_rate]
    assert louder and all(p.summary.score < found.chosen.summary.score for p in louder)
    assert found.profile.provenance["calibration"]["chosen"]["score"] == round(found.chosen.summary.score, 4)


def test_suppress_clamps_against_the_promoting_sign_everywhere(planted):
    _, reader, atlas = planted
    found = discover("dog", reader, atlas, _ScriptedEvaluator(reader.binding(), 1e9), suppress=True, prompts=["p"])
    signs = {(c.layer, c.neuron): c.sign for c in found.candidates}
    assert found.profile.positions == "all" and found.profile.name == "no-dog"
    assert all(e.op == "clamp" and (e.value > 0) == (signs[(e.layer, e.neuron)] < 0) for e in found.profile.edits)
    assert found.chosen.stats.mention_rate == min(p.stats.mention_rate for p in found.sweep)


def test_budget_compares_against_the_unsteered_answers():
    base = AnswerStats(0.0, 1.0, 0.05, 0.9)
    budget = Budget(nll=1.0, repetition=0.1, diversity=0.6)
    assert budget.allows(AnswerStats(1.0, 1.9, 0.14, 0.6), base)
    assert not budget.allows(AnswerStats(1.0, 2.1, 0.05, 0.9), base)
    assert not budget.allows(AnswerStats(1.0, 1.0, 0.2, 0.9), base)
    assert not budget.allows(AnswerStats(1.0, 1.0, 0.05, 0.5), base)


def test_steer_finds_shipped_then_cached_then_discovers(planted, monkeypatch, tmp_path):
    """profile_for_concept: a shipped profile that fits wins; else the cache; else discovery (then cached)."""
    import steerkit.discovery as discovery
    import steerkit.runtimes
    import steerkit.shipped
    from steerkit.profile import save_profile

    _, reader, atlas = planted
    path = str(reader.path)
    calls = []

    def fake_discover(word, reader_, atlas_, evaluator, suppress=False, log=None, **kwargs):
        calls.append(word)
        profile = Profile(f"{'no-' if suppress else ''}{word}", reader.binding(), [Edit(1, 5, "add", 2.0)], positions="prompt")
        return type("Found", (), {"profile": profile, "moved": word != "cat", "failure": lambda self: "nothing moved"})()

    monkeypatch.setattr(discovery, "discover", fake_discover)
    monkeypatch.setattr(steerkit.runtimes, "load_backend", lambda model, needs=(): None)
    monkeypatch.setattr(steerkit.shipped, "shipped_dir", lambda: tmp_path)
    found, origin = discovery.profile_for_concept("dog", path)
    assert origin == "discovered" and calls == ["dog"] and found.is_file()
    again, origin = discovery.profile_for_concept("dog", path)
    assert (again, origin, calls) == (found, "cached", ["dog"])
    # A shipped profile for another model is skipped; one for this model is used.
    other = Profile("dog", reader.binding(), [Edit(1, 5, "add", 1.0)])
    save_profile(Profile("dog", type(other.model)("llama", 30, 576, 1536, 49152), other.edits), tmp_path / "dog.yaml")
    assert discovery.profile_for_concept("dog", path)[1] == "cached"
    save_profile(other, tmp_path / "dog.yaml")
    assert discovery.profile_for_concept("dog", path) == (tmp_path / "dog.yaml", "shipped")
    assert discovery.profile_for_concept("dog", path, suppress=True)[1] == "discovered" and calls[-1] == "dog"
    # Honest failure: a discovery that moved nothing is refused in one line, and nothing is cached.
    with pytest.raises(SteerkitError, match="nothing moved"):
        discovery.profile_for_concept("cat", path)
    assert not discovery.discovered_profile_path(open_weights(path), "cat").exists()


def test_discover_all_positions_makes_a_profile_weights_can_carry(planted):
    from steerkit.discovery import PROMOTE_ALL_MULTIPLES

    _, reader, atlas = planted
    evaluator = _ScriptedEvaluator(reader.binding(), fluent_up_to=64)
    found = discover("dog", reader, atlas, evaluator, prompts=["p1", "p2", "p3"], positions="all")
    assert found.profile.positions == "all" and all(e.op == "add" for e in found.profile.edits)
    assert {p.setting.multiple for p in found.sweep} == set(PROMOTE_ALL_MULTIPLES)
    compile_plan([found.profile]).merged()  # bakeable: no position restriction
    assert "every position" in found.profile.description
    with pytest.raises(SteerkitError, match="positions"):
        discover("dog", reader, atlas, evaluator, positions="generated")


class _NoNeuronEvaluator(_ScriptedEvaluator):
    """No neuron setting moves the concept; a concept vector (adds on every neuron of a layer) does.
    It reads the residual stream as a fixed direction ``DIRECTION`` in answers that name the word."""

    DIRECTION = torch.linspace(-1, 1, 32).numpy() ** 3 + 0.1
    measures_activations = True

    def generate(self, prompts, plans, max_new_tokens):
        self.plans = plans
        dense = [plan is not None and sum(len(e.neurons) for g in plan.groups for e in g.layers) >= 40 for plan in plans]
        return [[("dog " if is_vector else "cat ") + f"{p} x" for p in prompts] for is_vector in dense]

    def residual_norms(self, text):
        return [10.0, 20.0, 30.0]

    def answer_states(self, prompts, answers, layers):
        named = sum("dog" in a for a in answers) / len(answers)
        return np.array([named * self.DIRECTION + 5.0 for _ in layers])


def test_discover_falls_back_on_the_concept_vector_when_no_neuron_moves_it(planted):
    """The fallback adds the model's own direction for the word on the prompt positions: exactly that
    direction, at the chosen fraction of the residual norm after its layer, written as neuron adds."""
    from steerkit.discovery import VECTOR_FRACTIONS

    _, reader, atlas = planted
    found = discover("dog", reader, atlas, _NoNeuronEvaluator(reader.binding(), 1e9), prompts=["p1", "p2"],
                     positions="prompt")
    vectors = [p for p in found.sweep if p.setting.layer is not None]
    assert {p.setting.multiple for p in vectors} == set(VECTOR_FRACTIONS) and {p.setting.layer for p in vectors} == {1}
    assert all(p.stats.mention_rate == 0 for p in found.sweep if p.setting.layer is None)
    assert found.moved and found.chosen.setting.layer == 1 and "own direction" in found.notes[-1]
    profile = found.profile
    assert profile.positions == "prompt" and {(e.layer, e.op) for e in profile.edits} == {(1, "add")}
    assert len(profile.edits) == 48
    added = reader.down_cols(1).T.astype(np.float64) @ np.array([e.value for e in profile.edits])
    expected = found.chosen.setting.multiple * 20.0 * _NoNeuronEvaluator.DIRECTION / np.linalg.norm(
        _NoNeuronEvaluator.DIRECTION)
    np.testing.assert_allclose(added, expected, atol=1e-3 * np.abs(expected).max())
    chosen = parse_profile(dump_profile(profile)).provenance["calibration"]["chosen"]
    assert (chosen["direction"], chosen["after_layer"]) == ("sentences", 1)


def test_no_fallback_when_a_neuron_setting_moves_the_concept(planted):
    _, reader, atlas = planted
    found = discover("dog", reader, atlas, _ScriptedEvaluator(reader.binding(), fluent_up_to=64), prompts=["p1", "p2"],
                     positions="prompt")
    assert found.chosen.stats.mention_rate - found.baseline.mention_rate >= 0.5
    assert all(p.setting.layer is None for p in found.sweep)  # _ScriptedEvaluator cannot read the residual stream


class _RepetitiveEvaluator(_ScriptedEvaluator):
    """Small edits name the concept in the first answer only; large ones in every answer, fluently by NLL
    and on topic, but with 22 % repeated trigrams (over the +0.10 budget, still a fair combined score)."""

    def generate(self, prompts, plans, max_new_tokens):
        self.plans = plans
        rows = []
        for plan in plans:
            size = 0.0 if plan is None else sum(abs(e.add).sum() for g in plan.groups for e in g.layers)
            rows.append([f"dog {p} a b a b a b c d x" if size > 32 else
                         ("dog " if size > 0 and k == 0 else "cat ") + f"{p} x" for k, p in enumerate(prompts)])
        return rows


def test_a_setting_over_the_budget_is_never_chosen_however_well_it_scores(planted):
    _, reader, atlas = planted
    found = discover("dog", reader, atlas, _RepetitiveEvaluator(reader.binding(), 1e9), prompts=["p1", "p2", "p3"],
                     positions="prompt")
    over = [p for p in found.sweep if not p.in_budget]
    assert over and max(p.summary.score for p in over) > found.chosen.summary.score  # the trap is there
    assert found.chosen.in_budget and found.chosen.stats.mention_rate == pytest.approx(1 / 3)


class _AnswerEvaluator(_ScriptedEvaluator):
    """Answers name the concept when a plan steers the answer until it does, at a fraction of the residual
    norm of at least 0.25 (the scripted window: stronger pushes cost fluency)."""

    measures_activations = True

    def generate(self, prompts, plans, max_new_tokens):
        self.plans = plans
        rows = []
        for plan in plans:
            groups = [] if plan is None else [g for g in plan.groups if g.layers]
            size = sum(float(np.linalg.norm(e.add)) for g in groups for e in g.layers)
            named = any(g.until == "dog" and g.positions == "generated" for g in groups) and size >= 0.24 * self.unit
            rows.append([("dog " if named else "cat ") + f"{p} " + ("y" if size > 0.28 * self.unit else "x")
                         for p in prompts])
        return rows

    def residual_norms(self, text):
        return [10.0, 20.0, 30.0]


def test_discover_until_adds_the_output_direction_on_the_answer(planted):
    """The default mode: the concept's output direction added after a late layer on the answer's positions
    until it names the word, at the chosen fraction of the residual norm there, written as neuron adds."""
    from steerkit.concept_vector import neuron_adds
    from steerkit.discovery import OUTPUT_FRACTIONS
    from steerkit.output_direction import output_direction, output_layers

    _, reader, atlas = planted
    evaluator = _AnswerEvaluator(reader.binding(), 1e9)
    layer = output_layers(reader.info.n_layers)[-1]
    evaluator.unit = float(np.linalg.norm(neuron_adds(reader, layer, output_direction(
        reader, concept_from_word("dog", atlas.vocab))))) * 30.0
    found = discover("dog", reader, atlas, evaluator, prompts=["p1", "p2"])
    assert {p.setting.multiple for p in found.sweep} == set(OUTPUT_FRACTIONS)
    assert all(p.setting.source == "output" for p in found.sweep)
    assert found.moved and found.chosen.setting.multiple == 0.25  # named, and still fluent
    profile = found.profile
    assert (profile.positions, profile.until) == ("generated", "dog")
    added = reader.down_cols(layer).T.astype(np.float64) @ np.array([e.value for e in profile.edits])
    expected = 0.25 * 30.0 * output_direction(reader, found.concept)
    np.testing.assert_allclose(added, expected, atol=1e-3 * np.abs(expected).max())
    with pytest.raises(UnsupportedEdit):
        compile_plan([profile]).merged()  # weights cannot carry it


def test_output_direction_raises_the_concept_over_the_average_token(planted):
    from steerkit.output_direction import output_direction

    _, reader, atlas = planted
    concept = concept_from_word("dog", atlas.vocab)
    direction = output_direction(reader, concept)
    unembedding = reader.unembedding().astype(np.float64)
    logits = unembedding @ (reader.norm_gain() * direction)
    word_start = [i for i, t in zip(concept.token_ids, concept.tokens) if t.startswith("Ġ")]
    assert np.isclose(np.linalg.norm(direction), 1.0) and set(word_start) == {1, 3}
    assert all(logits[i] > logits.mean() + 2 * logits.std() for i in word_start)
    # Centring: the mean row of the LM head gets no push of its own.
    assert abs(unembedding.mean(0) @ (reader.norm_gain() * direction)) < 0.05 * logits[word_start].min()


def test_discovery_needs_no_atlas(planted):
    """A big model is steered before its atlas exists."""
    from steerkit.concept_vector import neuron_adds
    from steerkit.output_direction import output_direction, output_layers

    _, reader, atlas = planted
    evaluator = _AnswerEvaluator(reader.binding(), 1e9)
    layer = output_layers(reader.info.n_layers)[-1]
    evaluator.unit = float(np.linalg.norm(neuron_adds(reader, layer, output_direction(
        reader, concept_from_word("dog", atlas.vocab))))) * 30.0
    without = discover("dog", reader, None, evaluator, prompts=["p1", "p2"])
    with_atlas = discover("dog", reader, atlas, evaluator, prompts=["p1", "p2"])
    assert without.candidates == [] and with_atlas.candidates
    assert without.profile.edits == with_atlas.profile.edits
    # The neuron-based modes rank from a shortlist instead: the same neurons, so the same profile.
    shortlisted = discover("dog", reader, None, evaluator, prompts=["p1"], positions="all")
    ranked = discover("dog", reader, atlas, evaluator, prompts=["p1"], positions="all")
    key = lambda found: [(c.layer, c.neuron, c.sign) for c in found.candidates]  # noqa: E731
    assert key(shortlisted) == key(ranked) and len(key(ranked)) == 8
    edit = lambda e: (e.layer, e.neuron, e.op, e.value, e.score)  # noqa: E731 (tokens: this atlas keeps 5, not 6)
    assert [edit(e) for e in shortlisted.profile.edits] == [edit(e) for e in ranked.profile.edits]


def test_discovery_builds_only_a_small_atlas(planted, monkeypatch, tmp_path):
    """The neuron modes build a missing atlas when it is small and rank from a shortlist when it is big; `until`
    never builds one."""
    import steerkit.discovery

    monkeypatch.setenv("STEERKIT_CACHE", str(tmp_path / "cache"))
    _, reader, _ = planted
    assert atlas_for_discovery(reader, "until", progress=False) is None
    monkeypatch.setattr(steerkit.discovery, "SMALL_ATLAS", 0)
    assert atlas_for_discovery(reader, "all", progress=False) is None
    assert atlas_for_discovery(reader, "until", suppress=True, progress=False) is None
    monkeypatch.setattr(steerkit.discovery, "SMALL_ATLAS", 2e13)
    built = atlas_for_discovery(reader, "prompt", progress=False)
    assert built is not None and built.meta["fingerprint"] == reader.fingerprint()
    assert atlas_for_discovery(reader, "until", progress=False) is not None  # cached now: kept for the provenance
