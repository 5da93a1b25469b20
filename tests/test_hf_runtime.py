"""HF runtime: hooks equal a hand-written activation edit; baked weights equal hooks; removal is exact."""

from __future__ import annotations

import pytest
import torch

from steerkit.runtimes import backend_class
from steerkit.runtimes.hf.backend import HFBackend
from steerkit.runtimes.hf import bake, model_binding, prepare_for_save, steered
from steerkit.errors import SteerkitError
from steerkit.plan import compile_plan
from steerkit.profile import Edit, Profile
from reference import logits, manual_edit
from tiny_models import tiny_model

OPS = {
    "scale": [Edit(1, 5, "scale", 2.5), Edit(2, 40, "scale", -0.5)],
    "ablate": [Edit(0, 3, "ablate"), Edit(2, 7, "ablate")],
    "clamp": [Edit(1, 5, "clamp", 4.0), Edit(2, 7, "clamp", -3.0), Edit(2, 8, "clamp", 2.0)],
    "add": [Edit(0, 1, "add", 1.5), Edit(2, 47, "add", -2.0)],
}


def make_plan(model, edits, positions="all", strength=1.0):
    profile = Profile("t", model_binding(model), edits, positions=positions, strength=strength)
    return compile_plan([profile], model_binding(model))


@pytest.fixture
def ids():
    torch.manual_seed(1)
    return torch.randint(3, 96, (2, 9))


@pytest.mark.parametrize("op", sorted(OPS))
def test_hooks_equal_manual_edit_and_bake_equals_hooks(model_type, op, ids):
    model = tiny_model(model_type)
    base = logits(model, ids)
    plan = make_plan(model, OPS[op])
    with manual_edit(model, OPS[op]):
        reference = logits(model, ids)
    assert not torch.allclose(reference, base, atol=1e-3)  # the edit does something
    with steered(model, plan):
        hooked = logits(model, ids)
    torch.testing.assert_close(hooked, reference, atol=1e-5, rtol=1e-5)
    handle = bake(model, plan)
    baked = logits(model, ids)
    torch.testing.assert_close(baked, hooked, atol=1e-4, rtol=1e-4)
    handle.remove()
    assert torch.equal(logits(model, ids), base)  # unbaked: bit-identical
    assert torch.equal(logits(model, ids), base)  # hooks removed: bit-identical


def test_strength_and_runtime_registry(ids):
    model = tiny_model("llama")
    edits = OPS["clamp"] + OPS["add"]
    with manual_edit(model, edits, strength=0.5):
        reference = logits(model, ids)
    base = logits(model, ids)
    assert backend_class("hf") is HFBackend
    handle = HFBackend(model, None).apply(make_plan(model, edits, strength=0.5))
    torch.testing.assert_close(logits(model, ids), reference, atol=1e-5, rtol=1e-5)
    handle.remove()
    assert torch.equal(logits(model, ids), base)
    with pytest.raises(SteerkitError, match="unknown runtime"):
        backend_class("onnx")


@pytest.mark.parametrize("positions", ["prompt", "generated"])
def test_position_restricted_edits_through_generate(model_type, positions):
    """Token by token: generate with KV cache equals full recomputation with a position mask."""
    model = tiny_model(model_type)
    torch.manual_seed(2)
    prompt = torch.randint(3, 96, (1, 6))
    edits = [Edit(1, 5, "clamp", 6.0), Edit(2, 7, "clamp", -6.0), Edit(0, 2, "scale", 3.0)]
    plan = make_plan(model, edits, positions=positions)
    with steered(model, plan), torch.no_grad():
        out = model.generate(prompt, max_new_tokens=8, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, pad_token_id=0)
    sequence = out.sequences[0]
    prompt_length = prompt.shape[1]

    def mask_fn(seq_len):
        inside = torch.arange(seq_len) < prompt_length
        return (inside if positions == "prompt" else ~inside).view(1, -1)

    with manual_edit(model, edits, mask_fn=mask_fn):
        for step, step_logits in enumerate(out.logits):
            context = sequence[: prompt_length + step][None]
            reference = logits(model, context)[0, -1]
            torch.testing.assert_close(step_logits[0], reference, atol=1e-4, rtol=1e-4)
    with torch.no_grad():  # and the restriction matters: all-position steering differs
        with steered(model, make_plan(model, edits)):
            other = model.generate(prompt, max_new_tokens=8, do_sample=False, output_logits=True,
                                   return_dict_in_generate=True, pad_token_id=0)
    assert not all(torch.allclose(a, b) for a, b in zip(other.logits, out.logits))


