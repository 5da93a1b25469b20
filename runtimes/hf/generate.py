"""Text generation with a transformers model: chat template, greedy or seeded sampling, streaming."""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["build_inputs", "generate_text"]


def build_inputs(tokenizer, prompts: list, device: torch.device, chat: bool = True) -> dict[str, torch.Tensor]:
    """Tokenize prompts (chat template applied when the tokenizer has one), left-padded as a batch.

    A prompt is a user message, or a chat history (a list of ``{"role", "content"}``).
    """
    if chat and getattr(tokenizer, "chat_template", None):
        texts = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": p}] if isinstance(p, str) else p, tokenize=False, add_generation_prompt=True
            )
            for p in prompts
        ]
    else:
        texts = list(prompts)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not chat).to(device)


@torch.no_grad()
def generate_text(
    model,
    tokenizer,
    prompts: list,
    max_new_tokens: int = 60,
    temperature: float = 0.0,
    seed: int | None = None,
    on_text: Callable[[str], None] | None = None,
    chat: bool = True,
) -> list[str]:
    """Answers to ``prompts`` (greedy when ``temperature`` is 0); ``on_text`` streams a single prompt's text."""
    inputs = build_inputs(tokenizer, prompts, model.device, chat)
    kwargs = {"max_new_tokens": max_new_tokens, "pad_token_id": tokenizer.pad_token_id}
    if temperature > 0:
        if seed is not None:
            torch.manual_seed(seed)
        kwargs.update(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    if on_text is not None and len(prompts) == 1:
        from transformers import TextStreamer

        class _Stream(TextStreamer):
            def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
                on_text(text)

        kwargs["streamer"] = _Stream(tokenizer, skip_prompt=True, skip_special_tokens=True)
    output = model.generate(**inputs, **kwargs)
    new_tokens = output[:, inputs["input_ids"].shape[1]:]
    return tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
