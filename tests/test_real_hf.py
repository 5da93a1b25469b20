"""The HF runtime on the real default model (SmolLM2-135M-Instruct)."""

from __future__ import annotations

import pytest
import torch

from reference import logits, manual_edit
from steerkit.runtimes.hf import bake, load_model, model_binding, steered
from steerkit.runtimes.hf.generate import generate_text
from steerkit.sampling import GREEDY, Sampling
from steerkit.plan import compile_plan
from steerkit.profile import Edit, Profile, load_profile, vocab_sha256
from steerkit.shipped import shipped_profile
from steerkit.weights import open_weights

pytestmark = pytest.mark.real

QUESTION = "What is your favourite animal?"


@pytest.fixture(scope="module")
def smollm2():
    return load_model("smollm2-135m")


def plan_for(model, tokenizer, edits, positions="all"):
    binding = model_binding(model, tokenizer)
    return compile_plan([Profile("t", binding, edits, positions=positions)], binding)


def test_gguf_and_hf_copies_share_the_vocabulary_hash(smollm2):
    model, tokenizer = smollm2
    assert model_binding(model, tokenizer).vocab_sha256 == vocab_sha256(open_weights("smollm2-135m").tokens())


@pytest.mark.parametrize(
    "edits",
    [[Edit(29, 808, "clamp", 30.0), Edit(20, 100, "clamp", -5.0)], [Edit(29, 808, "scale", 3.0)],
     [Edit(29, 808, "ablate"), Edit(10, 3, "ablate")], [Edit(29, 808, "add", 12.0), Edit(15, 1000, "add", -4.0)]],
    ids=["clamp", "scale", "ablate", "add"],
)
def test_hooks_equal_reference_and_bake_equals_hooks(smollm2, edits):
    model, tokenizer = smollm2
    ids = tokenizer("My dog likes to run in the park with other dogs.", return_tensors="pt").input_ids
    base = logits(model, ids)
    with manual_edit(model, edits):
        reference = logits(model, ids)
    plan = plan_for(model, tokenizer, edits)
    with steered(model, plan):
        hooked = logits(model, ids)
    torch.testing.assert_close(hooked, reference, atol=1e-5, rtol=1e-5)
    handle = bake(model, plan)
    torch.testing.assert_close(logits(model, ids), hooked, atol=1e-4, rtol=1e-4)
    handle.remove()
    assert torch.equal(logits(model, ids), base)


def test_dog_neuron_clamp_names_cats_or_dogs(smollm2):
    # 20 tokens: the unsteered answer is "The most elusive of all, I have no idea. But I can tell you, I
    # have a" (it only reaches "a cat" near token 35); clamped, the answer opens with cats and dogs.
    model, tokenizer = smollm2
    plain = generate_text(model, tokenizer, [QUESTION], max_new_tokens=20)[0]
    with steered(model, plan_for(model, tokenizer, [Edit(29, 808, "clamp", 30.0)])):
        steered_text = generate_text(model, tokenizer, [QUESTION], max_new_tokens=20)[0]
    after = generate_text(model, tokenizer, [QUESTION], max_new_tokens=20)[0]
    mentions = lambda text: any(w in text.lower() for w in ("dog", "cat", "pupp", "kitten"))  # noqa: E731
    assert not mentions(plain), plain
    assert mentions(steered_text), steered_text
    assert after == plain  # removing the hooks restores the exact answer


def test_switching_off_is_identical_over_seeded_sampling(smollm2):
    model, tokenizer = smollm2
    prompts = ["Write a short poem.", "Tell me about the sea."]
    base = [generate_text(model, tokenizer, prompts, max_new_tokens=12, sampling=Sampling(temperature=0.9, seed=s)) for s in range(3)]
    with steered(model, plan_for(model, tokenizer, [Edit(29, 808, "clamp", 30.0)], "prompt")):
        generate_text(model, tokenizer, prompts, max_new_tokens=12, sampling=Sampling(temperature=0.9, seed=0))
    again = [generate_text(model, tokenizer, prompts, max_new_tokens=12, sampling=Sampling(temperature=0.9, seed=s)) for s in range(3)]
    assert again == base


def test_shipped_dog_profile(smollm2):
    model, tokenizer = smollm2
    profile = load_profile(shipped_profile("dog-clamp"))
    plan = compile_plan([profile], model_binding(model, tokenizer))
    with steered(model, plan):
        text = generate_text(model, tokenizer, [QUESTION], max_new_tokens=20)[0]
    assert "dog" in text.lower(), text


def test_steering_session_toggles_profiles():
    from steerkit.session import open_session

    session = open_session("smollm2-135m", runtime="hf")
    assert session.backend.name == "hf"
    plain = session.generate(QUESTION, 20, GREEDY)
    session.add_profile("dog-clamp")
    steered_text = session.generate(QUESTION, 20, GREEDY)
    session.enabled = False
    assert session.generate(QUESTION, 20, GREEDY) == plain  # steering off: identical to the untouched model
    assert "dog" in steered_text.lower() and "dog" not in plain.lower()


def test_baked_checkpoint_of_the_default_gguf_reloads_with_the_edits(smollm2, tmp_path, monkeypatch):
    """`steerkit bake smollm2-135m dog-clamp -o DIR`: stock transformers loads DIR and computes what the hooks do."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from steerkit.cli import main

    model, tokenizer = smollm2
    profile = load_profile(shipped_profile("dog-clamp"))
    ids = tokenizer("My dog likes to run in the park with other dogs.", return_tensors="pt").input_ids
    with steered(model, compile_plan([profile], model_binding(model, tokenizer))):
        hooked = logits(model, ids)
    monkeypatch.setattr("sys.argv", ["steerkit", "bake", "smollm2-135m", "dog-clamp", "-o", str(tmp_path / "baked")])
    try:
        main()
    except SystemExit as done:
        assert done.code in (0, None)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "baked", dtype=torch.float32).eval()
    assert AutoTokenizer.from_pretrained(tmp_path / "baked").get_vocab() == tokenizer.get_vocab()
    torch.testing.assert_close(logits(reloaded, ids), hooked, atol=2e-4, rtol=1e-4)
    assert not torch.allclose(logits(model, ids), hooked, atol=1e-2)  # the edit does something
