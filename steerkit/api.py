"""The Python front door: ``steerkit.steer``, ``steerkit.bake``, ``steerkit.discover``, ``steerkit.patch_gguf``.

>>> import steerkit                                                         # doctest: +SKIP
>>> with steerkit.steer(model, steerkit.load_profile("dog"), tokenizer=tok):
...     model.generate(...)                                                  # steered; restored on exit

Profiles are given as :class:`~steerkit.profile.Profile` objects, shipped names (``"dog"``) or
paths, alone or in a list; every one is checked against the model before anything changes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from steerkit.errors import SteerkitError
from steerkit.plan import Plan, compile_plan
from steerkit.profile import ModelBinding, Profile
from steerkit.profile import load_profile as _read_profile
from steerkit.shipped import resolve_profile_path

if TYPE_CHECKING:
    from steerkit.discovery import Discovery
    from steerkit.runtimes.base import Backend, Handle
    from steerkit.runtimes.llamacpp.patch import PatchReport

__all__ = ["load_profile", "steer", "bake", "discover", "patch_gguf", "load_backend"]

ProfileLike = Union[Profile, str, Path]


def load_profile(profile: ProfileLike) -> Profile:
    """A profile from a path or a shipped name (``"dog"``); a :class:`Profile` is returned as it is."""
    if isinstance(profile, Profile):
        return profile
    return _read_profile(resolve_profile_path(profile))


def _profiles(profiles: ProfileLike | Sequence[ProfileLike]) -> list[Profile]:
    items = [profiles] if isinstance(profiles, (Profile, str, Path)) else list(profiles)
    if not items:
        raise SteerkitError("no profile given")
    return [load_profile(p) for p in items]


def _transformers_binding(model: Any, tokenizer: Any) -> ModelBinding:
    """The binding of a transformers model; the tokenizer (given, or found next to the weights) adds the vocabulary."""
    from steerkit.runtimes.hf.modules import model_binding

    if tokenizer is None:
        folder = Path(str(getattr(getattr(model, "config", None), "_name_or_path", "") or ""))
        if (folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file():
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(folder)
    return model_binding(model, tokenizer)


def _plan_for(model: Any, profiles: ProfileLike | Sequence[ProfileLike], tokenizer: Any,
              strength: float | None) -> Plan:
    from steerkit.runtimes.base import Backend
    from steerkit.session import check_strength

    binding = model.binding if isinstance(model, Backend) else _transformers_binding(model, tokenizer)
    return compile_plan(_profiles(profiles), binding, check_strength(strength))


def steer(model: Any, profiles: ProfileLike | Sequence[ProfileLike], tokenizer: Any = None,
          strength: float | None = None) -> Handle:
    """Steer ``model`` with ``profiles`` until the returned handle's ``remove()`` (or the end of a ``with``).

    ``model`` is a transformers model (hooks on its MLPs; its own ``generate``
    is steered) or a :class:`~steerkit.runtimes.base.Backend`.  A profile made
    for another model is refused before anything changes; the vocabulary is
    checked when the tokenizer is given or lies next to the weights.
    ``strength`` overrides every profile's own.
    """
    from steerkit.runtimes.base import Backend, Handle
    from steerkit.runtimes.hf.hooks import attach

    plan = _plan_for(model, profiles, tokenizer, strength)
    if isinstance(model, Backend):
        return model.apply(plan)
    return Handle(attach(model, plan, tokenizer).remove)


def bake(model: Any, profiles: ProfileLike | Sequence[ProfileLike], tokenizer: Any = None,
         strength: float | None = None) -> Handle:
    """Write ``profiles`` into a transformers model's weights; the handle's ``remove()`` restores them bit for bit.

    Only profiles acting on all positions can be baked (weights cannot tell prompt from answer).
    Save the baked model with :func:`steerkit.runtimes.hf.prepare_for_save` first.
    """
    from steerkit.runtimes.base import Handle
    from steerkit.runtimes.hf.bake import bake as bake_plan

    return Handle(bake_plan(model, _plan_for(model, profiles, tokenizer, strength)).remove)


def load_backend(model: str | None = None, runtime: str | None = None, device: str = "cpu",
                 dtype: str = "float32") -> Backend:
    """Load a model by steerkit name or path in the named runtime, or the fastest that can run it."""
    from steerkit.runtimes.base import load_backend as load

    return load(model, runtime, device, dtype)


def discover(word: str, model: str | Backend | None = None, suppress: bool = False,
             prompts: list[str] | None = None, log: Callable[[str], None] = lambda message: None,
             progress: bool = False, positions: str = "until") -> Discovery:
    """Find and calibrate a profile for ``word`` on ``model`` (a steerkit name, a path or a backend).

    ``positions``: ``"until"`` (default) steers the answer until it names the word; ``"prompt"``
    steers the prompt only; ``"all"`` acts at every position, which ``patch_gguf`` can bake into
    weights (the other two run in steerkit's runtimes only).

    Returns a :class:`~steerkit.discovery.Discovery`: ``.profile`` (save it with
    :func:`steerkit.profile.save_profile`), ``.chosen`` and ``.sweep`` with the
    measured figures.
    """
    from steerkit.concept import concept_from_word
    from steerkit.discovery import DISCOVERY_NEEDS, atlas_for_discovery
    from steerkit.discovery import discover as run_discovery
    from steerkit.runtimes.base import Backend
    from steerkit.runtimes.base import load_backend as load
    from steerkit.weights import open_weights

    label = getattr(model, "label", None) if isinstance(model, Backend) else model
    reader = open_weights(label)
    concept_from_word(word, reader.tokens())  # refuse a bad word before any heavy work
    atlas = atlas_for_discovery(reader, positions, suppress, progress)
    backend = model if isinstance(model, Backend) else load(model, needs=DISCOVERY_NEEDS)
    backend.progress = progress
    return run_discovery(word, reader, atlas, backend, suppress=suppress, prompts=prompts, positions=positions,
                         log=log)


def patch_gguf(source: str | Path, profiles: ProfileLike | Sequence[ProfileLike], output: str | Path,
               strength: float | None = None, **options: Any) -> PatchReport:
    """Write ``output``: the GGUF ``source`` with ``profiles`` compiled into its weights (stock llama.cpp loads it).

    ``options``: ``allow_repatch``, ``approximate``, ``progress`` (see
    :func:`steerkit.runtimes.llamacpp.patch.patch_gguf`).
    """
    from steerkit.runtimes.llamacpp.patch import patch_gguf as patch
    from steerkit.session import check_strength

    return patch(source, _profiles(profiles), output, check_strength(strength), **options)
