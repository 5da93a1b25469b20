"""How answers are decoded: greedy for tests and measurements, seeded sampling for chat.

Chat apps sample with a temperature, a nucleus (top-p) cut and a repetition
penalty; without the penalty even greedy decoding of a small model loops
("I'm a creature of the night." twenty times).  Both backends apply the same
rules, so a seeded answer is reproducible within a backend.

The repetition penalty acts on the tokens of the answer so far (not the
prompt): a logit ``z`` of a token already in the answer becomes ``z/p`` if
positive, ``z*p`` if negative (the CTRL rule that transformers and llama.cpp
use).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from steerkit.errors import SteerkitError

__all__ = ["Sampling", "GREEDY", "CHAT", "check_max_tokens", "penalize_repeats", "next_token"]

MAX_NEW_TOKENS = 4096


@dataclass(frozen=True)
class Sampling:
    """Decoding settings; ``temperature == 0`` is greedy (and ignores the rest but the penalty)."""

    temperature: float = 0.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        checks = (("temperature", self.temperature, 0.0, 100.0), ("top_p", self.top_p, 1e-6, 1.0),
                  ("repetition_penalty", self.repetition_penalty, 1.0, 100.0))
        for name, value, low, high in checks:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or not low <= value <= high:
                raise SteerkitError(f"{name} must be a number in [{low:g}, {high:g}], got {value!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not 0 <= self.seed < 2 ** 32):
            raise SteerkitError(f"seed must be an integer in [0, 2^32), got {self.seed!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


GREEDY = Sampling()
# What chat-facing commands use by default (measured on SmolLM2-135M: no loops over 200 tokens).
CHAT = Sampling(temperature=0.7, top_p=0.9, repetition_penalty=1.2, seed=0)


def check_max_tokens(max_new_tokens: int) -> int:
    """Refuse a token budget outside ``1..4096`` in one line."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) \
            or not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise SteerkitError(f"max tokens must be an integer in 1..{MAX_NEW_TOKENS}, got {max_new_tokens!r}")
    return max_new_tokens


def penalize_repeats(logits: np.ndarray, answer: list[int], penalty: float) -> np.ndarray:
    """``logits`` with the tokens already in ``answer`` penalized (see the module doc)."""
    if penalty == 1.0 or not answer:
        return logits
    logits = logits.copy()
    seen = np.unique(np.asarray(answer, dtype=np.int64))
    values = logits[seen]
    logits[seen] = np.where(values > 0, values / penalty, values * penalty)
    return logits


def next_token(logits: np.ndarray, answer: list[int], sampling: Sampling, rng: np.random.Generator) -> int:
    """The next token from ``logits`` ``[vocab]`` under ``sampling`` (NumPy; the llama.cpp backend's sampler)."""
    logits = penalize_repeats(np.asarray(logits, dtype=np.float64), answer, sampling.repetition_penalty)
    if sampling.greedy:
        return int(np.argmax(logits))
    scaled = (logits - logits.max()) / sampling.temperature
    probs = np.exp(scaled)
    probs /= probs.sum()
    if sampling.top_p >= 1.0:
        return int(rng.choice(len(probs), p=probs))
    # The smallest set of most likely tokens reaching top_p. Usually a few hundred tokens hold it, so
    # sort those first (argpartition is linear) and sort the whole vocabulary only when they do not.
    for size in (min(256, len(probs)), len(probs)):
        head = np.argpartition(-probs, size - 1)[:size] if size < len(probs) else np.arange(len(probs))
        head = head[np.argsort(-probs[head], kind="stable")]
        cumulative = np.cumsum(probs[head])
        if cumulative[-1] >= sampling.top_p or size == len(probs):
            break
    keep = head[: int(np.searchsorted(cumulative, sampling.top_p)) + 1]
    kept = probs[keep]
    return int(keep[rng.choice(len(keep), p=kept / kept.sum())])
