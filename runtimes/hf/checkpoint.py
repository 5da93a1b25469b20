"""Write a baked checkpoint: a Hugging Face folder with a plan's edits in its weights, for serving engines.

``steerkit bake MODEL PROFILE... -o DIR`` loads the model with transformers
(a GGUF is dequantized to float32: the folder holds plain weights), bakes the
plan (:func:`~steerkit.runtimes.hf.bake.bake`: scale/ablate in ``up_proj``,
clamp/add as a ``down_proj`` bias) and saves config, tokenizer and
safetensors.  A bias needs the architecture's ``mlp_bias`` switch (llama
family in transformers; see docs/runtimes.md for which engines read it);
other architectures take scale/ablate-only profiles.  The folder is written
next to ``DIR`` and renamed into place when complete, so a killed bake
leaves no half-written checkpoint; an existing ``DIR`` is never replaced.
"""

from __future__ import annotations

import json
from pathlib import Path

from steerkit.cache import temporary_dir
from steerkit.errors import SteerkitError
from steerkit.plan import compile_plan
from steerkit.profile import Profile, dump_profile
from steerkit.runtimes.hf.modules import text_config
from steerkit.version import __version__

__all__ = ["write_baked_checkpoint"]

MANIFEST = "steerkit.json"  # names the profiles baked in, and holds their YAML


def write_baked_checkpoint(model: str | None, profiles: list[Profile], output: str | Path,
                           strength: float | None = None) -> Path:
    """Bake ``profiles`` into ``model`` (a steerkit name, GGUF or folder) and save the result as the folder
    ``output``; returns it.  Refused in one line, before anything is written, when ``output`` exists or the
    plan cannot be baked (prompt/answer positions, ``until``, a bias the architecture cannot save)."""
    from steerkit.runtimes.hf.bake import bake, prepare_for_save
    from steerkit.runtimes.hf.loader import load_model
    from steerkit.runtimes.hf.modules import model_binding

    output = Path(output)
    if output.exists() or output.is_symlink():
        raise SteerkitError(f"{output}: already exists; bake writes a new folder (remove it or pick another name)")
    if not output.parent.is_dir():
        raise SteerkitError(f"{output.parent}: no such folder")
    loaded, tokenizer = load_model(model)
    plan = compile_plan(profiles, model_binding(loaded, tokenizer), strength)
    plan.merged()  # refuses what weights cannot carry, before the weights change
    bake(loaded, plan)
    prepare_for_save(loaded)
    _forget_gguf_origin(loaded)
    with temporary_dir(output, "bake") as work:
        loaded.save_pretrained(work)
        tokenizer.save_pretrained(work)
        manifest = {"steerkit": __version__, "strength": strength,
                    "profiles": [{"name": p.name, "yaml": dump_profile(p)} for p in profiles]}
        (work / MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False), encoding="utf-8")
        try:
            work.rename(output)
        except OSError as exc:
            raise SteerkitError(f"{output}: cannot publish the checkpoint ({exc.strerror})") from exc
    return output


def _forget_gguf_origin(model) -> None:
    """transformers dequantizes a GGUF to plain float tensors on load but keeps a GGUF quantizer on the model,
    which makes ``save_pretrained`` refuse; nothing in memory is quantized, so the marker (and the config's
    ``quantization_config``, which would make a reload look for a GGUF) is dropped."""
    if getattr(model, "quantization_method", None) is None or str(model.quantization_method.value) != "gguf":
        return
    model.hf_quantizer = None
    model.is_quantized = False
    del model.quantization_method
    for config in {id(model.config): model.config, id(text_config(model)): text_config(model)}.values():
        if hasattr(config, "quantization_config"):
            del config.quantization_config
