"""Neuron edits inside a transformers mixture-of-experts layer.

transformers keeps a layer's experts fused in one module (``mlp.experts``),
called as ``experts(x [T, d], top_k_index [T, k], top_k_weights [T, k])``;
its implementation (an eager loop over experts, grouped GEMMs, a hub kernel)
is chosen by the config.  The module declares its own layout
(``is_transposed``, ``is_concatenated``, ``has_bias``, set by transformers'
``use_experts_implementation``):

* Mixtral, Qwen3-MoE: ``gate_up_proj`` ``[E, 2*d_ff, d]`` gate rows first,
  ``down_proj`` ``[E, d, d_ff]``, no bias;
* gpt-oss: ``gate_up_proj`` ``[E, d, 2*d_ff]`` with gate and up interleaved,
  ``down_proj`` ``[E, d_ff, d]``, and ``gate_up_proj_bias``/``down_proj_bias``.

Neuron ``(e, i)``'s activation ``h`` exists only inside that call, so instead
of reaching in, a forward hook on the module recomputes ``h`` for the edited
neurons alone (two dot products per token, then the module's own
``_apply_gate``, so any activation is the model's), applies the edits and
adds what they change to the output:

    out += w_e(x) * (h' - h) * W_down[e][:, i]

where ``w_e(x)`` is the router weight of expert ``e`` for the token (0 when it
is not routed there).  That is exactly what editing ``h`` inside the expert
does, for every implementation the config may pick, and costs
``O(tokens x edited neurons x d)``.
"""

from __future__ import annotations

import torch

from steerkit.runtimes.hf.positions import PositionTracker

__all__ = ["ExpertsHook", "ExpertLayout", "expert_activations", "routing_args"]


