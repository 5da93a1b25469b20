"""The front door (steerkit.steer/bake/load_profile), profiles built in code, sampling settings, the chat REPL."""

from __future__ import annotations

import math

import pytest
import torch

import steerkit
from reference import logits, manual_edit
from steerkit.chat import HELP, ChatRepl
from steerkit.errors import SteerkitError
from steerkit.profile import Edit, ModelBinding, Profile
from steerkit.runtimes.base import Backend
from steerkit.runtimes.hf import model_binding
from steerkit.sampling import GREEDY, Sampling, check_max_tokens, next_token, penalize_repeats
from steerkit.session import SteeringSession
from tiny_models import tiny_model

import numpy as np

EDITS = [Edit(1, 5, "clamp", 4.0), Edit(2, 7, "scale", -0.5), Edit(0, 1, "add", 1.5)]


@pytest.fixture
def model():
    return tiny_model("llama")


@pytest.fixture
def ids():
    return torch.tensor([[1, 5, 9, 3, 7, 2]])


def test_steer_is_the_hand_written_edit_and_restores_exactly(model, ids):
    base = logits(model, ids)
    with manual_edit(model, EDITS):
        reference = logits(model, ids)
    profile = Profile("p", model_binding(model), EDITS)
    with steerkit.steer(model, profile) as handle:
        torch.testing.assert_close(logits(model, ids), reference, atol=1e-5, rtol=1e-5)
    assert torch.equal(logits(model, ids), base)
    handle.remove()  # idempotent
    no_clamp = Profile("q", model_binding(model), EDITS[1:])  # strength 0 leaves scales and adds as no-ops
    handle = steerkit.steer(model, [no_clamp, no_clamp], strength=0.0)
    torch.testing.assert_close(logits(model, ids), base, atol=1e-6, rtol=0)
    handle.remove()


def test_bake_restores_bit_for_bit(model, ids):
    base = logits(model, ids)
    with manual_edit(model, EDITS):
        reference = logits(model, ids)
    handle = steerkit.bake(model, Profile("p", model_binding(model), EDITS))
    torch.testing.assert_close(logits(model, ids), reference, atol=1e-4, rtol=1e-4)
    handle.remove()
    assert torch.equal(logits(model, ids), base)


def test_a_profile_for_another_model_is_refused_before_anything_changes(model, ids):
    base = logits(model, ids)
    other = ModelBinding("llama", 30, 576, 1536, 49152)
    with pytest.raises(SteerkitError, match="made for another model"):
        steerkit.steer(model, Profile("p", other, [Edit(1, 5, "clamp", 4.0)]))
    with pytest.raises(SteerkitError, match="made for another model"):
        steerkit.steer(model, "dog")  # the shipped dog profile is for SmolLM2
    with pytest.raises(SteerkitError, match="made for another model"):
        steerkit.bake(model, "dog-clamp")
    assert not any(m._forward_pre_hooks for m in model.modules())
    assert torch.equal(logits(model, ids), base)


def test_load_profile_names_and_paths(tmp_path):
    dog = steerkit.load_profile("dog")
    assert dog.name == "dog" and (dog.positions, dog.until) == ("generated", "dog")
    assert steerkit.load_profile(dog) is dog
    steerkit.save_profile(dog, tmp_path / "mine.yaml")
    assert steerkit.load_profile(tmp_path / "mine.yaml").edits == dog.edits
    with pytest.raises(SteerkitError, match="cannot read profile"):
        steerkit.load_profile("no-such-profile")


BINDING = ModelBinding("llama", 3, 8, 48, 100)


@pytest.mark.parametrize("build, message", [
    (lambda: Edit(1, 2, "boost", 1.0), "op: 'boost' is not one of clamp, scale, add, ablate"),
    (lambda: Edit(-1, 2, "add", 1.0), "layer: expected a non-negative integer"),
    (lambda: Edit(1, True, "add", 1.0), "neuron: expected a non-negative integer"),
    (lambda: Edit(1, 2, "add", math.nan), "value: expected a finite number"),
    (lambda: Edit(1, 2, "add", 10 ** 400), "value: expected a finite number"),
    (lambda: Edit(1, 2, "add", "3"), "value: expected a number"),
    (lambda: Profile("p", BINDING, [Edit(3, 0, "add", 1.0)]), "edits[0].layer: 3 out of range 0..2"),
    (lambda: Profile("p", BINDING, [Edit(0, 48, "add", 1.0)]), "edits[0].neuron: 48 out of range 0..47"),
    (lambda: Profile("p", BINDING, [Edit(0, 1, "add", 1.0), Edit(0, 1, "scale", 2.0)]), "already edited by edits[0]"),
    (lambda: Profile("p", BINDING, [], positions="answer"), "positions: 'answer' is not one of all, prompt, generated"),
    (lambda: Profile("p", BINDING, [], strength=math.inf), "strength: expected a finite number"),
    (lambda: Profile("", BINDING, []), "name: expected a non-empty string"),
    (lambda: Profile("p", BINDING, [(0, 1, "add", 1.0)]), "edits[0]: expected an Edit"),
])
def test_profiles_built_in_code_are_validated(build, message):
    with pytest.raises(SteerkitError) as info:
        build()
    assert message in str(info.value)


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": -0.1}, "temperature"), ({"temperature": math.nan}, "temperature"),
    ({"top_p": 0.0}, "top_p"), ({"repetition_penalty": 0.5}, "repetition_penalty"),
    ({"seed": -1}, "seed"), ({"seed": 2 ** 40}, "seed"),
])
def test_sampling_is_checked(kwargs, message):
    with pytest.raises(SteerkitError, match=message):
        Sampling(**kwargs)


