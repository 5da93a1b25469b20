"""Edits that stop once the answer names a word (``until``): the profile field, the plan, and the hooks
checked token by token against a hand-written edit whose mask ends where the word appears."""

from __future__ import annotations

import pytest
import torch

from steerkit.concept import named_so_far
from steerkit.errors import SteerkitError, UnsupportedEdit
from steerkit.plan import compile_plan
from steerkit.profile import Edit, Profile, dump_profile, parse_profile
from steerkit.runtimes.hf import model_binding, steered
from steerkit.runtimes.hf.hooks import attach_rows
from reference import logits, manual_edit
from tiny_models import tiny_model

EDITS = [Edit(1, 5, "add", 3.0), Edit(2, 7, "add", -3.0), Edit(2, 9, "add", 2.0)]


class WordTokenizer:
    """Decodes token ids as ``t<id>`` words, with "dog" at the end once the answer has ``length`` tokens:
    the answer names the word at its token ``length - 1`` (random tiny models repeat tokens, so a token
    of their own cannot be made the word)."""

    def __init__(self, length: int) -> None:
        self.length = length

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return " ".join(f"t{int(i)}" for i in ids) + (" dog" if len(ids) >= self.length else "")


def _generate(model, prompt, plan, tokenizer, tokens=8):
    with steered(model, plan, tokenizer), torch.no_grad():
        return model.generate(prompt, max_new_tokens=tokens, do_sample=False, output_logits=True,
                              return_dict_in_generate=True, pad_token_id=0)


def test_named_so_far_counts_whole_words_and_plurals():
    assert named_so_far("dog", "I have a dog") and named_so_far("dog", "Dogs bark.")
    assert not named_so_far("dog", "hotdogs and doge") and not named_so_far("ice cream", "ice")
    assert named_so_far("ice cream", "some ice  cream")


@pytest.mark.parametrize("positions", ["all", "generated"])
def test_until_edits_stop_at_the_token_that_names_the_word(model_type, positions):
    model = tiny_model(model_type)
    binding = model_binding(model)
    prompt = torch.randint(3, 96, (1, 6), generator=torch.Generator().manual_seed(3))
    prompt_length = prompt.shape[1]
    always = compile_plan([Profile("t", binding, EDITS, positions=positions)])
    steered_all = _generate(model, prompt, always, None).sequences[0, prompt_length:].tolist()
    named_at = 3  # the answer's token 3 names the word: the edits must stop there
    tokenizer = WordTokenizer(named_at + 1)
    plan = compile_plan([Profile("t", binding, EDITS, positions=positions, until="dog")])
    out = _generate(model, prompt, plan, tokenizer)
    sequence = out.sequences[0]
    assert sequence[prompt_length:prompt_length + named_at + 1].tolist() == steered_all[:named_at + 1]

    def mask_fn(seq_len):
        position = torch.arange(seq_len)
        steered_here = position < prompt_length + named_at  # the naming token itself is read unsteered
        if positions == "generated":
            steered_here &= position >= prompt_length
        return steered_here.view(1, -1)

    with manual_edit(model, EDITS, mask_fn=mask_fn):
        for step, step_logits in enumerate(out.logits):
            reference = logits(model, sequence[: prompt_length + step][None])[0, -1]
            torch.testing.assert_close(step_logits[0], reference, atol=1e-4, rtol=1e-4)
    released = out.logits[named_at + 1:]  # and the release matters: always-on steering computes other logits
    continued = _generate(model, prompt, always, None).logits[named_at + 1:]
    assert not all(torch.allclose(a, b, atol=1e-3) for a, b in zip(released, continued))


def test_each_batch_row_is_released_on_its_own():
    """Two rows, one plan with ``until`` and one without: only the row that names the word stops."""
    model = tiny_model("llama")
    binding = model_binding(model)
    prompt = torch.randint(3, 96, (1, 6), generator=torch.Generator().manual_seed(4))
    always = compile_plan([Profile("t", binding, EDITS)])
    first = _generate(model, prompt, always, None, 6).sequences[0, 6:].tolist()
    tokenizer = WordTokenizer(2)
    until = compile_plan([Profile("u", binding, EDITS, until="dog")])
    batch = prompt.repeat(2, 1)
    handle = attach_rows(model, [until, always], tokenizer)
    try:
        with torch.no_grad():
            out = model.generate(batch, max_new_tokens=6, do_sample=False, pad_token_id=0)
    finally:
        handle.remove()
    assert out[1, 6:].tolist() == first  # the row without until is steered throughout
    alone = _generate(model, prompt, until, tokenizer, 6).sequences[0].tolist()
    assert out[0].tolist() == alone


