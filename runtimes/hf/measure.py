"""Measurements on a transformers model that discovery and evaluation need.

- :func:`activation_scale`: how large each neuron's activation ``h`` gets on a text;
- :func:`residual_norms`: how large the residual stream is after each layer;
- :func:`generate_rows`: answers with a different plan on every batch row;
- :func:`answer_nll`: how surprising answers are to the (unsteered) model;
- :func:`answer_states`: the mean residual stream over answers' tokens (mean-difference vectors).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
from collections.abc import Iterator

import numpy as np
import torch

from steerkit.plan import Plan
from steerkit.runtimes.hf.generate import build_inputs, generate_kwargs, text_streamer
from steerkit.runtimes.hf.hooks import attach_rows
from steerkit.runtimes.hf.experts import ExpertLayout, expert_activations, routing_args
from steerkit.runtimes.hf.modules import decoder_layer, mlp_module, model_arch
from steerkit.sampling import GREEDY, Sampling

__all__ = ["activation_scale", "generate_rows", "answer_nll", "answer_states", "residual_norms"]


@torch.no_grad()
def activation_scale(model, tokenizer, text: str) -> np.ndarray:
    """Per-neuron ``max |h|`` over the tokens of ``text``: ``[n_layers, neurons]``.

    One forward pass with a pre-hook on every ``down_proj`` (whose input is ``h``).  In a mixture of
    experts, a hook on each layer's experts computes every neuron's ``h`` and keeps the tokens routed
    to its expert (a neuron never routed to peaks at 0).
    """
    n_layers = model.config.num_hidden_layers
    peaks: list[torch.Tensor | None] = [None] * n_layers

    def recorder(layer: int):
        def hook(module, args):
            peaks[layer] = args[0].detach().abs().flatten(0, -2).amax(dim=0).float().cpu()
        return hook

    def expert_recorder(layer: int):
        def hook(module, args, output):
            x, top_k_index, _ = routing_args(args, {})
            layout = ExpertLayout(module)
            n_experts, d_ff = layout.n_experts, layout.d_ff
            h = expert_activations(module, x, torch.arange(n_experts * d_ff, device=x.device))  # [T, E * d_ff]
            routed = torch.zeros(x.shape[0], n_experts, dtype=torch.bool, device=x.device)
            routed.scatter_(1, top_k_index, True)
            h = h.abs() * routed.repeat_interleave(d_ff, dim=1)
            peaks[layer] = h.amax(dim=0).float().cpu()
        return hook

    if model_arch(model).experts is not None:
        handles = [mlp_module(model, layer).experts.register_forward_hook(expert_recorder(layer))
                   for layer in range(n_layers)]
    else:
        handles = [mlp_module(model, layer).down_proj.register_forward_pre_hook(recorder(layer))
                   for layer in range(n_layers)]
    try:
        ids = tokenizer(text, return_tensors="pt").input_ids.to(model.device)
        model(ids)
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack(peaks).numpy()


@contextlib.contextmanager
def layer_outputs(model, layers: list[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Record the residual stream after each of ``layers`` (the decoder layers' outputs) during forward passes.

    Hooks rather than ``output_hidden_states``: transformers' last hidden state is taken after the final norm.
    """
    outputs: dict[int, torch.Tensor] = {}

    def recorder(layer: int):
        def hook(module, args, output):
            outputs[layer] = (output[0] if isinstance(output, tuple) else output).detach()
        return hook

    handles = [decoder_layer(model, layer).register_forward_hook(recorder(layer)) for layer in layers]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def residual_norms(model, tokenizer, text: str) -> np.ndarray:
    """Median token norm of the residual stream after each layer over ``text`` (its first token left out:
    an attention sink with an outsized norm), ``[n_layers]``: what edits that add to the residual stream
    are sized against."""
    layers = list(range(model.config.num_hidden_layers))
    ids = tokenizer(text, return_tensors="pt").input_ids.to(model.device)
    with layer_outputs(model, layers) as outputs:
        model(ids)
    return np.array([float(outputs[layer][0, 1:].float().norm(dim=-1).median()) for layer in layers])