def test_batch_with_left_padding_matches_single_prompts():
    model = tiny_model("llama")
    plan = make_plan(model, OPS["clamp"])
    prompts = [torch.randint(3, 96, (1, n), generator=torch.Generator().manual_seed(n)) for n in (4, 7)]
    width = 7
    batch = torch.zeros(2, width, dtype=torch.long)
    mask = torch.zeros(2, width, dtype=torch.long)
    for row, p in enumerate(prompts):
        batch[row, width - p.shape[1]:] = p[0]
        mask[row, width - p.shape[1]:] = 1
    with steered(model, plan), torch.no_grad():
        batched = model.generate(batch, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
        singles = [model.generate(p, max_new_tokens=5, do_sample=False, pad_token_id=0) for p in prompts]
    for row, single in enumerate(singles):
        assert batched[row, width:].tolist() == single[0, single.shape[1] - 5:].tolist()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_hooks(dtype, ids):
    model = tiny_model("llama").to(dtype)
    plan = make_plan(model, OPS["clamp"])
    with manual_edit(model, OPS["clamp"]):
        reference = logits(model, ids)
    with steered(model, plan):
        hooked = logits(model, ids)
    assert hooked.dtype == dtype
    torch.testing.assert_close(hooked, reference, atol=0.0, rtol=0.0)


def test_baked_model_saves_and_reloads(tmp_path, ids):
    from transformers import AutoModelForCausalLM

    model = tiny_model("llama")
    bake(model, make_plan(model, OPS["clamp"] + OPS["scale"][1:]))
    expected = logits(model, ids)
    prepare_for_save(model)
    model.save_pretrained(tmp_path / "baked")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "baked", dtype=torch.float32).eval()
    torch.testing.assert_close(logits(reloaded, ids), expected, atol=1e-5, rtol=1e-5)


def test_bake_refuses_position_restricted_plans_before_touching_weights(ids):
    model = tiny_model("llama")
    base = logits(model, ids)
    with pytest.raises(SteerkitError, match="cannot be baked"):
        bake(model, make_plan(model, OPS["clamp"], positions="prompt"))
    assert torch.equal(logits(model, ids), base)


def test_gemma_baked_clamp_cannot_be_saved():
    model = tiny_model("gemma3_text")
    bake(model, make_plan(model, OPS["clamp"]))
    with pytest.raises(SteerkitError, match="cannot be saved"):
        prepare_for_save(model)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_cuda_hooks_and_bake(dtype):
    model = tiny_model("llama").to("cuda", dtype)
    ids = torch.randint(3, 96, (2, 9), device="cuda")
    plan = make_plan(model, OPS["clamp"] + OPS["add"])
    with manual_edit(model, OPS["clamp"] + OPS["add"]):
        reference = logits(model, ids)
    with steered(model, plan):
        hooked = logits(model, ids)
    torch.testing.assert_close(hooked, reference, atol=1e-5, rtol=1e-5)
    handle = bake(model, plan)
    torch.testing.assert_close(logits(model, ids), hooked, atol=5e-2 if dtype == torch.bfloat16 else 1e-4, rtol=1e-2)
    handle.remove()


def test_hooks_on_a_model_spread_with_device_map(tmp_path, ids):
    """accelerate's dispatch (one layer offloaded to disk) and steerkit's hooks coexist exactly."""
    from transformers import AutoModelForCausalLM

    tiny_model("llama").save_pretrained(tmp_path / "m")
    device_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
                  "model.layers.2": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float32, device_map=device_map,
                                                 offload_folder=str(tmp_path / "offload")).eval()
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float32).eval()
    edits = OPS["clamp"] + OPS["add"]
    with manual_edit(plain, edits):
        reference = logits(plain, ids)
    with steered(model, make_plan(model, edits)):
        hooked = logits(model, ids)
    torch.testing.assert_close(hooked, reference, atol=1e-5, rtol=1e-5)
