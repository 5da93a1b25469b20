"""Load a steerkit model name as a transformers model and tokenizer.

GGUF sources are dequantized by transformers (through gguf-py) once, then
cached as a plain safetensors folder keyed by the GGUF's sha256, so later
loads take about a second and the model is an ordinary, saveable one.
"""

from __future__ import annotations

import hashlib

import shutil
from pathlib import Path

import torch

from steerkit.cache import cache_dir, publish_dir, temporary_dir
from steerkit.errors import SteerkitError
from steerkit.fingerprint import file_sha256
from steerkit.runtimes.base import check_dtype
from steerkit.sources import ModelSource, resolve_model
from steerkit.version import __version__
from steerkit.weights.gguf_reader import GGUFWeights

__all__ = ["hf_folder", "load_model"]

CONVERSION_FORMAT = 1  # bump when how a GGUF is converted for transformers changes

def _convert_gguf(source: ModelSource, target: Path) -> None:
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    arch = GGUFWeights(source.path).info.arch
    if not arch.transformers_reads_gguf:
        raise SteerkitError(f"{source.path}: transformers cannot load {arch.name} GGUFs (it drops the experts); "
                            "use the model's Hugging Face folder with transformers, or this file with llama.cpp")
    kwargs = {"gguf_file": source.path.name}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.path.parent, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source.path.parent, dtype=torch.float32, **kwargs)
    except Exception as exc:  # transformers' GGUF loader fails with anything from KeyError to ValueError
        detail = (str(exc).splitlines() or [""])[0][:200]
        raise SteerkitError(f"{source.path}: transformers cannot load this GGUF ({type(exc).__name__}: {detail})") from exc
    with temporary_dir(target, "convert") as work:
        model.config.save_pretrained(work)
        if model.generation_config is not None:
            model.generation_config.save_pretrained(work)
        tokenizer.save_pretrained(work)
        # Tied weights are stored once; from_pretrained re-ties them from the config.
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        if getattr(model.config, "tie_word_embeddings", False):
            state.pop("lm_head.weight", None)
        save_file(state, str(work / "model.safetensors"), metadata={"format": "pt"})
        publish_dir(work, target, "model.safetensors")  # another process may have converted it first


def hf_folder(model: str | ModelSource | None = None) -> Path:
    """A Hugging Face folder for the model: the folder itself, or the cached conversion of a GGUF."""
    source = model if isinstance(model, ModelSource) else resolve_model(model)
    if source.kind == "hf":
        return source.path
    code = hashlib.sha256(f"{CONVERSION_FORMAT}|{__version__}".encode()).hexdigest()[:8]
    target = cache_dir("hf") / f"{file_sha256(source.path)[:24]}-{code}"  # the file and the code that converted it
    if not (target / "model.safetensors").is_file():
        shutil.rmtree(target, ignore_errors=True)
        _convert_gguf(source, target)
    return target


def load_model(model: str | ModelSource | None = None, dtype: str = "float32", device: str = "cpu", device_map=None):
    """``(model, tokenizer)`` for a steerkit model name, in eval mode.

    >>> model, tokenizer = load_model("smollm2-135m")   # doctest: +SKIP
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, check_dtype(dtype))
    folder = hf_folder(model)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    kwargs = {"device_map": device_map} if device_map else {}
    loaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype, **kwargs)
    if not device_map:
        loaded = loaded.to(device)
    return loaded.eval(), tokenizer
