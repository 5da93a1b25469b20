"""The transformers backend: hooks on ``down_proj``, batched generation with one plan per row."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import numpy as np

from steerkit.errors import SteerkitError
from steerkit.plan import Plan
from steerkit.runtimes.base import Backend
from steerkit.runtimes.hf.generate import build_inputs
from steerkit.runtimes.hf.hooks import attach
from steerkit.runtimes.hf.loader import load_model
from steerkit.runtimes.hf.measure import activation_scale, answer_nll, answer_states, generate_rows, residual_norms
from steerkit.runtimes.hf.modules import model_binding
from steerkit.sampling import Sampling
from steerkit.sources import ModelSource

__all__ = ["HFBackend"]


class HFBackend(Backend):
    """A transformers model (CPU or CUDA).  Every edit and position is expressible: nothing is refused."""

    name: ClassVar[str] = "hf"
    batches_rows: ClassVar[bool] = True
    measures_activations: ClassVar[bool] = True
    casts_weights: ClassVar[bool] = True

    def __init__(self, model, tokenizer, label: str | None = None, progress: bool = False) -> None:
        super().__init__()
        self.model, self.tokenizer, self.progress = model, tokenizer, progress
        self.binding = model_binding(model, tokenizer)
        self._hooks = None
        self.label = label or getattr(model.config, "_name_or_path", "model")

    @classmethod
    def accepts(cls, source: ModelSource, device: str) -> str | None:
        # GGUFs are converted once (cached); folders load as they are.  The device is checked before anything loads.
        from steerkit.precision import check_device

        try:
            check_device(device)
        except SteerkitError as exc:
            return str(exc)
        return None

    @classmethod
    def load(cls, source: ModelSource, device: str = "cpu", dtype: str = "float32") -> HFBackend:
        model, tokenizer = load_model(source, dtype, device)
        return cls(model, tokenizer, source.name)

    def check(self, plan: Plan) -> None:
        return None

    def _steer(self, plan: Plan) -> Callable[[], None]:
        """Hooks stay on the model until ``remove()``: the user's own ``model.generate`` is steered too."""
        self._hooks = attach(self.model, plan, self.tokenizer)

        def take_off() -> None:
            self._hooks.remove()
            self._hooks = None

        return take_off

    def _generate(self, prompts: list, plans: list[Plan | None], max_new_tokens: int, sampling: Sampling,
                  on_text: Callable[[str], None] | None) -> list[list[str]]:
        context = getattr(self.model.config, "max_position_embeddings", None)
        if context:
            longest = build_inputs(self.tokenizer, prompts, "cpu")["input_ids"].shape[1]  # padded: the longest
            if longest + max_new_tokens > context:
                raise SteerkitError(f"prompt of {longest} tokens + {max_new_tokens} new tokens exceed the context of "
                                    f"{context} tokens")
        if self.applied is not None:  # the applied hooks are on the model already
            plans = [None]
        return generate_rows(self.model, self.tokenizer, prompts, plans, max_new_tokens, progress=self.progress,
                             sampling=sampling, on_text=on_text)

    def nll(self, prompts: list, answers: list[str], first_token: bool = False) -> list[float]:
        if self._hooks is None:
            return answer_nll(self.model, self.tokenizer, prompts, answers, first_token=first_token)
        self._hooks.remove()  # scored by the unsteered model, then steered again
        try:
            return answer_nll(self.model, self.tokenizer, prompts, answers, first_token=first_token)
        finally:
            self._hooks = attach(self.model, self.applied, self.tokenizer)

    def count_tokens(self, prompt, answer: str) -> tuple[int, int]:
        prompt_ids = build_inputs(self.tokenizer, [prompt], "cpu")["input_ids"][0]
        return len(prompt_ids), len(self.tokenizer(answer, add_special_tokens=False).input_ids)

    def activation_scale(self, text: str) -> np.ndarray:
        return activation_scale(self.model, self.tokenizer, text)

    def _unsteered_only(self, what: str) -> None:
        if self._hooks is not None:
            raise SteerkitError(f"{what} measures the unsteered model: remove the applied plan first")

    def residual_norms(self, text: str) -> np.ndarray:
        self._unsteered_only("residual_norms")
        return residual_norms(self.model, self.tokenizer, text)

    def answer_states(self, prompts: list, answers: list[str], layers: list[int]) -> np.ndarray:
        self._unsteered_only("answer_states")
        return answer_states(self.model, self.tokenizer, prompts, answers, layers)