class ExpertLayout:
    """Where neuron ``(e, i)``'s weights sit in one transformers experts module."""

    def __init__(self, module: torch.nn.Module) -> None:
        # Modules from transformers before the layout flags are Mixtral-style.
        self.transposed = bool(getattr(module, "is_transposed", False))
        self.concatenated = bool(getattr(module, "is_concatenated", True))
        self.has_bias = bool(getattr(module, "has_bias", False))
        self.n_experts = module.down_proj.shape[0]
        self.d_ff = module.down_proj.shape[1 if self.transposed else 2]

    def split(self, neurons: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat neurons ``expert * d_ff + i`` as ``(experts, index)``."""
        return neurons // self.d_ff, neurons % self.d_ff

    def gate_up_columns(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions of neuron ``i``'s gate and up outputs along ``gate_up_proj``'s ``2*d_ff`` axis."""
        if self.concatenated:
            return index, self.d_ff + index
        return 2 * index, 2 * index + 1

    def pre_activations(self, module: torch.nn.Module, x: torch.Tensor, neurons: torch.Tensor) -> torch.Tensor:
        """Gate and up outputs of ``neurons`` for every token, ``[T, 2n]`` in the module's own layout."""
        experts, index = self.split(neurons)
        gate_at, up_at = self.gate_up_columns(index)
        weight = module.gate_up_proj
        if self.transposed:  # [E, d, 2*d_ff]
            gate, up = weight[experts, :, gate_at], weight[experts, :, up_at]  # [n, d]
        else:  # [E, 2*d_ff, d]
            gate, up = weight[experts, gate_at], weight[experts, up_at]
        gate_out, up_out = x @ gate.T, x @ up.T  # [T, n]
        if self.has_bias:
            gate_out = gate_out + module.gate_up_proj_bias[experts, gate_at]
            up_out = up_out + module.gate_up_proj_bias[experts, up_at]
        if self.concatenated:
            return torch.cat([gate_out, up_out], dim=-1)
        return torch.stack([gate_out, up_out], dim=-1).flatten(-2)

    def down_vectors(self, weight: torch.Tensor, neurons: torch.Tensor) -> torch.Tensor:
        """What ``neurons`` write, ``[n, d]``, read from a ``down_proj``-shaped tensor."""
        experts, index = self.split(neurons)
        return weight[experts, index] if self.transposed else weight[experts, :, index]


def routing_args(args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x [T, d], top_k_index [T, k], top_k_weights [T, k])`` of a call to an experts module.

    Mixtral-style modules name them ``hidden_states, top_k_index, top_k_weights``; gpt-oss names the
    last two ``router_indices, routing_weights``.
    """
    names = (("hidden_states",), ("top_k_index", "router_indices"), ("top_k_weights", "routing_weights"))
    found = []
    for i, aliases in enumerate(names):
        found.append(args[i] if i < len(args) else next(kwargs[a] for a in aliases if a in kwargs))
    return found[0], found[1], found[2]


def expert_activations(module: torch.nn.Module, x: torch.Tensor, neurons: torch.Tensor) -> torch.Tensor:
    """``h`` of flat neurons ``neurons`` (``expert * d_ff + i``) for every token of ``x`` ``[T, d]``: ``[T, n]``.

    Computed whether or not the token is routed to the expert; callers weigh it by the routing.
    """
    return _apply_gate(module, ExpertLayout(module).pre_activations(module, x, neurons))


def _apply_gate(module: torch.nn.Module, gate_up: torch.Tensor) -> torch.Tensor:
    """The module's own activation of gate/up outputs (transformers without ``_apply_gate``: concatenated SwiGLU)."""
    if hasattr(module, "_apply_gate"):
        return module._apply_gate(gate_up)
    gate, up = gate_up.chunk(2, dim=-1)
    return module.act_fn(gate) * up


def _routing(experts: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
    """Router weight of each token for each neuron's expert, ``[T, n]`` (0 where the token is not routed there)."""
    hit = top_k_index.unsqueeze(-1) == experts  # [T, k, n]
    return (hit * top_k_weights.unsqueeze(-1)).sum(dim=1)


class ExpertsHook:
    """Forward hook (``with_kwargs=True``) of one layer's ``experts``: every edit group touching the layer.

    ``groups`` hold ``((positions, until), neurons [n], mult, add)`` as for the dense hook; ``mult``/``add``
    are ``[n]``, or ``[batch, n]`` for one edit per batch row.  Groups apply in order, each to the
    activations the previous ones left.
    """

    def __init__(self, groups: list, tracker: PositionTracker) -> None:
        self.groups = groups
        self.tracker = tracker
        self.neurons = torch.unique(torch.cat([neurons for _, neurons, _, _ in groups]))  # sorted
        self.columns = [torch.searchsorted(self.neurons, neurons) for _, neurons, _, _ in groups]

    @staticmethod
    def _per_token(values: torch.Tensor, seq: int) -> torch.Tensor:
        # [n] broadcasts; [batch, n] becomes [batch * seq, n] (the experts see the batch flattened, row-major).
        return values.repeat_interleave(seq, dim=0) if values.dim() == 2 else values

    def __call__(self, module: torch.nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> torch.Tensor:
        x, top_k_index, top_k_weights = routing_args(args, kwargs)
        device, dtype = x.device, x.dtype
        layout = ExpertLayout(module)
        neurons = self.neurons.to(device)
        h = _apply_gate(module, layout.pre_activations(module, x, neurons))  # [T, n]
        edited = h.clone()
        tokens, seq = x.shape[0], max(1, self.tracker.length)
        for ((positions, until), _, mult, add), columns in zip(self.groups, self.columns):
            columns = columns.to(device)
            selected = edited[:, columns]
            new = selected * self._per_token(mult.to(device, dtype), seq) + self._per_token(add.to(device, dtype), seq)
            if positions != "all" or until is not None:
                mask = self.tracker.mask(positions, device, until)  # [seq], or [batch, seq] with until
                mask = mask.expand(tokens // seq, seq) if mask.dim() == 1 else mask
                new = torch.where(mask.reshape(tokens, 1), new, selected)
            edited[:, columns] = new
        weight = _routing(layout.split(neurons)[0], top_k_index, top_k_weights).to(dtype)  # [T, n]
        down = layout.down_vectors(module.down_proj, neurons)  # [n, d]
        return output + ((edited - h) * weight) @ down.to(dtype)
