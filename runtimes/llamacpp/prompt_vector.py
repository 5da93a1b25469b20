"""Prompt-position edits for llama.cpp: a control vector active only while the prompt is evaluated.

Weights cannot tell prompt tokens from generated ones, but llama.cpp's control
vector can be set and cleared between evaluations on one KV cache.  An
``add a`` edit of neuron ``j`` in layer ``N`` adds ``a * W_down[:, j]`` to the
FFN output, which (llama family: no norm after the FFN) is exactly the same
as adding it to the output of layer ``N`` -- what ``direction.N`` does.
Clamp, scale and ablate need the neuron's own value and cannot be expressed
this way; they are refused on prompt positions.
"""

from __future__ import annotations

import numpy as np

from steerkit.errors import UnsupportedEdit
from steerkit.plan import Plan
from steerkit.weights.gguf_reader import GGUFWeights

__all__ = ["prompt_directions", "split_plan"]


def prompt_directions(weights: GGUFWeights, plan: Plan) -> dict[int, np.ndarray]:
    """Per-layer directions for the plan's prompt-position edits (empty if it has none).

    Raises a one-line error for what cannot be done exactly: non-additive
    edits, edits on generated positions, layer 0 (llama.cpp applies control
    vectors from layer 1), and architectures with a norm after the FFN.
    """
    directions: dict[int, np.ndarray] = {}
    for group in plan.groups:
        if group.positions == "all" or not group.layers:
            continue
        names = ", ".join(plan.names)
        if group.positions != "prompt":
            raise UnsupportedEdit(f"profile {names}: edits on {group.positions!r} positions cannot run in llama.cpp",
                                  "llama.cpp")
        if weights.info.arch.post_ffn_norm:
            raise UnsupportedEdit(f"profile {names}: prompt-position edits need an architecture without a post-FFN "
                                  f"norm in llama.cpp ({weights.info.arch.name} has one)", "llama.cpp")
        for edits in group.layers:
            if not np.all(edits.mult == 1.0):
                raise UnsupportedEdit(f"profile {names}: only 'add' edits can be limited to prompt positions in "
                                      f"llama.cpp (layer {edits.layer} has clamp/scale/ablate)", "llama.cpp")
            if edits.layer == 0:
                raise UnsupportedEdit(f"profile {names}: llama.cpp control vectors start at layer 1, so a "
                                      f"prompt-position edit of layer 0 cannot run there", "llama.cpp")
            offset = weights.down_offset(edits.layer, edits.neurons, edits.add)
            directions[edits.layer] = directions.get(edits.layer, 0) + offset
    return directions


def split_plan(weights: GGUFWeights, plan: Plan) -> tuple[Plan, dict[int, np.ndarray]]:
    """The plan's all-position part (for a patched GGUF copy) and its prompt-position directions."""
    return Plan(tuple(g for g in plan.groups if g.positions == "all"), plan.names), prompt_directions(weights, plan)
