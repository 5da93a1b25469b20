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


def _expert_output(experts, e, x, edit_h):
    """Expert ``e``'s output for one token ``x``, its activations passed through ``edit_h`` first.  Mixtral-style
    experts: ``down_e @ (act(gate_e x) * up_e x)``; gpt-oss (fused, interleaved, biased):
    ``h_e(x) @ down_e + b_e`` with :func:`gpt_oss_activations`."""
    if hasattr(experts, "gate_up_proj_bias"):
        h = gpt_oss_activations(x, experts.gate_up_proj[e], experts.gate_up_proj_bias[e]).clone()
        return edit_h(h) @ experts.down_proj[e] + experts.down_proj_bias[e]
    d_ff = experts.down_proj.shape[-1]
    gate, up = experts.gate_up_proj[e, :d_ff], experts.gate_up_proj[e, d_ff:]
    return experts.down_proj[e] @ edit_h((experts.act_fn(gate @ x) * (up @ x)).clone())


@contextlib.contextmanager
def manual_expert_edit(model, edits, strength=1.0, token_mask=None):
    """Reference for mixture-of-experts layers: each edited layer's experts run as a plain loop over tokens
    and their routed experts, ``out[t] += w * expert_e(x)`` (:func:`_expert_output`), editing ``h`` of
    neuron ``(edit.expert, edit.neuron)`` inside its expert.  The model's own router still picks the
    experts and weights.  ``token_mask`` (optional, over the batch's tokens in row-major order) says
    which tokens are edited."""
    patched = []
    for layer in sorted({e.layer for e in edits}):
        experts = model.model.layers[layer].mlp.experts
        mine = [e for e in edits if e.layer == layer]

        def forward(x, top_k_index, top_k_weights, experts=experts, mine=mine):
            out = torch.zeros_like(x)
            for t in range(x.shape[0]):
                for k in range(top_k_index.shape[1]):
                    e = int(top_k_index[t, k])

                    def edit_h(h, e=e, t=t):
                        if token_mask is None or bool(token_mask[t]):
                            for edit in mine:
                                if edit.expert == e:
                                    h[edit.neuron] = edited(h[edit.neuron], edit, strength)
                        return h

                    out[t] += top_k_weights[t, k] * _expert_output(experts, e, x[t], edit_h)
            return out

        experts.forward = forward
        patched.append(experts)
    try:
        yield
    finally:
        for experts in patched:
            del experts.forward


def gpt_oss_activations(x, gate_up, bias, alpha=1.702, limit=7.0):
    """gpt-oss's expert activations for rows ``x``, written from its definition: gate and up interleaved in
    ``gate_up [d, 2*d_ff]`` (+ ``bias``), ``h = (clamp(up, -limit, limit) + 1) * g * sigmoid(alpha * g)`` with
    ``g = min(gate, limit)``."""
    out = x @ gate_up + bias
    gate, up = out[..., 0::2].clamp(max=limit), out[..., 1::2].clamp(-limit, limit)
    return (up + 1) * gate * torch.sigmoid(alpha * gate)


def llama_cpp_logits(path, ids):
    """Stock llama.cpp's logits for every position of ``ids`` (2 threads, one context at a time)."""
    import numpy as np
    from llama_cpp import Llama

    llm = Llama(str(path), n_ctx=64, logits_all=True, verbose=False, n_threads=2, n_batch=64)
    llm.eval(ids)
    scores = np.array(llm.scores[:len(ids)])
    llm.close()
    return scores


def patched_file_against_hooks(model, source, patched, plan, ids):
    """``(noise, error, moved)``: llama.cpp on the unpatched file against transformers, on the patched file
    against transformers with ``plan`` as hooks, and how far the hooks move the logits."""
    import numpy as np

    from steerkit.runtimes.hf.hooks import attach

    plain = logits(model, torch.tensor([ids]))[0].numpy()
    handle = attach(model, plan)
    steered = logits(model, torch.tensor([ids]))[0].numpy()
    handle.remove()
    noise = np.abs(llama_cpp_logits(source, ids) - plain).max()
    error = np.abs(llama_cpp_logits(patched, ids) - steered).max()
    return noise, error, np.abs(steered - plain).max()
