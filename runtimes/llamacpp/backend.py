"""The llama.cpp backend: patched GGUF copies (cached) run with llama-cpp-python, prompt vectors on top.

A plan splits in two (:func:`~steerkit.runtimes.llamacpp.prompt_vector.split_plan`): its
all-position edits are patched into a copy of the GGUF (cached by model, plan and steerkit
version); its ``add`` edits limited to the prompt or the answer, or that stop once the answer
names a word, become control vectors set and cleared between evaluations on one KV cache.  One
answer at a time: llama.cpp cannot vary an edit within a batch, so per-row plans run one after
another.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import numpy as np

from steerkit.cache import cache_dir
from steerkit.errors import SteerkitError
from steerkit.plan import Plan
from steerkit.prompts import RawText
from steerkit.runtimes.base import Backend
from steerkit.runtimes.llamacpp.model import LlamaCppModel
from steerkit.runtimes.llamacpp.patch import write_patched
from steerkit.runtimes.llamacpp.prompt_vector import VectorSteering, split_plan
from steerkit.sampling import Sampling
from steerkit.sources import ModelSource
from steerkit.version import __version__
from steerkit.weights.gguf_reader import GGUFWeights

__all__ = ["LlamaCppBackend", "patched_copy"]

_CONTEXT = 2048  # tokens of prompt + answer a request may use
_SPLITS_KEPT = 64  # plans whose split (patched copy, prompt vector) is remembered


def plan_key(plan: Plan) -> str:
    """A digest of everything in ``plan`` that changes the weights or vectors."""
    text = repr([(g.positions, g.until, [(l.layer, l.neurons.tolist(), l.mult.tolist(), l.add.tolist()) for l in g.layers])
                 for g in plan.groups])
    return hashlib.sha256(text.encode()).hexdigest()


def patched_copy(weights: GGUFWeights, plan: Plan) -> Path:
    """A copy of ``weights``' file with ``plan`` (all positions only) patched in, cached by model, plan and version."""
    key = hashlib.sha256(f"{plan_key(plan)}|{__version__}".encode()).hexdigest()
    path = cache_dir("patched") / f"{weights.fingerprint()[:16]}-{key[:16]}.gguf"
    if not path.is_file():
        write_patched(weights, plan, path, list(plan.names), f"# compiled plan of: {', '.join(plan.names)}",
                      progress=False)
    return path


def _messages(prompt) -> list[dict] | RawText:
    if isinstance(prompt, RawText):
        return prompt
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


class LlamaCppBackend(Backend):
    """A GGUF run by llama.cpp on the CPU."""

    name: ClassVar[str] = "llama.cpp"

    def __init__(self, path: str | Path, label: str | None = None, max_loaded: int = 1) -> None:
        """``max_loaded``: patched copies kept loaded next to the plain model, least recently used
        dropped first (memory: one model file each)."""
        super().__init__()
        self.max_loaded = max(1, max_loaded)
        self.weights = GGUFWeights(Path(path), label)
        self.binding = self.weights.binding()
        self.label = label or str(path)
        self._plain = LlamaCppModel(self.weights.path, n_ctx=_CONTEXT, all_logits=False)
        self._scorer: LlamaCppModel | None = None  # all-position logits, for nll(); loaded on first use
        self._copies: OrderedDict[Path, LlamaCppModel] = OrderedDict()
        self._splits: OrderedDict[str, tuple[Path, VectorSteering]] = OrderedDict()

    @classmethod
    def accepts(cls, source: ModelSource, device: str) -> str | None:
        if source.kind != "gguf":
            return "needs a GGUF model"
        if device != "cpu":
            return "runs on the CPU only"
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            return "llama-cpp-python is not installed"
        return None

    @classmethod
    def load(cls, source: ModelSource, device: str = "cpu", dtype: str = "float32") -> LlamaCppBackend:
        reason = cls.accepts(source, device)
        if reason:
            raise SteerkitError(f"model {source.name}: the llama.cpp runtime {reason}")
        return cls(source.path, source.name)

    def _split(self, plan: Plan) -> tuple[Path, VectorSteering]:
        # check() and generate() both need it for every request: remembered per plan (the file is re-checked).
        key = plan_key(plan)
        if key in self._splits and self._splits[key][0].is_file():
            self._splits.move_to_end(key)
            return self._splits[key]
        everywhere, vectors = split_plan(self.weights, plan)
        path = self.weights.path if everywhere.is_empty else patched_copy(self.weights, everywhere)
        self._splits[key] = (path, vectors)
        while len(self._splits) > _SPLITS_KEPT:
            self._splits.popitem(last=False)
        return path, vectors

    def check(self, plan: Plan) -> None:
        """Refuses what neither the patched copy nor control vectors can carry (builds the copy, cached)."""
        self._split(plan)

    def _model(self, path: Path) -> LlamaCppModel:
        if path == self.weights.path:
            return self._plain
        if path not in self._copies:
            while len(self._copies) >= self.max_loaded:
                self._copies.popitem(last=False)
            self._copies[path] = LlamaCppModel(path, n_ctx=_CONTEXT, all_logits=False)
        self._copies.move_to_end(path)
        return self._copies[path]

    def _generate(self, prompts: list, plans: list[Plan | None], max_new_tokens: int, sampling: Sampling,
                  on_text: Callable[[str], None] | None) -> list[list[str]]:
        rows = []
        for plan in plans:
            path, vectors = self._split(plan) if plan is not None else (self.weights.path, VectorSteering())
            model = self._model(path)
            answers = []
            for prompt in prompts:
                pieces = []
                for piece in model.answer(_messages(prompt), vectors, max_new_tokens, sampling):
                    pieces.append(piece)
                    if on_text is not None and len(plans) == len(prompts) == 1:
                        on_text(piece)
                answers.append("".join(pieces))
            rows.append(answers)
        return rows

    def count_tokens(self, prompt, answer: str) -> tuple[int, int]:
        plain = self._plain
        answer_ids = plain.llm.tokenize(answer.encode("utf-8"), add_bos=False, special=False) if answer else []
        return len(plain.chat_prompt_tokens(_messages(prompt))), len(answer_ids)

    def nll(self, prompts: list, answers: list[str], first_token: bool = False) -> list[float]:
        if self._scorer is None:
            self._scorer = LlamaCppModel(self.weights.path, n_ctx=_CONTEXT)
        plain = self._scorer
        results = []
        for prompt, answer in zip(prompts, answers):
            prompt_ids = plain.chat_prompt_tokens(_messages(prompt))
            answer_ids = plain.llm.tokenize(answer.encode("utf-8"), add_bos=False, special=False)
            answer_ids += [plain.llm.token_eos()] * max(0, 2 - len(answer_ids))
            logits = plain.logits(prompt_ids + answer_ids)[len(prompt_ids) - 1:-1].astype(np.float64)
            shifted = logits - logits.max(axis=1, keepdims=True)
            log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
            # As in the transformers backend: the first answer token (the steering itself) counts only if asked.
            first = 0 if first_token else 1
            results.append(float(-log_probs[np.arange(first, len(answer_ids)), answer_ids[first:]].mean()))
        return results