def test_max_tokens_and_sampler():
    for bad in (0, -3, 5000, 2.5, True):
        with pytest.raises(SteerkitError, match="max tokens"):
            check_max_tokens(bad)
    logits = np.array([2.0, -1.0, 1.0, 0.5])
    np.testing.assert_allclose(penalize_repeats(logits, [0, 1, 1], 2.0), [1.0, -2.0, 1.0, 0.5])
    rng = np.random.default_rng(0)
    assert next_token(logits, [], GREEDY, rng) == 0
    assert next_token(logits, [0], Sampling(repetition_penalty=3.0), rng) == 2  # 2/3 < 1.0
    # top_p keeps the smallest set that reaches p: with p tiny only the top token can come out.
    assert {next_token(logits, [], Sampling(temperature=5.0, top_p=1e-6), rng) for _ in range(50)} == {0}
    draws = [next_token(logits, [], Sampling(temperature=1.0, seed=3), np.random.default_rng(3)) for _ in range(3)]
    assert len(set(draws)) == 1  # seeded: reproducible


class RecordingBackend(Backend):
    """A backend with no model: answers say which plan they ran under."""

    name = "recording"

    def __init__(self, binding=BINDING) -> None:
        super().__init__()
        self.binding, self.label, self.calls = binding, "fake", []

    @classmethod
    def accepts(cls, source, device):
        return None

    @classmethod
    def load(cls, source, device="cpu", dtype="float32"):
        return cls()

    def check(self, plan):
        if any(group.positions == "generated" and group.layers for group in plan.groups):
            raise SteerkitError("generated positions are not supported here")

    def _generate(self, prompts, plans, max_new_tokens, sampling, on_text):
        self.calls.append((prompts, plans))
        return [[f"{'+'.join(p.names) if p else 'plain'}:{len(prompts)}" for _ in prompts] for p in plans]

    def nll(self, prompts, answers):
        return [0.0] * len(answers)

    def count_tokens(self, prompt, answer):
        return len(str(prompt).split()), len(answer.split())


def test_backend_bookkeeping():
    backend = RecordingBackend()
    plan = steerkit.api.compile_plan([Profile("a", BINDING, [Edit(0, 1, "add", 1.0)])], BINDING)
    assert backend.generate(["q"]) == [["plain:1"]]
    with backend.apply(plan):
        assert backend.generate(["q", "r"]) == [["a:2", "a:2"]]
        with pytest.raises(SteerkitError, match="already applied"):
            backend.apply(plan)
        with pytest.raises(SteerkitError, match="remove the applied plan"):
            backend.generate(["q"], [None])
    bad = steerkit.api.compile_plan([Profile("g", BINDING, [Edit(0, 1, "add", 1.0)], positions="generated")], BINDING)
    with pytest.raises(SteerkitError, match="generated positions"):
        backend.apply(bad)
    assert backend.applied is None and backend.generate(["q"], [None, plan]) == [["plain:1"], ["a:1"]]


def test_chat_repl_commands(tmp_path):
    backend = RecordingBackend()
    steerkit.save_profile(Profile("dogs", BINDING, [Edit(0, 1, "add", 1.0, ("dog",))]), tmp_path / "dogs.yaml")
    steerkit.save_profile(Profile("late", BINDING, [Edit(0, 2, "add", 1.0)], positions="generated"), tmp_path / "g.yaml")
    repl = ChatRepl(SteeringSession(backend), 10, GREEDY)
    assert repl.command("/profile") == ["usage: /profile FILE-or-NAME (a profile file, or a shipped name such as dog)"]
    assert repl.command(f"/profile {tmp_path / 'dogs.yaml'}") == ["added dogs (1 edits, positions all)"]
    assert repl.command(f"/profile {tmp_path / 'g.yaml'}")[0].startswith("error: generated positions")
    assert repl.command("/profile dog")[0].startswith("error:") and "another model" in repl.command("/profile dog")[0]
    assert repl.command("/profile a\x00b\x1b[2J")[0].startswith("error:") and "\x1b" not in repl.command("/profile \x1b[2J")[0]
    assert repl.ask("hello") == "dogs:1"
    assert repl.command("/strength nan") == ["error: strength must be a finite number within ±1000, got nan"]
    assert repl.command("/strength x") == ["error: /strength 'x': expected a number"]
    assert repl.command("/strength 0.5") == ["strength 0.5"]
    assert repl.command("/edits") == ["steering on, strength 0.5", "  dogs (positions all, 1 edits):", "    0:1 add 1  dog"]
    assert repl.command("/off") == ["steering off"] and repl.ask("again") == "plain:1"
    assert backend.calls[-1][0] == [[{"role": "user", "content": "hello"}, {"role": "assistant", "content": "dogs:1"},
                                     {"role": "user", "content": "again"}]]
    assert repl.command("/clear") == ["no profiles active"] and repl.command("/edits") == ["no profiles active"]
    assert repl.command("/reset") == ["conversation cleared"] and repl.history == []
    assert repl.command("/nope") == ["unknown command '/nope'", HELP]
    assert repl.command("/quit") == [] and repl.done
