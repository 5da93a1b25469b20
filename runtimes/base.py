"""The backend interface and the registry every command goes through.

A backend is one inference runtime holding one loaded model.  It can

* report the model's :class:`~steerkit.profile.ModelBinding` (profiles are checked against it);
* :meth:`Backend.apply` a compiled :class:`~steerkit.plan.Plan` and hand back a :class:`Handle`
  whose ``remove()`` restores the model exactly;
* :meth:`Backend.generate` answers for a batch of prompts under one plan per row, each plan's
  ``positions`` (all, prompt, generated) honoured;
* :meth:`Backend.nll` score answers under the unsteered model.

Sessions, discovery, evaluation and the CLI take a backend from :func:`load_backend`; nothing
outside this registry branches on runtime names.  Adding a runtime is one folder with a
:class:`Backend` subclass and one line in :data:`BACKENDS`.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

from steerkit.errors import SteerkitError
from steerkit.plan import Plan
from steerkit.profile import ModelBinding
from steerkit.sampling import GREEDY, Sampling
from steerkit.sources import ModelSource

__all__ = ["Backend", "Handle", "BACKENDS", "register", "backend_class", "load_backend", "choose_backend"]

Prompt = Any  # a user message (str) or a chat history (list of {"role", "content"})


class Handle:
    """What :meth:`Backend.apply` returns: the way back (also a context manager)."""

    def __init__(self, undo: Callable[[], None]) -> None:
        self._undo: Callable[[], None] | None = undo

    def remove(self) -> None:
        """Undo the plan; the model computes exactly as before.  Idempotent."""
        if self._undo is not None:
            undo, self._undo = self._undo, None
            undo()

    def __enter__(self) -> Handle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


class Backend(ABC):
    """One runtime with one loaded model (see the module doc)."""

    name: ClassVar[str]
    #: Whether per-row plans share one batched generation (fast sweeps) or run one after another.
    batches_rows: ClassVar[bool] = False
    #: Whether :meth:`activation_scale` is available (discovery needs it).
    measures_activations: ClassVar[bool] = False
    #: Whether :meth:`load` can cast the weights to a ``dtype`` other than float32 (llama.cpp runs the GGUF's own types).
    casts_weights: ClassVar[bool] = False

    binding: ModelBinding
    label: str  # the model, for messages

    def __init__(self) -> None:
        self._applied: Plan | None = None

    # --- choosing and loading -------------------------------------------------------------
    @classmethod
    @abstractmethod
    def accepts(cls, source: ModelSource, device: str) -> str | None:
        """``None`` if this backend can run ``source`` on ``device``, else the reason it cannot."""

    @classmethod
    @abstractmethod
    def load(cls, source: ModelSource, device: str = "cpu", dtype: str = "float32") -> Backend:
        """Load the model (callers go through :func:`load_backend`)."""

    # --- steering ---------------------------------------------------------------------------
    @abstractmethod
    def check(self, plan: Plan) -> None:
        """Raise :class:`SteerkitError` for an edit this backend cannot run exactly; change nothing."""

    def apply(self, plan: Plan) -> Handle:
        """Steer every later call by ``plan`` until the handle's ``remove()``.

        Refused (before anything changes) when the backend cannot express the
        plan, or while another plan is applied.
        """
        if self._applied is not None:
            raise SteerkitError("a plan is already applied to this model; remove it first")
        self.check(plan)
        take_off = self._steer(plan)
        self._applied = plan

        def undo() -> None:
            take_off()
            self._applied = None

        return Handle(undo)

    def _steer(self, plan: Plan) -> Callable[[], None]:
        """Put ``plan`` on the model itself, for callers that use it directly; return how to take it off.

        By default nothing: :meth:`generate` reads :attr:`applied`.
        """
        return lambda: None

    @property
    def applied(self) -> Plan | None:
        """The plan :meth:`apply` set, if any."""
        return self._applied

    # --- answers and scores -----------------------------------------------------------------
    def generate(self, prompts: list[Prompt], plans: list[Plan | None] | None = None, max_new_tokens: int = 60,
                 sampling: Sampling = GREEDY, on_text: Callable[[str], None] | None = None) -> list[list[str]]:
        """Answers ``[plan][prompt]`` to chat ``prompts`` under each plan (``None``: unsteered).

        ``plans`` left out means one row under the applied plan (or none).
        ``on_text`` streams the text when there is a single answer.
        """
        if plans is None:
            plans = [self._applied]
        elif self._applied is not None:
            raise SteerkitError("explicit per-row plans while a plan is applied: remove the applied plan first")
        for plan in plans:
            if plan is not None:
                self.check(plan)
        return self._generate(prompts, plans, max_new_tokens, sampling, on_text)

    @abstractmethod
    def _generate(self, prompts: list[Prompt], plans: list[Plan | None], max_new_tokens: int, sampling: Sampling,
                  on_text: Callable[[str], None] | None) -> list[list[str]]:
        """:meth:`generate` after the checks."""

    @abstractmethod
    def nll(self, prompts: list[Prompt], answers: list[str], first_token: bool = False) -> list[float]:
        """Mean NLL (nats/token) of each answer given its prompt, under the *unsteered* model.

        The answer's first token is left out unless ``first_token``: discovery's budget
        asks whether the rest reads as language; evaluation scores the whole answer.
        """

    @abstractmethod
    def count_tokens(self, prompt: Prompt, answer: str) -> tuple[int, int]:
        """Tokens in ``prompt`` (chat template applied) and in ``answer``: what an API reports as usage."""

    def activation_scale(self, text: str):
        """Per-neuron ``max |h|`` over ``text``, ``[n_layers, d_ff]`` (backends with ``measures_activations``)."""
        raise SteerkitError(f"the {self.name} backend cannot measure neuron activations")

    def answer_states(self, prompts: list[Prompt], answers: list[str], layers: list[int]):
        """The residual stream after each of ``layers``, averaged over the answers' tokens, ``[len(layers), d_model]``,
        under the unsteered model (backends with ``measures_activations``)."""
        raise SteerkitError(f"the {self.name} backend cannot measure the residual stream")

    def residual_norms(self, text: str):
        """The median norm of the residual stream after each layer over ``text``'s tokens (the first left out:
        it is an attention sink with an outsized norm), ``[n_layers]`` (backends with ``measures_activations``)."""
        raise SteerkitError(f"the {self.name} backend cannot measure the residual stream")


#: The weight dtypes a backend may be asked for: each name and the torch dtype it means.
DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16"}


def check_dtype(dtype: str) -> str:
    """The torch dtype name ``dtype`` stands for; anything else is refused in one line."""
    if dtype not in DTYPES:
        raise SteerkitError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


# What a missing capability means, for the one-line refusal.
_CANNOT = {"batches_rows": "batch rows", "measures_activations": "measure activations",
           "casts_weights": "cast the weights to another dtype"}

# name -> "module:Class", in order of preference when choosing automatically (fastest first).
# Imported on first use, so the core never pulls in torch or llama.cpp.
BACKENDS: dict[str, str] = {
    "llama.cpp": "steerkit.runtimes.llamacpp.backend:LlamaCppBackend",
    "hf": "steerkit.runtimes.hf.backend:HFBackend",
}


def register(name: str, target: str) -> None:
    """Register a backend class under ``name`` (``target`` is ``"module:Class"``)."""
    BACKENDS[name] = target


def backend_class(name: str) -> type[Backend]:
    """The backend class registered as ``name``."""
    if name not in BACKENDS:
        raise SteerkitError(f"unknown runtime {name!r} (available: {', '.join(BACKENDS)})")
    module_name, _, class_name = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def choose_backend(source: ModelSource, runtime: str | None = None, device: str = "cpu",
                   needs: tuple[str, ...] = ()) -> type[Backend]:
    """The backend to run ``source``: ``runtime`` if named, else the first registered one that can.

    ``needs`` names class capabilities the caller requires (``batches_rows``,
    ``measures_activations``); automatic choice skips backends without them.
    """
    names = [runtime] if runtime not in (None, "auto") else list(BACKENDS)
    reasons = []
    for name in names:
        cls = backend_class(name)
        reason = cls.accepts(source, device)
        missing = [need for need in needs if not getattr(cls, need)]
        if reason is None and not missing:
            return cls
        reasons.append(f"{name}: {reason or 'cannot ' + ', '.join(_CANNOT.get(need, need) for need in missing)}")
    raise SteerkitError(f"model {source.name} on {device}: no runtime can run it ({'; '.join(reasons)})")


def load_backend(model: str | ModelSource | None = None, runtime: str | None = None, device: str = "cpu",
                 dtype: str = "float32", needs: tuple[str, ...] = ()) -> Backend:
    """Load ``model`` in the named ``runtime``, or in the fastest one that can run it (``None``/``"auto"``).

    >>> backend = load_backend("smollm2-135m")            # llama.cpp for a GGUF on the CPU   # doctest: +SKIP
    >>> backend.generate(["Hi!"], [plan])                  # doctest: +SKIP
    """
    from steerkit.sources import resolve_model

    if check_dtype(dtype) != "float32":  # float32 is the default and asks for nothing
        needs = (*needs, "casts_weights")
    source = model if isinstance(model, ModelSource) else resolve_model(model)
    return choose_backend(source, runtime, device, needs).load(source, device, dtype)
