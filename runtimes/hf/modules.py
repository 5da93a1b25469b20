"""Find a transformers model's MLP modules through the architecture table."""

from __future__ import annotations

import torch

from steerkit.architectures import ArchSpec, arch_for_hf
from steerkit.errors import SteerkitError
from steerkit.profile import ModelBinding, vocab_sha256
from steerkit.vocab import tokens_from_vocab

__all__ = ["model_arch", "mlp_module", "model_binding", "text_config"]


def text_config(model: torch.nn.Module):
    """The text part of a model's config (multimodal configs nest it)."""
    config = model.config
    return getattr(config, "text_config", None) or config


def model_arch(model: torch.nn.Module) -> ArchSpec:
    """The :class:`ArchSpec` of a transformers model."""
    return arch_for_hf(str(text_config(model).model_type), type(model).__name__)


def _submodule(model: torch.nn.Module, path: str, layer: int) -> torch.nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError as exc:
        raise SteerkitError(f"{type(model).__name__}: no module {path} (layer {layer})") from exc


def mlp_module(model: torch.nn.Module, layer: int) -> torch.nn.Module:
    """The MLP of decoder layer ``layer`` (has ``gate_proj``, ``up_proj``, ``down_proj``; a mixture of experts has
    ``experts``, see :mod:`steerkit.runtimes.hf.experts`)."""
    return _submodule(model, model_arch(model).hf_mlp_path.format(layer=layer), layer)


def decoder_layer(model: torch.nn.Module, layer: int) -> torch.nn.Module:
    """Decoder layer ``layer`` (the module whose output is the residual stream after that layer): the MLP's parent."""
    return _submodule(model, model_arch(model).hf_mlp_path.format(layer=layer).rpartition(".")[0], layer)


def model_binding(model: torch.nn.Module, tokenizer=None) -> ModelBinding:
    """What a profile must match to apply to ``model`` (vocabulary checked when a tokenizer is given)."""
    config = text_config(model)
    vocab_hash = None
    if tokenizer is not None:
        vocab_hash = vocab_sha256(tokens_from_vocab(tokenizer.get_vocab(), config.vocab_size))
    experts = model_arch(model).experts
    return ModelBinding(
        arch=model_arch(model).name,
        n_layers=config.num_hidden_layers,
        d_model=config.hidden_size,
        d_ff=getattr(config, experts.width_key if experts else "intermediate_size"),
        vocab_size=config.vocab_size,
        vocab_sha256=vocab_hash,
        n_experts=next(getattr(config, k) for k in experts.count_keys if getattr(config, k, None)) if experts else 1,
    )
