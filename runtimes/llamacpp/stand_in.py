"""Fit and measure the stand-in for clamp/add edits on models whose llama.cpp graph cannot carry them exactly.

Gemma normalises the FFN output and llama.cpp's Gemma graph loads no FFN bias; the fit itself lives in
:mod:`steerkit.runtimes.hf.post_norm_fit`.  This module runs it for a GGUF (through its cached transformers
conversion) and says how far the result is from the exact edit.  Two uses:

* ``steerkit patch --approximate``: rows patched in the file, post-FFN norm gains scaled, offsets in a
  control vector next to it (``rows_patched=True``, gain fitted);
* ``steerkit export-cvec``: a control vector for the unpatched model, offsets only (``rows_patched=False``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from steerkit.errors import SteerkitError
from steerkit.plan import Plan
from steerkit.weights.gguf_reader import GGUFWeights

if TYPE_CHECKING:  # the fit needs torch and transformers; they are imported only when a fit runs
    from steerkit.runtimes.hf.post_norm_fit import PostNormFit

__all__ = ["StandIn", "check_cvec_layer", "fit_stand_in"]


def check_cvec_layer(layer: int) -> None:
    """Raise a one-line error for layer 0, which llama.cpp's control vectors cannot reach."""
    if layer == 0:
        raise SteerkitError("llama.cpp control vectors cannot act on layer 0; remove or move the layer-0 add/clamp edits")


@dataclass(frozen=True)
class StandIn:
    """Fitted per-layer gains and offsets, and their measured divergence from the exact edit."""

    fits: dict[int, "PostNormFit"]
    kl: float  # mean KL per position from the exact edit (transformers, neutral prompts)
    top1: float
    moved: float  # how far the exact edit itself moves the model, for scale
    n_prompts: int

    def measured(self) -> str:
        """One sentence with the figures."""
        return (f"Measured against the exact edit in transformers on steerkit's {self.n_prompts} neutral prompts: mean KL "
                f"per position {self.kl:.4f}, top-1 agreement {100 * self.top1:.1f} %, where the exact edit itself moves "
                f"the model by KL {self.moved:.3f}.")


def fit_stand_in(weights: GGUFWeights, plan: Plan, rows_patched: bool, progress: bool = True) -> StandIn:
    """Fit the stand-in of ``plan``'s additive edits for ``weights`` and measure it (loads the model in transformers)."""
    from steerkit.runtimes.hf import load_model
    from steerkit.runtimes.hf.post_norm_fit import additive_layers, divergence, fit_post_norm
    from steerkit.prompts import builtin_prompts, reference_text

    for layer in additive_layers(plan):  # before the model is loaded: the offsets go into a control vector
        check_cvec_layer(layer)
    model, tokenizer = load_model(str(weights.path))
    fits = fit_post_norm(model, tokenizer(reference_text()).input_ids, plan, fit_gain=rows_patched, rows_patched=rows_patched)
    prompts = builtin_prompts("neutral")
    kl, top1, moved = divergence(model, tokenizer, prompts, plan, fits, progress, rows_patched)
    return StandIn(fits, kl, top1, moved, len(prompts))
