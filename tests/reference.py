"""Plain reference computations the runtimes are checked against."""

from __future__ import annotations

import contextlib

import torch


def edited(h, edit, strength=1.0):
    """What an edit does to a neuron's activation ``h``, written from the profile format's definition
    (clamp c: ``h = c``, scale s: ``h = s*h``, add a: ``h = h + a``, ablate: ``h = 0``; ``strength``
    multiplies clamp and add values, moves a scale ``s`` to ``1 + strength*(s - 1)``, an ablation to
    ``1 - strength``), not from the code under test."""
    if edit.op == "clamp":
        return torch.full_like(h, edit.value * strength)
    if edit.op == "add":
        return h + edit.value * strength
    if edit.op == "scale":
        return h * (1 + strength * (edit.value - 1))
    assert edit.op == "ablate", edit.op
    return h * (1 - strength)


def activations(x, gate, up):
    """A llama-family MLP's neuron activations ``h = silu(gate x) * up x`` for rows ``x``, from plain weight
    matrices ``[d_ff, d_model]`` (what ``down_proj`` then reads)."""
    return torch.nn.functional.silu(x @ gate.T) * (x @ up.T)


@contextlib.contextmanager
def manual_edit(model, edits, strength=1.0, mask_fn=None):
    """Reference: replace each edited MLP's forward with a hand-written one that edits h."""
    patched = []
    for layer in sorted({e.layer for e in edits}):
        mlp = model.model.layers[layer].mlp
        mine = [e for e in edits if e.layer == layer]

        def forward(x, mlp=mlp, mine=mine):
            h = mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)
            h = h.clone()
            for e in mine:
                new = edited(h[..., e.neuron], e, strength)
                if mask_fn is not None:
                    new = torch.where(mask_fn(h.shape[1]), new, h[..., e.neuron])
                h[..., e.neuron] = new
            return mlp.down_proj(h)

        mlp.forward = forward
        patched.append(mlp)
    try:
        yield
    finally:
        for mlp in patched:
            del mlp.forward


def logits(model, ids):
    """Logits of a plain forward pass, no gradients."""
    with torch.no_grad():
        return model(ids).logits


@contextlib.contextmanager
def manual_expert_edit(model, edits, strength=1.0, token_mask=None):
    """Reference for mixture-of-experts layers: each edited layer's experts run as a plain loop over tokens
    and their routed experts, ``out[t] += w * down_e @ edit(act(gate_e x) * up_e x)``, editing ``h`` of
    neuron ``(edit.expert, edit.neuron)`` inside its expert.  The model's own router still picks the
    experts and weights.  ``token_mask`` (optional, over the batch's tokens in row-major order) says
    which tokens are edited."""
    patched = []
    for layer in sorted({e.layer for e in edits}):
        experts = model.model.layers[layer].mlp.experts
        mine = [e for e in edits if e.layer == layer]

        def forward(x, top_k_index, top_k_weights, experts=experts, mine=mine):
            d_ff = experts.down_proj.shape[-1]
            out = torch.zeros_like(x)
            for t in range(x.shape[0]):
                for k in range(top_k_index.shape[1]):
                    e = int(top_k_index[t, k])
                    gate, up = experts.gate_up_proj[e, :d_ff], experts.gate_up_proj[e, d_ff:]
                    h = (experts.act_fn(gate @ x[t]) * (up @ x[t])).clone()
                    if token_mask is None or bool(token_mask[t]):
                        for edit in mine:
                            if edit.expert == e:
                                h[edit.neuron] = edited(h[edit.neuron], edit, strength)
                    out[t] += top_k_weights[t, k] * (experts.down_proj[e] @ h)
            return out

        experts.forward = forward
        patched.append(experts)
    try:
        yield
    finally:
        for experts in patched:
            del experts.forward
