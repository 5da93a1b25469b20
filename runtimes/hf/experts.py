"""Neuron edits inside a transformers mixture-of-experts layer.

transformers keeps a layer's experts fused in one module (``mlp.experts``:
``gate_up_proj`` ``[E, 2*d_ff, d]``, gate rows first, and ``down_proj``
``[E, d, d_ff]``), called as ``experts(x [T, d], top_k_index [T, k],
top_k_weights [T, k])``; its implementation (an eager loop over experts,
grouped GEMMs, a hub kernel) is chosen by the config.  Neuron ``(e, i)``'s
activation ``h = act(gate_e,i . x) * (up_e,i . x)`` exists only inside that
call, so instead of reaching in, a forward hook on the module recomputes
``h`` for the edited neurons alone (two dot products per token), applies the
edits and adds what they change to the output:

    out += w_e(x) * (h' - h) * W_down[e][:, i]

where ``w_e(x)`` is the router weight of expert ``e`` for the token (0 when it
is not routed there).  That is exactly what editing ``h`` inside the expert
does, for every implementation the config may pick, and costs
``O(tokens x edited neurons x d)``.
"""

from __future__ import annotations

import torch

from steerkit.runtimes.hf.positions import PositionTracker

__all__ = ["ExpertsHook", "expert_activations"]


def _routing(experts: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
    """Router weight of each token for each neuron's expert, ``[T, n]`` (0 where the token is not routed there)."""
    hit = top_k_index.unsqueeze(-1) == experts  # [T, k, n]
    return (hit * top_k_weights.unsqueeze(-1)).sum(dim=1)


def expert_activations(module: torch.nn.Module, x: torch.Tensor, neurons: torch.Tensor) -> torch.Tensor:
    """``h`` of flat neurons ``neurons`` (``expert * d_ff + i``) for every token of ``x`` ``[T, d]``: ``[T, n]``.

    Computed whether or not the token is routed to the expert; callers weigh it by the routing.
    """
    d_ff = module.down_proj.shape[-1]
    experts, index = neurons // d_ff, neurons % d_ff
    gate = module.gate_up_proj[experts, index]  # [n, d]
    up = module.gate_up_proj[experts, d_ff + index]
    return module.act_fn(x @ gate.T) * (x @ up.T)


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
        names = ("hidden_states", "top_k_index", "top_k_weights")
        x, top_k_index, top_k_weights = (args[i] if i < len(args) else kwargs[name] for i, name in enumerate(names))
        device, dtype = x.device, x.dtype
        neurons = self.neurons.to(device)
        h = expert_activations(module, x, neurons)  # [T, n]
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
        d_ff = module.down_proj.shape[-1]
        weight = _routing(neurons // d_ff, top_k_index, top_k_weights).to(dtype)  # [T, n]
        down = module.down_proj[neurons // d_ff, :, neurons % d_ff]  # [n, d]
        return output + ((edited - h) * weight) @ down.to(dtype)
