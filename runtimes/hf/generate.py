"""Text generation with a transformers model: chat template, greedy or seeded sampling, streaming."""

from __future__ import annotations

from collections.abc import Callable

import torch

from steerkit.prompts import RawText
from steerkit.sampling import GREEDY, Sampling

__all__ = ["build_inputs", "generate_text", "generate_kwargs", "text_streamer"]


def build_inputs(tokenizer, prompts: list, device: torch.device, chat: bool = True) -> dict[str, torch.Tensor]:
    """Tokenize prompts (chat template applied when the tokenizer has one), left-padded as a batch.

    A prompt is a user message, a chat history (a list of ``{"role", "content"}``), or
    :class:`~steerkit.prompts.RawText`, tokenized as it is.
    """
    if chat and getattr(tokenizer, "chat_template", None):
        texts = [
            str(p) if isinstance(p, RawText) else tokenizer.apply_chat_template(
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


class _AnswerRepetitionPenalty:
    """:func:`steerkit.sampling.penalize_repeats` as a transformers logits processor (answer tokens only)."""

    def __init__(self, penalty: float, prompt_length: int) -> None:
        self.penalty, self.prompt_length = penalty, prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        answer = input_ids[:, self.prompt_length:]
        if answer.shape[1] == 0:
            return scores
        seen = scores.gather(1, answer)
        return scores.scatter(1, answer, torch.where(seen > 0, seen / self.penalty, seen * self.penalty))


def generate_kwargs(tokenizer, sampling: Sampling, prompt_length: int, max_new_tokens: int) -> dict:
    """``model.generate`` arguments for ``sampling`` (seeds torch's generator when sampling)."""
    from transformers import LogitsProcessorList

    kwargs: dict = {"max_new_tokens": max_new_tokens, "pad_token_id": tokenizer.pad_token_id}
    if sampling.repetition_penalty != 1.0:
        kwargs["logits_processor"] = LogitsProcessorList([_AnswerRepetitionPenalty(sampling.repetition_penalty,
                                                                                   prompt_length)])
    if sampling.greedy:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        kwargs.update(do_sample=True, temperature=sampling.temperature, top_k=0, top_p=sampling.top_p)
    return kwargs


def text_streamer(tokenizer, on_text: Callable[[str], None]):
    """A transformers streamer that hands each finished piece of answer text to ``on_text``."""
    from transformers import TextStreamer

    class _Stream(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            on_text(text)

    return _Stream(tokenizer, skip_prompt=True, skip_special_tokens=True)


@torch.no_grad()
def generate_text(
    model,
    tokenizer,
    prompts: list,
    max_new_tokens: int = 60,
    sampling: Sampling = GREEDY,
    on_text: Callable[[str], None] | None = None,
    chat: bool = True,
) -> list[str]:
    """Answers to ``prompts`` under ``sampling``; ``on_text`` streams a single prompt's text."""
    inputs = build_inputs(tokenizer, prompts, model.device, chat)
    prompt_length = inputs["input_ids"].shape[1]
    kwargs = generate_kwargs(tokenizer, sampling, prompt_length, max_new_tokens)
    if on_text is not None and len(prompts) == 1:
        kwargs["streamer"] = text_streamer(tokenizer, on_text)
    output = model.generate(**inputs, **kwargs)
    return tokenizer.batch_decode(output[:, prompt_length:], skip_special_tokens=True)
