"""Bake a plan into a transformers model's weights: zero runtime overhead.

Per the compilation table (docs/formats.md), neuron ``j``'s affine edit
``h*mult + add`` becomes: ``up_proj`` row ``j`` multiplied by ``mult`` (exact,
since ``h = act(gate.x) * (up.x)``) and ``add * W_down[:, j]`` added to a
``down_proj`` bias.  Baking applies at every position.  The handle restores
the saved rows and bias exactly.
"""

from __future__ import annotations

import torch

from steerkit.runtimes.hf.modules import mlp_module, model_arch, text_config
from steerkit.errors import SteerkitError
from steerkit.plan import Plan

__all__ = ["BakedHandle", "bake", "prepare_for_save"]


class BakedHandle:
    """Weights changed by :func:`bake`; :meth:`remove` puts the originals back."""

    def __init__(self, saved: list[tuple[torch.nn.Module, torch.Tensor, torch.Tensor, torch.nn.Module, object]]) -> None:
        self._saved = saved

    @torch.no_grad()
    def remove(self) -> None:
        """Restore every changed row and bias, bit for bit."""
        for up, neurons, rows, down, bias in reversed(self._saved):
            up.weight.index_copy_(0, neurons.to(up.weight.device), rows)
            down.bias = bias
        self._saved = []


@torch.no_grad()
def bake(model: torch.nn.Module, plan: Plan) -> BakedHandle:
    """Write ``plan`` into the weights of ``model`` (in place); return the way back.

    Refuses, before changing anything, plans restricted to prompt or
    generated positions, and ``up_proj`` layers that carry a bias.
    """
    merged = plan.merged()
    targets = []
    for layer, edits in merged.items():
        mlp = mlp_module(model, layer)
        if mlp.up_proj.bias is not None:
            raise SteerkitError(f"layer {layer}: up_proj has a bias; baking a scaled row would need it scaled too")
        targets.append((mlp.up_proj, mlp.down_proj, edits))
    saved = []
    for up, down, edits in targets:
        weight = up.weight
        neurons = torch.from_numpy(edits.neurons).to(weight.device)
        saved.append((up, neurons, weight.index_select(0, neurons).clone(), down, down.bias))
        mult = torch.from_numpy(edits.mult).to(weight.device, torch.float32)
        weight.index_copy_(0, neurons, (weight.index_select(0, neurons).float() * mult[:, None]).to(weight.dtype))
        add = torch.from_numpy(edits.add)
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
