"""The fitted stand-in for clamp/add edits on post-FFN-norm models (Gemma), on a tiny random Gemma 3."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from steerkit.runtimes.hf import model_binding, steered
from steerkit.runtimes.hf.post_norm_fit import PostNormFit, approximated, divergence, fit_post_norm, without_adds
from steerkit.plan import compile_plan
from steerkit.profile import Edit, Profile
from tiny_models import tiny_model


@pytest.fixture(scope="module")
def gemma():
    model = tiny_model("gemma3_text", seed=3)
    rng = np.random.default_rng(0)
    calibration = rng.integers(3, 96, size=200).tolist()
    held_out = [" ".join(map(str, rng.integers(3, 96, size=24).tolist())) for _ in range(4)]
    tokenizer = lambda text: SimpleNamespace(input_ids=[int(t) for t in text.split()])  # noqa: E731
    return model, tokenizer, calibration, held_out


def plan_for(model, edits):
    return compile_plan([Profile("p", model_binding(model), edits)], model_binding(model))


def logits(model, ids, context):
    with context, torch.no_grad():
        return model(torch.tensor([ids])).logits


def test_neutral_stand_in_is_the_row_edits_alone(gemma):
    model, _, calibration, _ = gemma
    plan = plan_for(model, [Edit(1, 4, "clamp", 6.0), Edit(2, 7, "scale", 2.0)])
    neutral = {1: PostNormFit(1.0, np.zeros(32, dtype=np.float32))}
    torch.testing.assert_close(logits(model, calibration, approximated(model, plan, neutral)),
                               logits(model, calibration, steered(model, without_adds(plan))))


def test_fit_beats_an_offset_alone_on_held_out_text(gemma):
    model, tokenizer, calibration, held_out = gemma
    plan = plan_for(model, [Edit(1, 4, "clamp", 40.0), Edit(2, 9, "add", -30.0)])
    fits = fit_post_norm(model, calibration, plan)
    assert sorted(fits) == [1, 2] and all(0 < f.gain < 1 for f in fits.values())  # a large edit shrinks the rest
    offset_only = fit_post_norm(model, calibration, plan, fit_gain=False)
    assert all(f.gain == 1.0 for f in offset_only.values())
    kl, top1, moved = divergence(model, tokenizer, held_out, plan, fits)
    kl_offset_only, top1_offset_only, _ = divergence(model, tokenizer, held_out, plan, offset_only)
    print(f"fit: KL {kl:.4f} top-1 {top1:.3f}; offset only: KL {kl_offset_only:.4f} top-1 {top1_offset_only:.3f}; "
          f"the edit moves KL {moved:.3f}")
    assert kl < 0.5 * kl_offset_only and kl < 0.1 * moved
    assert top1 >= top1_offset_only and top1 >= 0.9  # the fitted stand-in keeps the edited model's choices


def test_small_edit_fits_near_identity(gemma):
    model, _, calibration, _ = gemma
    fits = fit_post_norm(model, calibration, plan_for(model, [Edit(1, 4, "add", 1e-4)]))
    assert abs(fits[1].gain - 1.0) < 1e-3 and np.abs(fits[1].offset).max() < 1e-3


def test_offsets_for_an_unpatched_model_beat_plain_ones(gemma):
    """rows_patched=False (a control vector used alone): fitted offsets beat add * W_down[:, j] after the norm."""
    from steerkit.runtimes.hf.post_norm_fit import _added, additive_layers

    model, tokenizer, calibration, held_out = gemma
    plan = plan_for(model, [Edit(1, 4, "clamp", 40.0), Edit(2, 9, "add", -30.0)])
    fits = fit_post_norm(model, calibration, plan, fit_gain=False, rows_patched=False)
    with torch.no_grad():
        plain = {layer: PostNormFit(1.0, _added(model, edits).numpy()) for layer, edits in additive_layers(plan).items()}
    kl, _, moved = divergence(model, tokenizer, held_out, plan, fits, rows_patched=False)
    kl_plain, _, _ = divergence(model, tokenizer, held_out, plan, plain, rows_patched=False)
    assert kl < 0.5 * kl_plain and kl < moved


def test_fit_is_the_least_squares_optimum_of_a_run_edited_by_hand(gemma):
    """Independent of steerkit's hooks and solver: edit the MLP by hand (neuron 4 of layer 1 clamped to 40), take
    n(y0) and n(y0 + D) from transformers' own post-FFN norm, solve min ||k n(y0) + c - n(y0 + D)||^2 with
    torch.linalg.lstsq, and compare with fit_post_norm."""
    model, _, calibration, _ = gemma
    layer, neuron, value = 1, 4, 40.0
    mlp = model.model.layers[layer].mlp
    norm = model.model.layers[layer].post_feedforward_layernorm
    seen = {}

    def edit_by_hand(module, args, output):
        (x,) = args
        h = module.act_fn(module.gate_proj(x)) * module.up_proj(x)
        h0 = h.clone()
        h0[..., neuron] = 0.0  # y0: the clamped neuron zeroed (what the patched rows compute)
        h[..., neuron] = value
        seen["plain"], seen["exact"] = norm(module.down_proj(h0))[0].double(), norm(module.down_proj(h))[0].double()
        return module.down_proj(h)

    handle = mlp.register_forward_hook(edit_by_hand)
    try:
        with torch.no_grad():
            model(torch.tensor([calibration]))
    finally:
        handle.remove()
    plain, exact = seen["plain"], seen["exact"]
    tokens, d = plain.shape
    design = torch.cat([plain.reshape(-1, 1), torch.eye(d, dtype=torch.float64).repeat(tokens, 1)], dim=1)
    solution = torch.linalg.lstsq(design, exact.reshape(-1, 1)).solution[:, 0]
    fit = fit_post_norm(model, calibration, plan_for(model, [Edit(layer, neuron, "clamp", value)]))[layer]
    assert 0 < fit.gain < 1 and abs(fit.gain - float(solution[0])) <= 1e-6 * abs(float(solution[0]))
    np.testing.assert_allclose(fit.offset, solution[1:].numpy(), rtol=1e-4, atol=1e-5)
