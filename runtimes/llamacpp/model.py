"""Running a (patched) GGUF through llama-cpp-python: logits for parity checks, and chat generation."""

from __future__ import annotations

import contextlib
import os
import weakref
from pathlib import Path

import numpy as np

from steerkit.concept import named_so_far
from steerkit.errors import SteerkitError
from steerkit.prompts import RawText
from steerkit.runtimes.llamacpp.prompt_vector import VectorSteering
from steerkit.sampling import GREEDY, Sampling, next_token

__all__ = ["LlamaCppModel"]


class LlamaCppModel:
    """A GGUF loaded in llama.cpp (CPU).

    ``all_logits`` keeps the logits of every position (scoring, parity checks); without it only the
    last position's are computed, which is what generation needs and saves the LM head over the
    prompt (about 10 % of a short request).
    """

    def __init__(self, path: str | Path, n_ctx: int = 1024, n_threads: int | None = None,
                 all_logits: bool = True) -> None:
        try:
            import llama_cpp
        except ImportError as exc:
            raise SteerkitError("the llama.cpp runtime needs llama-cpp-python (pip install llama-cpp-python)") from exc
        self.path = Path(path)
        self.all_logits = all_logits
        # llama.cpp prints its load log on stderr from C; keep the terminal clean.
        with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
            try:
                self.llm = llama_cpp.Llama(str(self.path), n_ctx=n_ctx, logits_all=all_logits, verbose=False,
                                           n_threads=n_threads or os.cpu_count())
            except ValueError as exc:
                raise SteerkitError(f"{self.path}: llama.cpp cannot load this file ({exc})") from exc
        # Free the model when this object goes, or at interpreter exit while llama_cpp still exists
        # (its own __del__ fails during module teardown).
        weakref.finalize(self, self.llm.close)

    def set_control_vector(self, directions: dict[int, np.ndarray] | None) -> None:
        """Add ``directions[N]`` to the output of layer ``N`` (llama.cpp's control vector); ``None`` clears it.

        The KV cache is dropped: what it holds was computed without the new vector.
        """
        self._apply_control_vector(directions)
        self.llm.reset()

    def _apply_control_vector(self, directions: dict[int, np.ndarray] | None) -> None:
        # Changes what later evaluations compute; the KV cache is kept (see answer).
        import llama_cpp

        ctx = self.llm.ctx
        if not directions:
            llama_cpp.llama_set_adapter_cvec(ctx, None, 0, 0, 0, 0)
            return
        n_embd, n_layer = self.llm.n_embd(), llama_cpp.llama_model_n_layer(self.llm._model.model)
        # The buffer starts at layer 1: row N-1 holds layer N's direction.
        self._cvec = np.zeros((n_layer - 1, n_embd), dtype=np.float32)
        for layer, direction in directions.items():
            if not 1 <= layer < n_layer:
                raise SteerkitError(f"control vector layer {layer} out of range 1..{n_layer - 1}")
            self._cvec[layer - 1] = direction
        pointer = self._cvec.ctypes.data_as(llama_cpp.ctypes.POINTER(llama_cpp.ctypes.c_float))
        if llama_cpp.llama_set_adapter_cvec(ctx, pointer, self._cvec.size, n_embd, 1, n_layer - 1) != 0:
            raise SteerkitError(f"{self.path}: llama.cpp refused the control vector")

    def logits_steered(self, prompt_ids: list[int], rest_ids: list[int], steering: VectorSteering) -> np.ndarray:
        """Logits over ``prompt_ids + rest_ids`` under ``steering``, ``rest_ids`` read as the answer (one token
        per evaluation, as :meth:`answer` decodes them): a parity check against the transformers hooks."""
        self.llm.reset()
        named: set[str] = set()
        self._apply_control_vector(steering.prompt())
        try:
            self.llm.eval(list(prompt_ids))
            self._apply_control_vector(steering.answer(named))
            for k, token in enumerate(rest_ids):
                text = self.llm.detokenize(list(rest_ids[:k + 1])).decode("utf-8", errors="ignore")
                if self._release(steering, named, text):
                    self._apply_control_vector(steering.answer(named))
                self.llm.eval([token])
        finally:
            self._apply_control_vector(None)
        return np.array(self.llm.scores[: len(prompt_ids) + len(rest_ids)], dtype=np.float32)

    @staticmethod
    def _release(steering: VectorSteering, named: set[str], text: str) -> bool:
        """Add to ``named`` the ``until`` words that the answer ``text`` has now named; whether there were any."""
        newly = {w for w in steering.words if w not in named and named_so_far(w, text)}
        named |= newly
        return bool(newly)

    def chat_prompt_tokens(self, messages: list[dict] | RawText) -> list[int]:
        """The tokens of ``messages`` under the file's chat template, ready for the answer (as chat() builds them);
        :class:`~steerkit.prompts.RawText` is tokenized as it is."""
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        llm = self.llm
        if isinstance(messages, RawText):
            return llm.tokenize(str(messages).encode("utf-8"), add_bos=True, special=False)
        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            return llm.tokenize("\n".join(m["content"] for m in messages).encode("utf-8"))
        eos, bos = llm.token_eos(), llm.token_bos()
        formatter = Jinja2ChatFormatter(template, llm._model.token_get_text(eos) if eos != -1 else "",
                                        llm._model.token_get_text(bos) if bos != -1 else "")
        return llm.tokenize(formatter(messages=messages).prompt.encode("utf-8"), add_bos=False, special=True)

    def answer(self, messages: list[dict], steering: VectorSteering | None = None, max_tokens: int = 60,
               sampling: Sampling = GREEDY):
        """Answer ``messages``, yielding text pieces, with ``steering``'s control vectors where they apply.

        The prompt is evaluated with the prompt's vector set, then the
        answer's vector is set and the answer decoded on the same KV cache:
        the keys and values of the prompt keep what steered them.  A part
        with ``until`` is dropped from the answer's vector once the answer
        has named its word (:func:`steerkit.concept.named_so_far`); the
        tokens already evaluated keep it.  Tokens are chosen by
        :func:`steerkit.sampling.next_token`, the same rule with and without steering.
        """
        import llama_cpp

        llm = self.llm
        steering = steering or VectorSteering()
        prompt = self.chat_prompt_tokens(messages)
        if len(prompt) + max_tokens > llm.n_ctx():
            raise SteerkitError(f"prompt of {len(prompt)} tokens + {max_tokens} new tokens exceed the context of "
                                f"{llm.n_ctx()} tokens")
        vocab = llama_cpp.llama_model_get_vocab(llm._model.model)
        rng = np.random.default_rng(sampling.seed)
        llm.reset()
        named: set[str] = set()
        self._apply_control_vector(steering.prompt())
        try:
            llm.eval(prompt)
            self._apply_control_vector(steering.answer(named))
            logits = self._last_logits()
            answer: list[int] = []
            shown = ""
            for _ in range(max_tokens):
                token = next_token(logits, answer, sampling, rng)
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    break
                answer.append(token)
                text = llm.detokenize(answer).decode("utf-8", errors="ignore")
                if len(text) > len(shown):
                    yield text[len(shown):]
                    shown = text
                if self._release(steering, named, text):  # this token and the rest go without the released parts
                    self._apply_control_vector(steering.answer(named))
                llm.eval([token])
                logits = self._last_logits()
        finally:
            self._apply_control_vector(None)

    def _last_logits(self) -> np.ndarray:
        """The logits after the last evaluated token."""
        if self.all_logits:
            return np.array(self.llm.scores[self.llm.n_tokens - 1], dtype=np.float32)
        # Without logits_all, llama-cpp-python no longer copies them into ``scores``: read the context's output.
        return np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.llm.n_vocab(),)).copy()

    def logits(self, token_ids: list[int]) -> np.ndarray:
        """Logits ``[len(token_ids), vocab]`` of one forward pass over ``token_ids`` from an empty cache."""
        self.llm.reset()
        self.llm.eval(list(token_ids))
        return np.array(self.llm.scores[: len(token_ids)], dtype=np.float32)

    def chat(self, messages: list[dict], max_tokens: int = 60, sampling: Sampling = GREEDY) -> str:
        """The whole answer to a chat history (see :meth:`answer`)."""
        return "".join(self.answer(messages, None, max_tokens, sampling))