@torch.no_grad()
def generate_rows(model, tokenizer, prompts: list, plans: list[Plan | None], max_new_tokens: int,
                  batch_size: int = 48, progress: bool = False, sampling: Sampling = GREEDY,
                  on_text=None) -> list[list[str]]:
    """Answers of every prompt under every plan: ``answers[plan][prompt]``.

    All (plan, prompt) pairs are generated in batches with per-row hooks, so a
    whole strength sweep costs a few batched generations instead of one per
    answer.  ``None`` means unsteered.  ``on_text`` streams the text of a
    single answer.
    """
    rows = [(p, plan) for plan in range(len(plans)) for p in range(len(prompts))]
    batch_size = -(-len(rows) // -(-len(rows) // batch_size))  # equal batches, none larger than asked
    texts: list[str] = []
    empty = Plan((), ())
    starts = range(0, len(rows), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc=f"generating {len(rows)} answers", unit="batch", leave=False)
    for start in starts:
        chunk = rows[start:start + batch_size]
        inputs = build_inputs(tokenizer, [prompts[p] for p, _ in chunk], model.device)
        prompt_length = inputs["input_ids"].shape[1]
        kwargs = generate_kwargs(tokenizer, sampling, prompt_length, max_new_tokens)
        if on_text is not None and len(rows) == 1:
            kwargs["streamer"] = text_streamer(tokenizer, on_text)
        handle = attach_rows(model, [plans[k] or empty for _, k in chunk], tokenizer)
        try:
            output = model.generate(**inputs, **kwargs)
        finally:
            handle.remove()
        texts += tokenizer.batch_decode(output[:, prompt_length:], skip_special_tokens=True)
    return [texts[k * len(prompts):(k + 1) * len(prompts)] for k in range(len(plans))]


def _padded_answers(tokenizer, answers: list[str], device, first_token: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Answers as token ids, right-padded, and the mask of the tokens that count (the first only if
    ``first_token``).  Answers shorter than two tokens get EOS appended, so every answer has a counted token."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    answer_ids = [tokenizer(a, add_special_tokens=False).input_ids for a in answers]
    answer_ids = [a if len(a) >= 2 else a + [tokenizer.eos_token_id] * (2 - len(a)) for a in answer_ids]
    width = max(len(a) for a in answer_ids)
    answer = torch.tensor([a + [pad] * (width - len(a)) for a in answer_ids], device=device)
    counted = torch.tensor([[int(first_token)] + [1] * (len(a) - 1) + [0] * (width - len(a)) for a in answer_ids],
                           device=device)
    return answer, counted


def _answer_batch(tokenizer, prompts: list, answers: list[str], device):
    """Chat prompts (left-padded) followed by their answers (right-padded): ids, attention mask,
    prompt length and the mask of the answers' tokens."""
    prompt_inputs = build_inputs(tokenizer, prompts, device)
    answer, answer_mask = _padded_answers(tokenizer, answers, device, first_token=True)
    ids = torch.cat([prompt_inputs["input_ids"], answer], dim=1)
    mask = torch.cat([prompt_inputs["attention_mask"], torch.ones_like(answer_mask)], dim=1)
    return ids, mask, prompt_inputs["input_ids"].shape[1], answer_mask


@torch.no_grad()
def answer_states(model, tokenizer, prompts: list, answers: list[str], layers: list[int],
                  batch_size: int = 32) -> np.ndarray:
    """The residual stream after each of ``layers``, averaged over every token of every answer: ``[len(layers), d]``.

    Each answer is read after its chat prompt, as the model would have written it.
    """
    total = None
    count = 0
    for start in range(0, len(prompts), batch_size):
        ids, mask, prompt_length, answer_mask = _answer_batch(
            tokenizer, prompts[start:start + batch_size], answers[start:start + batch_size], model.device)
        with layer_outputs(model, layers) as states:
            model(input_ids=ids, attention_mask=mask)
        weight = answer_mask.unsqueeze(-1).float()
        sums = torch.stack([(states[layer][:, prompt_length:].float() * weight).sum(dim=(0, 1)) for layer in layers])
        total = sums if total is None else total + sums
        count += int(answer_mask.sum())
    return (total / max(count, 1)).cpu().numpy()


def _cache_argument(model) -> str:
    """The keyword a model's forward takes its KV cache by (``cache`` from transformers 5.2x on)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@torch.no_grad()
def answer_nll(model, tokenizer, prompts: list, answers: list[str], batch_size: int = 32,
               first_token: bool = False) -> list[float]:
    """Mean negative log-likelihood (nats/token) of each answer given its chat prompt, under ``model`` as it is.

    Unless ``first_token``, the answer's first token is not counted: for a
    steered answer it is the steering itself ("Dogs ..."), and over short
    answers its surprise would swamp what discovery's budget asks -- whether
    the rest reads as language.

    Answers to the same prompt share one pass over it (its KV cache is
    copied to each batch of answers): scoring a sweep reads each answer
    against several prompts, and the chat prompt is longer than the answer.
    """
    results = [0.0] * len(prompts)
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, prompt in enumerate(prompts):
        ids = build_inputs(tokenizer, [prompt], "cpu")["input_ids"][0]
        groups.setdefault(tuple(ids.tolist()), []).append(index)
    cache_argument = _cache_argument(model)
    for prompt_ids, indices in groups.items():
        prompt = torch.tensor([prompt_ids], device=model.device)
        out = model(input_ids=prompt, use_cache=True)
        prompt_cache = out["cache"] if "cache" in out else out["past_key_values"]
        last = out.logits[:, -1:].float()  # predicts each answer's first token
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            answer, scored = _padded_answers(tokenizer, [answers[i] for i in chunk], model.device, first_token)
            cache = copy.deepcopy(prompt_cache)
            cache.batch_repeat_interleave(len(chunk))
            # Right padding needs no mask: a scored position never looks at the padding after it.
            logits = model(input_ids=answer[:, :-1], use_cache=True, **{cache_argument: cache}).logits.float()
            logits = torch.cat([last.expand(len(chunk), -1, -1), logits], dim=1)
            token_nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), answer, reduction="none")
            for i, value in zip(chunk, ((token_nll * scored).sum(1) / scored.sum(1)).tolist()):
                results[i] = value
    return results
