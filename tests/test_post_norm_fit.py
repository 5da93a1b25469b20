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
