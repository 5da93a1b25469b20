"""Which token positions the forward pass under way covers: prompt or generated.

A pre-hook on the whole model reads how many tokens the KV cache already
holds and how many this call adds.  A call that starts on an empty cache is
a new prompt, and its length becomes the prompt length (with left padding,
the padded length: positions are shared by the whole batch).  Later calls
during incremental decoding are generated positions.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["PositionTracker"]


class PositionTracker:
    """Tracks absolute token positions of the current forward pass."""

    def __init__(self) -> None:
        self.prompt_length: int | None = None
        self.fixed_prompt_length: int | None = None  # set by the caller to score a whole text at once
        self.start = 0
        self.length = 0
        self._masks: dict[tuple[str, torch.device], torch.Tensor] = {}

    def before_forward(self, module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        """Model pre-hook (``with_kwargs=True``): record this call's positions."""
        tokens = kwargs.get("input_ids", args[0] if args else None)
        if tokens is None:
            tokens = kwargs.get("inputs_embeds")
        if tokens is None:
            return
        # transformers 5 passes the KV cache as ``cache``; 4.x as ``past_key_values``.
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        past = int(cache.get_seq_length()) if cache is not None and hasattr(cache, "get_seq_length") else 0
        self.start, self.length = past, int(tokens.shape[1])
        if past == 0:
            self.prompt_length = self.fixed_prompt_length if self.fixed_prompt_length is not None else self.length
        self._masks.clear()

    def mask(self, positions: str, device: torch.device) -> torch.Tensor:
        """Boolean ``[seq]`` mask of the current call's positions that ``positions`` covers."""
        key = (positions, device)
        if key not in self._masks:
            absolute = torch.arange(self.start, self.start + self.length, device=device)
            prompt_length = self.prompt_length if self.prompt_length is not None else self.start + self.length
            in_prompt = absolute < prompt_length
            self._masks[key] = in_prompt if positions == "prompt" else ~in_prompt
        return self._masks[key]
