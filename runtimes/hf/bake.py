"""Bake a plan into a transformers model's weights: zero runtime overhead.

Per the compilation table (docs/formats.md), neuron ``j``'s affine edit
``h*mult + add`` becomes: ``up_proj`` row ``j`` multiplied by ``mult`` (exact,
since ``h = act(gate.x) * (up.x)``) and ``add * W_down[:, j]`` added to a
``down_proj`` bias.  Baking applies at every position.  The handle restores
the saved rows and bias exactly.

In a mixture of experts, neuron ``(e, i)``'s up row is row ``d_ff + i`` of
``experts.gate_up_proj[e]`` (gate rows first), scaled the same way.  Its
clamp/add cannot be baked: an expert's constant write applies only to the
tokens routed to it, weighted by the router, and transformers' experts carry
no bias that could hold it.
"""

from __future__ import annotations

import torch

from steerkit.runtimes.hf.modules import mlp_module, model_arch, text_config
from steerkit.errors import SteerkitError, UnsupportedEdit
from steerkit.plan import LayerEdits, Plan

__all__ = ["BakedHandle", "bake", "prepare_for_save"]


class BakedHandle:
    """Weights changed by :func:`bake`; :meth:`remove` puts the originals back."""

    def __init__(self, saved: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.nn.Module | None, object]]) -> None:
        self._saved = saved

    @torch.no_grad()
    def remove(self) -> None:
        """Restore every changed row and bias, bit for bit."""
        for weight, rows, values, down, bias in reversed(self._saved):
            weight.index_copy_(0, rows, values)
            if down is not None:
                down.bias = bias
        self._saved = []


def _up_rows(model: torch.nn.Module, layer: int, edits: LayerEdits) -> tuple[torch.Tensor, torch.Tensor, torch.nn.Module | None]:
    """``(weight [rows, d], row indices, down_proj)`` holding the edited neurons' up rows (a view of the
    parameter, so writes land in the model); ``down_proj`` is ``None`` for experts (no bias to bake into)."""
    mlp = mlp_module(model, layer)
    if model_arch(model).experts is None:
        if mlp.up_proj.bias is not None:
            raise SteerkitError(f"layer {layer}: up_proj has a bias; baking a scaled row would need it scaled too")
        weight = mlp.up_proj.weight
        return weight, torch.from_numpy(edits.neurons).to(weight.device), mlp.down_proj
    if bool((edits.add != 0).any()):
        raise UnsupportedEdit(f"layer {layer}: clamp/add edits of expert neurons cannot be baked into weights (an "
                              "expert writes only for the tokens routed to it, and its MLP has no bias): use hooks, "
                              "or scale/ablate edits", "weights")
    fused = mlp.experts.gate_up_proj.data  # [E, 2 * d_ff, d]
    d_ff = fused.shape[1] // 2
    experts, index = torch.from_numpy(edits.neurons).div(d_ff, rounding_mode="floor"), torch.from_numpy(edits.neurons) % d_ff
    return fused.view(-1, fused.shape[-1]), (experts * 2 * d_ff + d_ff + index).to(fused.device), None


@torch.no_grad()
def bake(model: torch.nn.Module, plan: Plan) -> BakedHandle:
    """Write ``plan`` into the weights of ``model`` (in place); return the way back.

    Refuses, before changing anything, plans restricted to prompt or
    generated positions, ``up_proj`` layers that carry a bias, and clamp/add
    edits of expert neurons.
    """
    merged = plan.merged()
    targets = [(*_up_rows(model, layer, edits), edits) for layer, edits in merged.items()]  # all checked first
    saved = []
    for weight, rows, down, edits in targets:
        saved.append((weight, rows, weight.index_select(0, rows).clone(), down, down.bias if down is not None else None))
        mult = torch.from_numpy(edits.mult).to(weight.device, torch.float32)
        weight.index_copy_(0, rows, (weight.index_select(0, rows).float() * mult[:, None]).to(weight.dtype))
        add = torch.from_numpy(edits.add)
        neurons = torch.from_numpy(edits.neurons).to(weight.device)
        if bool((add != 0).any()):
            columns = down.weight.index_select(1, neurons.to(down.weight.device)).float()  # [d_model, n]
            offset = columns @ add.to(columns.device)
            base = down.bias.float() if down.bias is not None else torch.zeros_like(offset)
            down.bias = torch.nn.Parameter((base + offset).to(down.weight.dtype), requires_grad=False)
    return BakedHandle(saved)


@torch.no_grad()
def prepare_for_save(model: torch.nn.Module) -> None:
    """Make a baked model's ``down_proj`` biases survive ``save_pretrained`` / ``from_pretrained``.

    Llama configs have ``mlp_bias``: turning it on (with zero gate/up biases
    added) makes the saved checkpoint load in stock transformers.  Other
    architectures have no such switch, so a baked clamp/add cannot be saved
    for them and this raises.
    """
    config = text_config(model)
    layers = range(config.num_hidden_layers)
    if model_arch(model).experts is not None:
        return  # expert neurons bake scale/ablate only (bake refuses clamp/add): no bias to save
    if not any(mlp_module(model, layer).down_proj.bias is not None for layer in layers):
        return
    if not hasattr(config, "mlp_bias"):
        raise SteerkitError(
            f"{model_arch(model).name}: transformers has no MLP bias for this architecture, so baked clamp/add edits "
            "cannot be saved; save scale/ablate-only profiles, or use hooks"
        )
    config.mlp_bias = True
    for layer in layers:
        mlp = mlp_module(model, layer)
        for proj in (mlp.gate_proj, mlp.up_proj, mlp.down_proj):
            if proj.bias is None:
                proj.bias = torch.nn.Parameter(torch.zeros(proj.out_features, dtype=proj.weight.dtype, device=proj.weight.device), requires_grad=False)
