"""Which token positions the forward pass under way covers: prompt or generated, and still steered or not.

A pre-hook on the whole model reads how many tokens the KV cache already
holds and how many this call adds.  A call that starts on an empty cache is
a new prompt, and its length becomes the prompt length (with left padding,
the padded length: positions are shared by the whole batch).  Later calls
during incremental decoding are generated positions.

Edit groups with ``until`` (stop once the answer has named a word) need the
answer's text: the same pre-hook sees every generated token as it is fed
back in, keeps each batch row's answer and decodes it with the tokenizer.
The position that completes a mention and every one after it are left
unsteered, in that row only; the prompt is never checked.
"""

from __future__ import annotations

from typing import Any

import torch

from steerkit.concept import named_so_far
from steerkit.errors import SteerkitError

__all__ = ["PositionTracker"]


class PositionTracker:
    """Tracks absolute token positions of the current forward pass (and, for ``until`` words, each row's answer)."""

    def __init__(self, tokenizer: Any = None, words: tuple[str, ...] = ()) -> None:
        self.prompt_length: int | None = None
        self.fixed_prompt_length: int | None = None  # set by the caller to score a whole text at once
        self.start = 0
        self.length = 0
        self._masks: dict[tuple[str, str | None, torch.device], torch.Tensor] = {}
        self.tokenizer = tokenizer
        self.words = words
        self._answers: list[list[int]] = []  # per batch row: the answer's tokens so far
        self._named: dict[str, list[bool]] = {}  # per word, per row: has the answer named it yet
        self._steering: dict[str, torch.Tensor] = {}  # per word: [batch, seq] positions of this call still steered

    def before_forward(self, module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        """Model pre-hook (``with_kwargs=True``): record this call's positions."""
        ids = kwargs.get("input_ids", args[0] if args else None)
        tokens = ids if ids is not None else kwargs.get("inputs_embeds")
        if tokens is None:
            return
        # transformers 5 passes the KV cache as ``cache``; 4.x as ``past_key_values``.
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        past = int(cache.get_seq_length()) if cache is not None and hasattr(cache, "get_seq_length") else 0
        self.start, self.length = past, int(tokens.shape[1])
        if past == 0:
            self.prompt_length = self.fixed_prompt_length if self.fixed_prompt_length is not None else self.length
        self._masks.clear()
        if self.words:
            self._follow_answers(ids, past == 0, int(tokens.shape[0]))

    def _follow_answers(self, ids: torch.Tensor | None, new_prompt: bool, batch: int) -> None:
        if ids is None:
            raise SteerkitError("edits with 'until' need token ids (not inputs_embeds) to read the answer")
        if new_prompt or len(self._answers) != batch:
            self._answers = [[] for _ in range(batch)]
            self._named = {word: [False] * batch for word in self.words}
        first_answer = max(0, self.prompt_length - self.start)  # offset in this call of the first answer token
        rows = ids.tolist()
        steering = {word: torch.ones(batch, self.length, dtype=torch.bool) for word in self.words}
        for b, row in enumerate(rows):
            answer = self._answers[b]
            for s in range(first_answer, self.length):
                answer.append(row[s])
                pending = [w for w in self.words if not self._named[w][b]]
                text = self.tokenizer.decode(answer, skip_special_tokens=True) if pending else ""
                for word in pending:
                    self._named[word][b] = named_so_far(word, text)
                for word in self.words:
                    if self._named[word][b]:
                        steering[word][b, s] = False
        self._steering = steering

    def mask(self, positions: str, device: torch.device, until: str | None = None) -> torch.Tensor:
        """Boolean mask of the current call's positions that ``positions`` covers: ``[seq]``, or ``[batch, seq]``
        with ``until`` (a row stops at the position that names the word)."""
        key = (positions, until, device)
        if key not in self._masks:
            absolute = torch.arange(self.start, self.start + self.length, device=device)
            prompt_length = self.prompt_length if self.prompt_length is not None else self.start + self.length
            in_prompt = absolute < prompt_length
            mask = torch.ones_like(in_prompt) if positions == "all" else in_prompt if positions == "prompt" \
                else ~in_prompt
            if until is not None:
                mask = mask & self._steering[until].to(device)
            self._masks[key] = mask
        return self._masks[key]
