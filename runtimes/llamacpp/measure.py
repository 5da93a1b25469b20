"""Discovery/evaluation measurements through llama.cpp (:class:`runtimes.base.Evaluator`).

One answer at a time (llama.cpp has no per-row edits), so it is slower than
the batched transformers evaluator for sweeps; it exists to check that a
profile has the same effect in llama.cpp as in transformers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runtimes.llamacpp import LlamaCppRuntime
from runtimes.llamacpp.model import LlamaCppModel
from runtimes.llamacpp.prompt_vector import split_plan
from steerkit.plan import Plan
from steerkit.weights.gguf_reader import GGUFWeights

__all__ = ["LlamaCppEvaluator"]


class LlamaCppEvaluator:
    """Greedy answers and answer NLLs from a GGUF run by llama.cpp."""

    def __init__(self, path: str | Path) -> None:
        self.weights = GGUFWeights(Path(path))
        self.binding = self.weights.binding()
        self._plain = LlamaCppModel(self.weights.path)

    def generate(self, prompts: list[str], plans: list[Plan | None], max_new_tokens: int) -> list[list[str]]:
        rows = []
        for plan in plans:
            if plan is None or plan.is_empty:
                model, directions = self._plain, {}
            else:
                everywhere, directions = split_plan(self.weights, plan)
                model = (LlamaCppModel(LlamaCppRuntime().attach(self.weights.path, everywhere).path)
                         if not everywhere.is_empty else self._plain)
            rows.append([self._answer(model, prompt, directions, max_new_tokens) for prompt in prompts])
        return rows

    @staticmethod
    def _answer(model: LlamaCppModel, prompt: str, directions: dict, max_new_tokens: int) -> str:
        messages = [{"role": "user", "content": prompt}]
        if directions:
            return "".join(model.prompt_steered_chat(messages, directions, max_new_tokens))
        return model.chat(messages, max_new_tokens)

    def nll(self, prompts: list[str], answers: list[str]) -> list[float]:
        results = []
        for prompt, answer in zip(prompts, answers):
            prompt_ids = self._plain.chat_prompt_tokens([{"role": "user", "content": prompt}])
            answer_ids = self._plain.llm.tokenize(answer.encode("utf-8"), add_bos=False, special=False)
            answer_ids += [self._plain.llm.token_eos()] * max(0, 2 - len(answer_ids))
            logits = self._plain.logits(prompt_ids + answer_ids)[len(prompt_ids) - 1:-1].astype(np.float64)
            shifted = logits - logits.max(axis=1, keepdims=True)
            log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
            # As in the transformers evaluator: the first answer token (the steering itself) is not counted.
            results.append(float(-log_probs[np.arange(1, len(answer_ids)), answer_ids[1:]].mean()))
        return results
