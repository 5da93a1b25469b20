"""The backend contract, checked over every registered backend on the real default model.

* apply/remove: answers and scores after ``remove()`` are identical to the untouched model's;
* a plan the backend cannot express is refused before anything changes;
* per-row plans and an applied plan give the same answers; prompt and all positions both steer;
* the same profile gives the same greedy tokens in every backend wherever the unsteered models agree.
"""

from __future__ import annotations

import re

import pytest

from steerkit.api import load_profile
from steerkit.errors import SteerkitError
from steerkit.plan import compile_plan
from steerkit.profile import Edit, Profile
from steerkit.runtimes import BACKENDS, load_backend, register
from steerkit.sampling import GREEDY

pytestmark = [pytest.mark.real, pytest.mark.slow]

SHIPPED = list(BACKENDS)
EXAMPLE = "hf-baked"  # docs/runtimes.md's example of adding a runtime: held to the same contract
register(EXAMPLE, "baked_backend:BakedBackend")

PROMPTS = ["What is your favourite animal?", "Write a short poem.", "Describe your ideal day.",
           "What should I cook tonight?", "Tell me about the sea.", "Give me advice for a job interview."]
TOKENS = 24
_LOADED: dict = {}


def _backend(name: str):
    if name not in _LOADED:
        _LOADED[name] = load_backend("smollm2-135m", name)
    return _LOADED[name]


@pytest.fixture(params=SHIPPED + [EXAMPLE])
def backend(request):
    return _backend(request.param)


@pytest.fixture(params=SHIPPED)
def shipped_backend(request):
    return _backend(request.param)


def _plan(backend, *names):
    return compile_plan([load_profile(name) for name in names], backend.binding)


def test_the_docs_example_is_this_file():
    from pathlib import Path

    root = Path(__file__).resolve().parent
    assert (root / "baked_backend.py").read_text() in (root.parent / "docs" / "runtimes.md").read_text()


def test_apply_and_remove_restore_exactly(backend):
    plain = backend.generate(PROMPTS, None, TOKENS, GREEDY)[0]
    plain_nll = backend.nll(PROMPTS, plain)
    with backend.apply(_plan(backend, "dog-clamp")):
        assert backend.applied is not None
        steered = backend.generate(PROMPTS, None, TOKENS, GREEDY)[0]
        assert backend.nll(PROMPTS, plain) == plain_nll  # scores are always the unsteered model's
        with pytest.raises(SteerkitError, match="already applied"):
            backend.apply(_plan(backend, "dog"))
    assert backend.applied is None
    # The dog neuron clamped at every position writes dogs and cats (its decoding: dog, Dogs, dogs, Cats).
    pets = re.compile(r"\b(dog|cat)s?\b", re.I)
    assert sum(bool(pets.search(a)) for a in steered) >= len(PROMPTS) // 2, steered
    assert not any(pets.search(a) for a in plain), plain
    assert backend.generate(PROMPTS, None, TOKENS, GREEDY)[0] == plain
    assert backend.nll(PROMPTS, plain) == plain_nll


# What each backend cannot express exactly (llama.cpp: a control vector, set and cleared between evaluations,
# carries only additive edits from layer 1 on; weights carry nothing limited to some positions or released).
INEXPRESSIBLE = {"hf": set(), "llama.cpp": {"generated clamp", "prompt clamp", "prompt add in layer 0"},
                 EXAMPLE: {"generated clamp", "prompt clamp", "prompt add in layer 0", "answer add until dog"}}


def test_inexpressible_plans_are_refused_before_anything_changes(backend):
    binding = backend.binding
    candidates = {
        "generated clamp": Profile("g", binding, [Edit(29, 808, "clamp", 30.0)], positions="generated"),
        "prompt clamp": Profile("p", binding, [Edit(29, 808, "clamp", 30.0)], positions="prompt"),
        "prompt add in layer 0": Profile("z", binding, [Edit(0, 5, "add", 3.0)], positions="prompt"),
        "all-position scale": Profile("s", binding, [Edit(12, 7, "scale", 2.0)]),
        "answer add until dog": Profile("u", binding, [Edit(20, 5, "add", 3.0)], positions="generated", until="dog"),
    }
    plain = backend.generate(PROMPTS[:2], None, 8, GREEDY)
    refused = set()
    for label, profile in candidates.items():
        try:
            handle = backend.apply(compile_plan([profile], binding))
        except SteerkitError as exc:
            assert "\n" not in str(exc)
            refused.add(label)
            assert backend.applied is None
            assert backend.generate(PROMPTS[:2], None, 8, GREEDY) == plain
            with pytest.raises(SteerkitError):  # the per-row path refuses it too
                backend.generate(PROMPTS[:1], [compile_plan([profile], binding)], 4, GREEDY)
        else:
            handle.remove()
    assert refused == INEXPRESSIBLE[backend.name]


@pytest.mark.parametrize("profile", ["dog", "dog-clamp"])  # prompt positions; all positions
def test_row_plans_equal_the_applied_plan(shipped_backend, profile):
    backend = shipped_backend
    plan = _plan(backend, profile)
    rows = backend.generate(PROMPTS[:3], [None, plan], 16, GREEDY)
    with backend.apply(plan):
        applied = backend.generate(PROMPTS[:3], None, 16, GREEDY)[0]
    assert rows[1] == applied and rows[0] != rows[1]
    assert "dog" in applied[0].lower(), applied


def test_same_profile_same_tokens_in_every_backend(tmp_path_factory):
    """Where the unsteered models agree, the steered ones agree too -- on weights every backend computes with
    identically: an F32 copy of the default model for llama.cpp (its quantized kernels round activations to
    8 bits, so on the Q4_1 file the unsteered greedy answers already differ on 8 of 18 prompts at 8 tokens),
    the transformers conversion (the same dequantized numbers) for hf."""
    from dequantized import write_f32_copy
    from steerkit.prompts import builtin_prompts
    from steerkit.sources import resolve_model

    f32 = write_f32_copy(resolve_model().path, tmp_path_factory.mktemp("f32") / "smollm2-f32.gguf")
    backends = [load_backend(str(f32) if name == "llama.cpp" else "smollm2-135m", name) for name in SHIPPED]
    prompts = builtin_prompts("neutral") + builtin_prompts("calibration")
    for profile in ("dog", "dog-clamp"):
        answers = [b.generate(prompts, [None, _plan(b, profile)], 16, GREEDY) for b in backends]
        agreeing = [k for k in range(len(prompts)) if len({a[0][k] for a in answers}) == 1]
        same = [k for k in agreeing if len({a[1][k] for a in answers}) == 1]
        print(f"{profile}: unsteered agree on {len(agreeing)}/{len(prompts)} prompts, steered on {len(same)} of them")
        assert len(agreeing) >= len(prompts) - 1
        assert same == agreeing, [(prompts[k], [a[1][k] for a in answers]) for k in set(agreeing) - set(same)]


def test_a_prompt_beyond_the_context_is_refused_in_one_line(shipped_backend):
    with pytest.raises(SteerkitError, match="exceed the context"):
        shipped_backend.generate(["hi " * 9000], None, 8, GREEDY)
    assert shipped_backend.generate(PROMPTS[:1], None, 2, GREEDY)[0][0]  # and it keeps answering
