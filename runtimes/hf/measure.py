"""Measurements on a transformers model that discovery and evaluation need.

- :func:`activation_scale`: how large each neuron's activation ``h`` gets on a text;
- :func:`generate_rows`: answers with a different plan on every batch row;
- :func:`answer_nll`: how surprising answers are to the (unsteered) model.
"""

from __future__ import annotations

import numpy as np
import torch

from steerkit.plan import Plan
from steerkit.runtimes.hf.generate import build_inputs, generate_kwargs, text_streamer
from steerkit.runtimes.hf.hooks import attach_rows
from steerkit.runtimes.hf.modules import mlp_module
from steerkit.sampling import GREEDY, Sampling

__all__ = ["activation_scale", "generate_rows", "answer_nll"]


@torch.no_grad()
def activation_scale(model, tokenizer, text: str) -> np.ndarray:
    """Per-neuron ``max |h|`` over the tokens of ``text``: ``[n_layers, d_ff]``.

    One forward pass with a pre-hook on every ``down_proj`` (whose input is ``h``).
    """
    n_layers = model.config.num_hidden_layers
    peaks: list[torch.Tensor | None] = [None] * n_layers

    def recorder(layer: int):
        def hook(module, args):
            peaks[layer] = args[0].detach().abs().flatten(0, -2).amax(dim=0).float().cpu()
        return hook

    handles = [mlp_module(model, layer).down_proj.register_forward_pre_hook(recorder(layer)) for layer in range(n_layers)]
    try:
        ids = tokenizer(text, return_tensors="pt").input_ids.to(model.device)
        model(ids)
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack(peaks).numpy()


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
        handle = attach_rows(model, [plans[k] or empty for _, k in chunk])
        try:
            output = model.generate(**inputs, **kwargs)
        finally:
            handle.remove()
        texts += tokenizer.batch_decode(output[:, prompt_length:], skip_special_tokens=True)
    return [texts[k * len(prompts):(k + 1) * len(prompts)] for k in range(len(plans))]


@torch.no_grad()
def answer_nll(model, tokenizer, prompts: list[str], answers: list[str], batch_size: int = 32) -> list[float]:
    """Mean negative log-likelihood (nats/token) of each answer given its chat prompt, under ``model`` as it is.

    The answer's first token is not counted: for a steered answer it is the
    steering itself ("Dogs ..."), and over short answers its surprise would
    swamp what the figure is for -- whether the rest reads as language.
    """
    results: list[float] = []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for start in range(0, len(prompts), batch_size):
        prompt_inputs = build_inputs(tokenizer, prompts[start:start + batch_size], model.device)
        answer_ids = [tokenizer(a, add_special_tokens=False).input_ids for a in answers[start:start + batch_size]]
        answer_ids = [a if len(a) >= 2 else a + [tokenizer.eos_token_id] * (2 - len(a)) for a in answer_ids]
        width = max(len(a) for a in answer_ids)
        answer = torch.tensor([a + [pad] * (width - len(a)) for a in answer_ids], device=model.device)
        answer_mask = torch.tensor([[0] + [1] * (len(a) - 1) + [0] * (width - len(a)) for a in answer_ids],
                                   device=model.device)
        ids = torch.cat([prompt_inputs["input_ids"], answer], dim=1)
        mask = torch.cat([prompt_inputs["attention_mask"], answer_mask], dim=1)
        start_logit = prompt_inputs["input_ids"].shape[1] - 1
        logits = model(input_ids=ids, attention_mask=mask).logits[:, start_logit:-1].float()
        token_nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), answer, reduction="none")
        results += ((token_nll * answer_mask).sum(1) / answer_mask.sum(1)).tolist()
    return results
