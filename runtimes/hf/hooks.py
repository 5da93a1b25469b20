"""Apply a plan to a transformers model with forward hooks on ``down_proj``'s input.

(Mixture-of-experts layers are hooked on their ``experts`` module instead:
:mod:`steerkit.runtimes.hf.experts`.)

The input of ``down_proj`` is the vector of neuron activations ``h``.  Each
hooked layer rewrites only its edited neurons with one gather and one indexed
write per edit group (``h[..., idx] = h[..., idx] * mult + add``), whatever
the number of edits.  Edits restricted to prompt or generated positions, or
stopping once the answer names a word (``until``), use a mask from
:class:`PositionTracker`; ``until`` needs the tokenizer, to read the answer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from steerkit.errors import SteerkitError
from steerkit.runtimes.hf.experts import ExpertsHook
from steerkit.runtimes.hf.modules import mlp_module, model_arch
from steerkit.runtimes.hf.positions import PositionTracker
from steerkit.plan import Plan

__all__ = ["HookHandle", "attach", "attach_rows", "steered"]


class _LayerHook:
    """The pre-hook of one ``down_proj``: every edit group touching this layer."""

    def __init__(self, groups: list[tuple[tuple[str, str | None], torch.Tensor, torch.Tensor, torch.Tensor]],
                 tracker: PositionTracker):
        # ((positions, until), neurons [n], mult, add) on the CPU; mult/add are [n], or [batch, n] for one edit
        # per batch row.
        self.groups = groups
        self.tracker = tracker
        self._placed: dict[tuple[torch.device, torch.dtype], list] = {}

    def _on(self, device: torch.device, dtype: torch.dtype) -> list:
        # Move the small index/value tensors once per device and dtype, not per call.
        key = (device, dtype)
        if key not in self._placed:
            self._placed[key] = [
                (positions, neurons.to(device), self._rows(mult.to(device, dtype)), self._rows(add.to(device, dtype)))
                for positions, neurons, mult, add in self.groups
            ]
        return self._placed[key]

    @staticmethod
    def _rows(values: torch.Tensor) -> torch.Tensor:
        # Per-row values [batch, n] broadcast over the sequence axis of h [batch, seq, n].
        return values.unsqueeze(1) if values.dim() == 2 else values

    def __call__(self, module: torch.nn.Module, args: tuple) -> tuple:
        h = args[0]
        dim = h.dim() - 1
        for (positions, until), neurons, mult, add in self._on(h.device, h.dtype):
            selected = h.index_select(dim, neurons)
            edited = torch.addcmul(add, selected, mult)
            if positions != "all" or until is not None:
                mask = self.tracker.mask(positions, h.device, until)  # [seq], or [batch, seq] with until
                edited = torch.where(mask.unsqueeze(-1), edited, selected)
            h = h.index_copy(dim, neurons, edited) if h.requires_grad else h.index_copy_(dim, neurons, edited)
        return (h,) + tuple(args[1:])


class HookHandle:
    """Hooks attached to a model; :meth:`remove` takes them all off."""

    def __init__(self, handles: list, tracker: PositionTracker) -> None:
        self._handles = handles
        self.tracker = tracker

    def remove(self) -> None:
        """Remove every hook; the model computes exactly as before."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def set_prompt_length(self, length: int | None) -> None:
        """Fix the prompt length for forward passes over prompt + answer at once (``None``: automatic)."""
        self.tracker.fixed_prompt_length = length


def attach(model: torch.nn.Module, plan: Plan, tokenizer=None) -> HookHandle:
    """Hook ``plan`` into ``model``; return a handle whose ``remove()`` undoes it.

    Every module is resolved before the first hook is added, so a failure
    never leaves a half-hooked model.  Check profiles against the model with
    :func:`steerkit.plan.compile_plan` (``model=model_binding(...)``) first.
    A plan with ``until`` edits needs the ``tokenizer``.

    >>> handle = attach(model, compile_plan([profile]))   # doctest: +SKIP
    >>> model.generate(...); handle.remove()
    """
    per_layer: dict[int, list] = {}
    for group in plan.groups:
        for edits in group.layers:
            per_layer.setdefault(edits.layer, []).append(
                ((group.positions, group.until), torch.from_numpy(edits.neurons), torch.from_numpy(edits.mult),
                 torch.from_numpy(edits.add))
            )
    return _hook_layers(model, per_layer, [plan], tokenizer)


def attach_rows(model: torch.nn.Module, plans: list[Plan], tokenizer=None) -> HookHandle:
    """Hook one plan per batch row: row ``b`` of every batch is edited by ``plans[b]`` only.

    Used to run many candidate profiles (a strength sweep) in one batch.  A
    row's plan may hold several profiles; they apply in order, as in
    :func:`attach`.  Batches must have exactly ``len(plans)`` rows.
    """
    stages: dict[tuple[int, int, str, str], dict[tuple[int, int], tuple[float, float]]] = {}
    for row, plan in enumerate(plans):
        for order, group in enumerate(plan.groups):
            for edits in group.layers:
                stage = stages.setdefault((edits.layer, order, group.positions, group.until or ""), {})
                for j, m, a in zip(edits.neurons.tolist(), edits.mult.tolist(), edits.add.tolist()):
                    stage[(row, j)] = (m, a)
    per_layer: dict[int, list] = {}
    for (layer, _, positions, until), values in sorted(stages.items()):
        neurons = sorted({j for _, j in values})
        column = {j: k for k, j in enumerate(neurons)}
        mult, add = torch.ones(len(plans), len(neurons)), torch.zeros(len(plans), len(neurons))
        for (row, j), (m, a) in values.items():
            mult[row, column[j]], add[row, column[j]] = m, a
        per_layer.setdefault(layer, []).append(((positions, until or None), torch.tensor(neurons, dtype=torch.int64),
                                                mult, add))
    return _hook_layers(model, per_layer, plans, tokenizer)


def _hook_layers(model: torch.nn.Module, per_layer: dict[int, list], plans: list[Plan], tokenizer) -> HookHandle:
    words = tuple(dict.fromkeys(g.until for plan in plans for g in plan.groups if g.until is not None and g.layers))
    if words and tokenizer is None:
        raise SteerkitError(f"profile {', '.join(n for plan in plans for n in plan.names)} stops once the answer "
                            f"names {words[0]!r}: steering it needs the model's tokenizer, to read the answer")
    experts = model_arch(model).experts is not None
    # Resolve every module before hooking any.
    modules = {layer: getattr(mlp_module(model, layer), "experts" if experts else "down_proj") for layer in per_layer}
    tracker = PositionTracker(tokenizer, words)
    handles = [model.register_forward_pre_hook(tracker.before_forward, with_kwargs=True)]
    for layer, groups in per_layer.items():
        if experts:
            handles.append(modules[layer].register_forward_hook(ExpertsHook(groups, tracker), with_kwargs=True))
        else:
            handles.append(modules[layer].register_forward_pre_hook(_LayerHook(groups, tracker)))
    return HookHandle(handles, tracker)


@contextlib.contextmanager
def steered(model: torch.nn.Module, plan: Plan, tokenizer=None) -> Iterator[HookHandle]:
    """Context manager form of :func:`attach`: hooks are removed on exit, even on error."""
    handle = attach(model, plan, tokenizer)
    try:
        yield handle
    finally:
        handle.remove()