def test_until_needs_the_tokenizer_and_cannot_be_baked():
    model = tiny_model("llama")
    plan = compile_plan([Profile("t", model_binding(model), EDITS, until="dog")])
    with pytest.raises(SteerkitError, match="needs the model's tokenizer"):
        with steered(model, plan):
            pass
    with pytest.raises(UnsupportedEdit, match="cannot be baked"):
        plan.merged()


def test_until_in_profile_files(tmp_path):
    model = tiny_model("llama")
    profile = Profile("t", model_binding(model), EDITS, positions="generated", until="ice  cream")
    assert profile.until == "ice cream"  # normalised like a concept word
    again = parse_profile(dump_profile(profile), "p.yaml")
    assert again.until == "ice cream" and again.positions == "generated"
    text = dump_profile(profile)
    with pytest.raises(SteerkitError, match=r"p\.yaml:\d+: until: needs positions all or generated"):
        parse_profile(text.replace("positions: generated", "positions: prompt"), "p.yaml")
    with pytest.raises(SteerkitError, match=r"p\.yaml:\d+: until: .*expected a word or a phrase"):
        parse_profile(text.replace("until: ice cream", "until: '42'"), "p.yaml")
    with pytest.raises(SteerkitError, match=r"p\.yaml:\d+: until: expected a string"):
        parse_profile(text.replace("until: ice cream", "until: [dog]"), "p.yaml")
    with pytest.raises(SteerkitError, match="until: needs positions"):
        Profile("t", model_binding(model), EDITS, positions="prompt", until="dog")


def test_llama_cpp_control_vectors_for_each_part_of_a_plan(tmp_path):
    """What llama.cpp adds while it reads the prompt, while it writes the answer, and once the answer names
    the word; all-position edits go to the patched copy instead."""
    import numpy as np

    from steerkit.runtimes.llamacpp.prompt_vector import split_plan
    from steerkit.weights.gguf_reader import GGUFWeights
    from tiny_models import save_gguf

    model = tiny_model("llama")
    weights = GGUFWeights(save_gguf(model, tmp_path / "t.gguf"))
    binding = model_binding(model)
    prompt = Profile("p", binding, [Edit(1, 5, "add", 2.0)], positions="prompt")
    answer = Profile("a", binding, [Edit(2, 7, "add", -1.0)], positions="generated")
    until = Profile("u", binding, [Edit(2, 9, "add", 3.0)], positions="all", until="dog")
    everywhere = Profile("e", binding, [Edit(1, 3, "scale", 2.0)])
    patched, vectors = split_plan(weights, compile_plan([prompt, answer, until, everywhere], binding))
    assert [g.positions for g in patched.groups] == ["all"] and patched.groups[0].until is None
    column = {(layer, j): weights.down_offset(layer, np.array([j]), np.array([1.0])) for layer, j in
              ((1, 5), (2, 7), (2, 9))}
    np.testing.assert_allclose(vectors.prompt()[1], 2.0 * column[(1, 5)], rtol=1e-6)
    np.testing.assert_allclose(vectors.prompt()[2], 3.0 * column[(2, 9)], rtol=1e-6)
    np.testing.assert_allclose(vectors.answer()[2], 3.0 * column[(2, 9)] - column[(2, 7)], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(vectors.answer({"dog"})[2], -column[(2, 7)], rtol=1e-6)
    assert 1 not in vectors.answer() and vectors.words == ("dog",)
    with pytest.raises(UnsupportedEdit, match="only 'add' edits"):
        split_plan(weights, compile_plan([Profile("c", binding, [Edit(2, 7, "clamp", 1.0)], positions="generated",
                                                  until="dog")], binding))
