"""Bake a plan into a transformers model's weights: zero runtime overhead.

Per the compilation table (docs/formats.md), neuron ``j``'s affine edit
``h*mult + add`` becomes: ``up_proj`` row ``j`` multiplied by ``mult`` (exact,
since ``h = act(gate.x) * (up.x)``) and ``add * W_down[:, j]`` added to a
``down_proj`` bias.  Baking applies at every position.  The handle restores
the saved rows and bias exactly.

In a mixture of experts (:class:`~steerkit.runtimes.hf.experts.ExpertLayout`),
neuron ``(e, i)`` is scaled where its activation is linear: Mixtral-style
experts scale its up row (row ``d_ff + i`` of ``experts.gate_up_proj[e]``);
gpt-oss, whose ``(clamp(up) + 1) * glu(gate)`` is not linear in the up row,
scales its down row (``experts.down_proj[e][i]``).  Clamp/add go into the
expert's ``down_proj_bias[e]``, which both transformers and llama.cpp add
before weighting by the router, so the constant reaches exactly the tokens
routed to the expert, as the hooks do; experts without a bias (Mixtral,
Qwen3-MoE) refuse clamp/add.
"""

from __future__ import annotations

import torch

from steerkit.runtimes.hf.experts import ExpertLayout
from steerkit.runtimes.hf.modules import mlp_module, model_arch, text_config
from steerkit.errors import SteerkitError, UnsupportedEdit
from steerkit.plan import LayerEdits, Plan

__all__ = ["BakedHandle", "bake", "prepare_for_save"]


class BakedHandle:
    """Weights changed by :func:`bake`; :meth:`remove` puts the originals back."""

    def __init__(self, rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                 biases: list[tuple[torch.nn.Module, torch.nn.Parameter | None]]) -> None:
        self._rows = rows  # (weight [rows, d], row indices, original rows)
        self._biases = biases  # (dense down_proj, its original bias)

    @torch.no_grad()
    def remove(self) -> None:
        """Restore every changed row and bias, bit for bit."""
        for weight, rows, values in reversed(self._rows):
            weight.index_copy_(0, rows, values)
        for down, bias in reversed(self._biases):
            down.bias = bias
        self._rows, self._biases = [], []


def _scaled_rows(model: torch.nn.Module, layer: int, edits: LayerEdits) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weight [rows, d], row indices)``: the rows whose scaling scales the edited neurons' ``h`` exactly (a
    view of the parameter, so writes land in the model).  Raises before anything changes if the layer cannot
    carry the plan."""
    mlp = mlp_module(model, layer)
    neurons = torch.from_numpy(edits.neurons)
    if model_arch(model).experts is None:
        if mlp.up_proj.bias is not None:
            raise SteerkitError(f"layer {layer}: up_proj has a bias; baking a scaled row would need it scaled too")
        return mlp.up_proj.weight, neurons.to(mlp.up_proj.weight.device)
    experts = mlp.experts
    layout = ExpertLayout(experts)
    if bool((edits.add != 0).any()) and not layout.has_bias:
        raise UnsupportedEdit(f"layer {layer}: clamp/add edits of expert neurons cannot be baked into weights (an "
                              "expert writes only for the tokens routed to it, and its MLP has no bias): use hooks, "
                              "or scale/ablate edits", "weights")
    if layout.transposed:  # gpt-oss: down_proj [E, d_ff, d], one row per flat neuron
        down = experts.down_proj.data
        return down.view(-1, down.shape[-1]), neurons.to(down.device)
    if not layout.concatenated or layout.has_bias:
        raise UnsupportedEdit(f"layer {layer}: {type(experts).__name__} keeps its experts in a layout steerkit cannot "
                              "bake (interleaved or biased up rows, untransposed down): use hooks", "weights")
    fused = experts.gate_up_proj.data  # [E, 2 * d_ff, d]
    index, expert = neurons % layout.d_ff, neurons // layout.d_ff
    return fused.view(-1, fused.shape[-1]), (expert * 2 * layout.d_ff + layout.d_ff + index).to(fused.device)


def _add_expert_bias(experts: torch.nn.Module, edits: LayerEdits, saved: list) -> None:
    """``add * W_down[e][:, i]`` into each edited expert's ``down_proj_bias[e]`` (the original rows saved first)."""
    layout = ExpertLayout(experts)
    neurons = torch.from_numpy(edits.neurons).to(experts.down_proj.device)
    add = torch.from_numpy(edits.add).to(experts.down_proj.device, torch.float32)
    owners = layout.split(neurons)[0]
    bias = experts.down_proj_bias.data  # [E, d]
    touched = torch.unique(owners[add != 0])
    saved.append((bias, touched, bias.index_select(0, touched).clone()))
    offsets = layout.down_vectors(experts.down_proj, neurons).float() * add[:, None]  # [n, d]
    total = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device).index_add_(0, owners, offsets)
    bias.index_copy_(0, touched, (bias.float() + total).index_select(0, touched).to(bias.dtype))


@torch.no_grad()
def bake(model: torch.nn.Module, plan: Plan) -> BakedHandle:
    """Write ``plan`` into the weights of ``model`` (in place); return the way back.

    Refuses, before changing anything, plans restricted to prompt or
    generated positions, ``up_proj`` layers that carry a bias, and clamp/add
    edits of expert neurons without an expert bias.
    """
    merged = plan.merged()
    targets = [(layer, *_scaled_rows(model, layer, edits), edits) for layer, edits in merged.items()]  # all checked
    rows_saved, biases_saved = [], []
    for layer, weight, rows, edits in targets:
        add = torch.from_numpy(edits.add)
        has_add = bool((add != 0).any())
        mlp = mlp_module(model, layer)
        experts = model_arch(model).experts is not None
        if has_add and experts:  # before the rows change: the offsets use the original down vectors
            _add_expert_bias(mlp.experts, edits, rows_saved)
        rows_saved.append((weight, rows, weight.index_select(0, rows).clone()))
        mult = torch.from_numpy(edits.mult).to(weight.device, torch.float32)
        weight.index_copy_(0, rows, (weight.index_select(0, rows).float() * mult[:, None]).to(weight.dtype))
        if has_add and not experts:
            down = mlp.down_proj
            neurons = torch.from_numpy(edits.neurons).to(down.weight.device)
            biases_saved.append((down, down.bias))
            columns = down.weight.index_select(1, neurons).float()  # [d_model, n]
            offset = columns @ add.to(columns.device)
            base = down.bias.float() if down.bias is not None else torch.zeros_like(offset)
            down.bias = torch.nn.Parameter((base + offset).to(down.weight.dtype), requires_grad=False)
    return BakedHandle(rows_saved, biases_saved)


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
        return  # experts save what bake changed: their rows, and the expert biases where they exist
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
