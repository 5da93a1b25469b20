"""Position-limited edits for llama.cpp: control vectors set and cleared between evaluations on one KV cache.

Weights cannot tell prompt tokens from generated ones, but llama.cpp's
control vector can be changed between evaluations.  An ``add a`` edit of
neuron ``j`` in layer ``N`` adds ``a * W_down[:, j]`` to the FFN output,
which (llama family: no norm after the FFN) is exactly the same as adding it
to the output of layer ``N`` -- what ``direction.N`` does.  So every group
of add edits that is limited to the prompt, to the answer, or that stops
once the answer names a word (``until``) becomes a :class:`VectorPart`; the
answer loop (:meth:`~steerkit.runtimes.llamacpp.model.LlamaCppModel.answer`)
sets the sum of the parts that apply to what it evaluates next.  Clamp,
scale and ablate need the neuron's own value and cannot be expressed this
way; they are refused there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from steerkit.errors import UnsupportedEdit
from steerkit.plan import EditGroup, Plan
from steerkit.weights.gguf_reader import GGUFWeights

__all__ = ["VectorPart", "VectorSteering", "vector_steering", "split_plan"]


@dataclass(frozen=True)
class VectorPart:
    """Directions added to layers' outputs on the prompt, the answer, or both; with ``until``, only until the
    answer has named that word."""

    directions: dict[int, np.ndarray]
    on_prompt: bool
    on_answer: bool
    until: str | None = None


@dataclass(frozen=True)
class VectorSteering:
    """Every control-vector part of a plan (empty when everything is patched into the weights)."""

    parts: tuple[VectorPart, ...] = ()

    @property
    def words(self) -> tuple[str, ...]:
        """The words whose mention in the answer releases a part."""
        return tuple(dict.fromkeys(p.until for p in self.parts if p.until is not None))

    def prompt(self) -> dict[int, np.ndarray]:
        """What to add while the prompt is evaluated."""
        return _summed(p for p in self.parts if p.on_prompt)

    def answer(self, named: set[str] = frozenset()) -> dict[int, np.ndarray]:
        """What to add while answer tokens are evaluated, once the answer has named ``named``."""
        return _summed(p for p in self.parts if p.on_answer and p.until not in named)


def _summed(parts) -> dict[int, np.ndarray]:
    total: dict[int, np.ndarray] = {}
    for part in parts:
        for layer, direction in part.directions.items():
            total[layer] = total.get(layer, 0) + direction
    return total


def _group_directions(weights: GGUFWeights, group: EditGroup, names: str) -> dict[int, np.ndarray]:
    """The directions of one group of add edits; a one-line error for what cannot be done exactly:
    non-additive edits, layer 0 (llama.cpp applies control vectors from layer 1), and architectures with a
    norm after the FFN."""
    where = "limited to prompt positions" if group.positions == "prompt" else \
        "limited to generated positions" if group.until is None else f"that stop once the answer names {group.until!r}"
    if weights.info.arch.post_ffn_norm:
        raise UnsupportedEdit(f"profile {names}: edits {where} need an architecture without a post-FFN norm in "
                              f"llama.cpp ({weights.info.arch.name} has one)", "llama.cpp")
    directions: dict[int, np.ndarray] = {}
    for edits in group.layers:
        if not np.all(edits.mult == 1.0):
            raise UnsupportedEdit(f"profile {names}: only 'add' edits can be {where} in llama.cpp (layer "
                                  f"{edits.layer} has clamp/scale/ablate)", "llama.cpp")
        if edits.layer == 0:
            raise UnsupportedEdit(f"profile {names}: llama.cpp control vectors start at layer 1, so edits {where} "
                                  f"cannot act on layer 0 there", "llama.cpp")
        offset = weights.down_offset(edits.layer, edits.neurons, edits.add)
        directions[edits.layer] = directions.get(edits.layer, 0) + offset
    return directions


def vector_steering(weights: GGUFWeights, plan: Plan) -> VectorSteering:
    """The control-vector parts of every group that weights cannot carry (see the module doc)."""
    names = ", ".join(plan.names)
    parts = []
    for group in plan.groups:
        if not group.layers or (group.positions == "all" and group.until is None):
            continue
        parts.append(VectorPart(_group_directions(weights, group, names), group.positions != "generated",
                                group.positions != "prompt", group.until))
    return VectorSteering(tuple(parts))


def split_plan(weights: GGUFWeights, plan: Plan) -> tuple[Plan, VectorSteering]:
    """The plan's part for a patched GGUF copy (all positions, no ``until``) and its control-vector parts."""
    everywhere = tuple(g for g in plan.groups if g.positions == "all" and g.until is None)
    return Plan(everywhere, plan.names), vector_steering(weights, plan)
