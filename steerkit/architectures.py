"""The architecture table: every per-architecture fact steerkit relies on.

Architecture differences are data, not ``if arch == ...`` branches spread
through the code.  Each supported family gets one :class:`ArchSpec` row,
looked up by the GGUF ``general.architecture`` value or the Hugging Face
``model_type``.

Conventions recorded here (checked against llama.cpp's converter and
transformers' modelling code):

* Gemma stores RMSNorm gains as ``w`` and applies ``1 + w`` in transformers,
  while its GGUF files store ``1 + w`` already.  ``hf_norm_offset`` is what
  must be added to a Hugging Face norm weight to get the effective gain.
* Gemma multiplies input embeddings by ``sqrt(d_model)``; the LM head (tied
  to those embeddings) is not scaled.
* Gemma 2/3 pass the FFN output through a post-FFN RMSNorm before the
  residual add, so a constant added after the MLP is not a clamped neuron.
* llama.cpp's llama-family graphs load an optional ``blk.N.ffn_down.bias``;
  gemma graphs refuse unknown tensors.
* Mixture-of-experts families (:class:`ExpertLayout`) keep one SwiGLU MLP per
  expert.  transformers fuses them in memory (``mlp.experts.gate_up_proj``
  ``[E, 2*d_ff, d]``, gate first, and ``down_proj`` ``[E, d, d_ff]``) but saves
  and loads the per-expert layout below; llama.cpp stacks them into
  ``blk.N.ffn_{gate,up,down}_exps`` (Mixtral converts to ``llama`` with
  ``llama.expert_count`` set).  A neuron is (layer, expert, index); inside
  steerkit its flat index is ``expert * d_ff + index``.
* gpt-oss (``gpt_oss``; GGUF ``gpt-oss``) saves its experts fused as they sit
  in memory: ``mlp.experts.gate_up_proj`` ``[E, d, 2*d_ff]`` with gate and up
  interleaved (columns ``2i`` and ``2i+1``), ``down_proj`` ``[E, d_ff, d]``,
  and a bias on each (``gate_up_proj_bias``, ``down_proj_bias``).  Its
  activation is ``h = (clamp(u, -7, 7) + 1) * g' * sigmoid(1.702 g')`` with
  ``g' = min(g, 7)``: not linear in the up row, so a scaled neuron is its
  scaled down column; the per-expert down bias (added before the router
  weight, in transformers and llama.cpp alike) carries clamp/add exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

from steerkit.errors import SteerkitError

__all__ = ["ArchSpec", "ExpertLayout", "ARCHITECTURES", "arch_for_gguf", "arch_for_hf"]


@dataclass(frozen=True)
class ExpertLayout:
    """Where a mixture-of-experts family keeps its experts."""

    count_keys: tuple[str, ...]  # config.json fields that may hold the number of experts (first present wins)
    width_key: str  # config.json field: neurons per expert
    # One expert's saved tensors: prefix (with {layer} and {expert}) and the gate, up and down names.
    hf_prefix: str
    hf_names: tuple[str, ...]  # gate, up, down (fused: gate_up, down)
    gguf_width_key: str  # GGUF metadata key suffix holding the expert width
    # gpt-oss: saved fused (hf_prefix without {expert}; hf_names = gate_up, down), interleaved and transposed.
    hf_fused: bool = False
    # Every expert has gate/up/down biases (HF ``*_bias``, GGUF ``ffn_*_exps.bias``): clamp/add can be baked.
    biases: bool = False


@dataclass(frozen=True)
class ArchSpec:
    """What steerkit needs to know about one model family."""

    name: str
    gguf_names: tuple[str, ...]
    hf_model_types: tuple[str, ...]
    activation: str  # "silu" (SwiGLU), "gelu_tanh" (GeGLU) or "swiglu_oai" (gpt-oss's clamped SwiGLU)
    hf_norm_offset: float  # add to HF norm weights to get the gain
    embedding_scale: bool  # input embeddings scaled by sqrt(d_model)
    post_ffn_norm: bool  # FFN output is RMS-normalised before the residual add
    llama_cpp_ffn_down_bias: bool  # llama.cpp loads blk.N.ffn_down.bias
    # Hugging Face module path of one decoder layer's MLP.
    hf_mlp_path: str = "model.layers.{layer}.mlp"
    experts: ExpertLayout | None = None  # set for mixture-of-experts families
    # transformers can load this family's GGUFs.  gpt-oss: transformers 5.24 leaves its experts and attention
    # sinks out (randomly initialised, or refused on a size mismatch), so its GGUFs are not converted.
    transformers_reads_gguf: bool = True


ARCHITECTURES: tuple[ArchSpec, ...] = (
    ArchSpec("llama", ("llama",), ("llama",), "silu", 0.0, False, False, True),
    ArchSpec("mistral", ("mistral",), ("mistral",), "silu", 0.0, False, False, True),
    ArchSpec("qwen2", ("qwen2",), ("qwen2",), "silu", 0.0, False, False, True),
    ArchSpec("qwen3", ("qwen3",), ("qwen3",), "silu", 0.0, False, False, True),
    ArchSpec("gemma2", ("gemma2",), ("gemma2",), "gelu_tanh", 1.0, True, True, False),
    ArchSpec("gemma3", ("gemma3",), ("gemma3_text", "gemma3"), "gelu_tanh", 1.0, True, True, False),
    # Mixture of experts.  llama.cpp's MoE graphs load no per-expert bias, so clamp/add cannot be baked there.
    ArchSpec("mixtral", (), ("mixtral",), "silu", 0.0, False, False, False,
             experts=ExpertLayout(("num_local_experts",), "intermediate_size",
                                  "model.layers.{layer}.block_sparse_moe.experts.{expert}", ("w1", "w3", "w2"),
                                  "feed_forward_length")),
    ArchSpec("qwen3moe", ("qwen3moe",), ("qwen3_moe",), "silu", 0.0, False, False, False,
             # transformers 5 saves the expert count as num_local_experts; Qwen's own files say num_experts.
             experts=ExpertLayout(("num_experts", "num_local_experts"), "moe_intermediate_size",
                                  "model.layers.{layer}.mlp.experts.{expert}", ("gate_proj", "up_proj", "down_proj"),
                                  "expert_feed_forward_length")),
    ArchSpec("gpt-oss", ("gpt-oss",), ("gpt_oss",), "swiglu_oai", 0.0, False, False, False,
             experts=ExpertLayout(("num_local_experts",), "intermediate_size", "model.layers.{layer}.mlp.experts",
                                  ("gate_up_proj", "down_proj"), "expert_feed_forward_length", hf_fused=True,
                                  biases=True),
             transformers_reads_gguf=False),
)

#: llama.cpp converts Mixtral to ``general.architecture = llama`` with ``llama.expert_count`` set.
GGUF_MOE_ALIASES = {"llama": "mixtral"}

_SUPPORTED = ", ".join(a.name for a in ARCHITECTURES)


def arch_for_gguf(name: str, where: str, experts: bool = False) -> ArchSpec:
    """Return the spec for a GGUF ``general.architecture`` value (``experts``: the file has ``expert_count`` > 1).

    ``where`` names the file, for the error message.
    """
    if experts and name in GGUF_MOE_ALIASES:
        name = GGUF_MOE_ALIASES[name]
        return next(a for a in ARCHITECTURES if a.name == name)
    for arch in ARCHITECTURES:
        if name in arch.gguf_names:
            return arch
    raise SteerkitError(f"{where}: unsupported architecture {name!r} (supported: {_SUPPORTED})")


def arch_for_hf(model_type: str, where: str) -> ArchSpec:
    """Return the spec for a Hugging Face ``config.json`` ``model_type``."""
    for arch in ARCHITECTURES:
        if model_type in arch.hf_model_types:
            return arch
    raise SteerkitError(f"{where}: unsupported model_type {model_type!r} (supported: {_SUPPORTED})")
