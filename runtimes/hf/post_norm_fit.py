"""An affine stand-in for clamp/add edits on models that normalise the FFN output (Gemma).

Gemma adds ``g * n(y)`` to the residual stream, where ``y`` is the FFN output
and ``n(y) = y / rms(y)``.  A clamp/add edit adds ``D = sum_j add_j W_down[:, j]``
to ``y``, so the exact result is ``g * n(y0 + D)``, with ``y0`` the FFN output
without the additive part (clamped neurons zeroed, scales applied).  llama.cpp's
Gemma graph loads no FFN bias, but two stock parts can carry an affine stand-in
for that: the post-FFN norm gain, an F32 tensor we scale by ``k``, and a control
vector, an offset ``c`` added after the layer:

    g * n(y0 + D)  ~  k * g * n(y0) + c

``k`` (one number per layer) and ``c`` are least-squares fitted along the
exactly steered HF run over steerkit's reference text.  A large ``D`` dominates
``rms(y0 + D)``, which shrinks the rest of the FFN output by a nearly constant
factor; ``k`` captures that, ``c`` the edit's own, nearly constant, direction.
(Measured on Gemma 3 270M, two neurons clamped to 10: the offset alone leaves
KL 0.44 from the exact edit, offset and gain KL 0.03; a per-dimension gain is
no better than one number.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from steerkit.runtimes.hf.hooks import steered
from steerkit.runtimes.hf.modules import mlp_module, model_arch
from steerkit.plan import EditGroup, LayerEdits, Plan

__all__ = ["PostNormFit", "fit_post_norm", "approximated", "divergence", "additive_layers", "without_adds"]


@dataclass(frozen=True)
class PostNormFit:
    """One layer's stand-in: the post-FFN norm gain is multiplied by ``gain``, then ``offset`` is added."""

    gain: float
    offset: np.ndarray  # [d_model] float32


def additive_layers(plan: Plan) -> dict[int, LayerEdits]:
    """The layers of ``plan`` (all positions) whose edits add something: those a stand-in is fitted for."""
    return {layer: edits for layer, edits in plan.merged().items() if (edits.add != 0).any()}


def without_adds(plan: Plan) -> Plan:
    """``plan`` with its additive parts removed (what the patched rows of a post-norm model do exactly)."""
    layers = tuple(LayerEdits(e.layer, e.neurons, e.mult, np.zeros_like(e.add)) for e in plan.merged().values())
    return Plan((EditGroup("all", layers),), plan.names)


def _post_norm(model: torch.nn.Module, layer: int) -> torch.nn.Module:
    """The post-FFN norm of decoder layer ``layer`` (a sibling of its MLP)."""
    parent = model_arch(model).hf_mlp_path.format(layer=layer).rsplit(".", 1)[0]
    return model.get_submodule(parent + ".post_feedforward_layernorm")


def _added(model: torch.nn.Module, edits: LayerEdits) -> torch.Tensor:
    """``D``: what the layer's adds put into the FFN output."""
    weight = mlp_module(model, edits.layer).down_proj.weight
    amounts = torch.as_tensor(edits.add, dtype=weight.dtype, device=weight.device)
    return weight[:, torch.as_tensor(edits.neurons, device=weight.device)] @ amounts


@torch.no_grad()
def fit_post_norm(model: torch.nn.Module, input_ids: list[int], plan: Plan, fit_gain: bool = True,
                  rows_patched: bool = True) -> dict[int, PostNormFit]:
    """Fit ``k`` and ``c`` for every additive layer of ``plan`` along the exactly steered run over ``input_ids``.

    With ``fit_gain=False``, ``k`` stays 1 and ``c`` is the mean difference (what a control vector alone can
    do).  ``rows_patched`` says what llama.cpp's FFN output ``y0`` is: the patched file's (scaled and
    clamped rows applied, adds missing), or with ``False`` the unpatched model's (no edit at all), for a
    control vector used on its own.
    """
    layers = additive_layers(plan)
    samples: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    unedited: dict[int, torch.Tensor] = {}
    handles = []
    for layer, edits in layers.items():
        norm, added, mlp = _post_norm(model, layer), _added(model, edits), mlp_module(model, layer)

        def record(module, args, output, layer=layer, norm=norm, added=added, down=mlp.down_proj) -> None:
            # output = y0 + D (the hooks edited h); both sides of the fit, in float64 for the sums.
            plain = output - added if rows_patched else torch.nn.functional.linear(unedited[layer], down.weight, down.bias)
            samples[layer] = (norm(plain)[0].double(), norm(output)[0].double())

        def keep_unedited(module, args, layer=layer) -> None:
            unedited[layer] = args[0].clone()  # steerkit's hook then edits h in place

        handles.append(mlp.register_forward_hook(record))
        if not rows_patched:  # before steerkit's own pre-hook edits h
            handles.append(mlp.down_proj.register_forward_pre_hook(keep_unedited, prepend=True))
    try:
        with steered(model, plan):
            model(torch.tensor([input_ids], device=model.device))
    finally:
        for handle in handles:
            handle.remove()
    fits = {}
    for layer, (plain, exact) in samples.items():
        plain_c, exact_c = plain - plain.mean(0), exact - exact.mean(0)
        gain = float((plain_c * exact_c).sum() / (plain_c * plain_c).sum().clamp_min(1e-30)) if fit_gain else 1.0
        offset = (exact.mean(0) - gain * plain.mean(0)).float().cpu().numpy()
        fits[layer] = PostNormFit(gain, offset)
    return fits


@contextlib.contextmanager
def approximated(model: torch.nn.Module, plan: Plan, fits: dict[int, PostNormFit],
                 rows_patched: bool = True) -> Iterator[None]:
    """Run ``model`` as llama.cpp computes the stand-in: row edits (unless ``rows_patched=False``: an
    unpatched model), then gain and offset after the norm."""
    handles = []
    for layer, fit in fits.items():
        offset = torch.as_tensor(fit.offset)

        def stand_in(module, args, output, gain=fit.gain, offset=offset):
            return output * gain + offset.to(output.device, output.dtype)

        handles.append(_post_norm(model, layer).register_forward_hook(stand_in))
    try:
        with steered(model, without_adds(plan)) if rows_patched else contextlib.nullcontext():
            yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def divergence(model: torch.nn.Module, tokenizer, texts: list[str], plan: Plan,
               fits: dict[int, PostNormFit], progress: bool = False, rows_patched: bool = True) -> tuple[float, float, float]:
    """How far the stand-in is from the exact edit on ``texts``, in the HF runtime.

    Returns (mean KL per position of the stand-in from the exact edit, top-1 agreement with it, and the
    mean KL the exact edit itself moves the model by: the scale the first figure is to be read against).
    """
    bar = tqdm(total=3 * len(texts), desc="measuring the stand-in", disable=not progress)

    def log_probs(context) -> torch.Tensor:
        rows = []
        with context:
            for text in texts:
                ids = torch.tensor([tokenizer(text).input_ids], device=model.device)
                rows.append(torch.log_softmax(model(ids).logits[0].float(), -1))
                bar.update()
        return torch.cat(rows)

    exact = log_probs(steered(model, plan))
    stand_in = log_probs(approximated(model, plan, fits, rows_patched))
    plain = log_probs(contextlib.nullcontext())
    bar.close()

    def kl(p: torch.Tensor, q: torch.Tensor) -> float:
        return float((p.exp() * (p - q)).sum(-1).mean())

    agreement = float((exact.argmax(-1) == stand_in.argmax(-1)).double().mean())
    return kl(exact, stand_in), agreement, kl(exact, plain)
