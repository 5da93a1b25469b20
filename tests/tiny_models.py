"""Tiny random transformers models of every supported architecture, saved as HF folders and GGUFs.

The GGUF writer follows llama.cpp's conventions: ``[out, in]`` tensors,
Gemma norm weights stored with +1 added, tied LM head = ``token_embd``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from gguf import GGUFWriter

# model_type -> (config class name, GGUF architecture name)
ARCHS = {
    "llama": ("LlamaConfig", "llama"),
    "mistral": ("MistralConfig", "mistral"),
    "qwen2": ("Qwen2Config", "qwen2"),
    "qwen3": ("Qwen3Config", "qwen3"),
    "gemma2": ("Gemma2Config", "gemma2"),
    "gemma3_text": ("Gemma3TextConfig", "gemma3"),
}
# Mixture-of-experts families: 4 experts of 32 neurons, 2 routed per token (llama.cpp writes Mixtral as llama).
MOE_ARCHS = {
    "mixtral": ("MixtralConfig", "llama"),
    "qwen3_moe": ("Qwen3MoeConfig", "qwen3moe"),
}
N_EXPERTS, EXPERT_WIDTH = 4, 32
# gpt-oss: fused experts with gate/up interleaved, biases everywhere and a clamped SwiGLU (same sizes).
OSS_ARCHS = {"gpt_oss": ("GptOssConfig", "gpt-oss")}
_ALL = {**ARCHS, **MOE_ARCHS, **OSS_ARCHS}

VOCAB = 96
WORDS = ["dog", "Ġdog", "Dog", "Ġdogs", "cat", "Ġcat"]


def tiny_tokens() -> list[str]:
    """A small byte-BPE-looking vocabulary with a few real words."""
    return WORDS + [f"t{i}" for i in range(len(WORDS), VOCAB - 2)] + ["Ġthe", "Ġand"]


def tiny_config(model_type: str, **overrides):
    import transformers

    cls = getattr(transformers, _ALL[model_type][0])
    kwargs = dict(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=128, rms_norm_eps=1e-6,
        tie_word_embeddings=model_type.startswith("gemma") or model_type == "llama",
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    if model_type.startswith("gemma"):
        kwargs.update(query_pre_attn_scalar=8, sliding_window=16)
    if model_type == "mixtral":
        kwargs.update(num_local_experts=N_EXPERTS, num_experts_per_tok=2, intermediate_size=EXPERT_WIDTH)
    if model_type == "qwen3_moe":
        kwargs.update(num_experts=N_EXPERTS, num_experts_per_tok=2, moe_intermediate_size=EXPERT_WIDTH, norm_topk_prob=True)
    if model_type == "gpt_oss":  # plain RoPE (no YaRN) keeps the complete GGUF below simple
        kwargs.update(num_local_experts=N_EXPERTS, num_experts_per_tok=2, intermediate_size=EXPERT_WIDTH,
                      sliding_window=16, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    kwargs.update(overrides)
    return cls(**kwargs)


def tiny_model(model_type: str, seed: int = 0, **overrides):
    """A random-init causal LM; norm weights randomised too so conventions are exercised."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type, **overrides), dtype=torch.float32)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.normal_(0.0, 0.3) if model_type.startswith("gemma") else param.normal_(1.0, 0.3)
            elif param.dim() >= 2:  # matrices, and stacked experts (gpt-oss's expert biases too)
                param.normal_(0.0, 0.5)
            elif model_type in OSS_ARCHS:  # gpt-oss: attention and router biases, attention sinks
                param.normal_(0.0, 0.5)
    return model.eval()


def save_hf(model, folder: Path) -> Path:
    """Save as a Hugging Face folder (config + safetensors)."""
    model.save_pretrained(folder)
    return folder


# The 16 values of an MXFP4 (e2m1) code, as the OCP microscaling spec and transformers define them.
FP4_VALUES = np.array([0, .5, 1, 1.5, 2, 3, 4, 6, -0., -.5, -1, -1.5, -2, -3, -4, -6], dtype=np.float32)


def _mxfp4_pack(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Round ``[..., n]`` to MXFP4 along the last axis (blocks of 32, a power-of-two scale each, nearest code).

    Returns the rounded values, the packed codes ``[..., n/32, 16]`` (low nibble first) and the scales
    ``[..., n/32]`` (e8m0: exponent + 127), written here from the format's definition."""
    groups = rows.reshape(*rows.shape[:-1], -1, 32)
    exponent = np.ceil(np.log2(np.maximum(np.abs(groups).max(-1), 1e-30) / 6.0)).astype(np.int32)
    codes = np.abs(groups[..., None] / np.exp2(exponent)[..., None, None] - FP4_VALUES).argmin(-1)
    values = (FP4_VALUES[codes] * np.exp2(exponent)[..., None]).reshape(rows.shape)
    pairs = codes.reshape(*codes.shape[:-1], 16, 2)
    return values, (pairs[..., 0] | (pairs[..., 1] << 4)).astype(np.uint8), (exponent + 127).astype(np.uint8)


def save_mxfp4_gpt_oss(model, folder: Path) -> Path:
    """Save a gpt-oss model the way OpenAI ships it: experts as MXFP4 ``*_blocks``/``*_scales`` (packed along
    each expert's input dimension) and ``quantization_config`` mxfp4.  The model's expert weights are first
    rounded to MXFP4 in place, so the model and the folder hold the same numbers."""
    from safetensors.torch import load_file, save_file

    model.save_pretrained(folder)
    tensors = load_file(folder / "model.safetensors")
    for layer, block in enumerate(model.model.layers):
        for name in ("gate_up_proj", "down_proj"):
            weight = getattr(block.mlp.experts, name)  # [E, inputs, outputs]
            values, codes, scales = _mxfp4_pack(np.ascontiguousarray(weight.detach().numpy().transpose(0, 2, 1)))
            with torch.no_grad():
                weight.copy_(torch.from_numpy(np.ascontiguousarray(values.transpose(0, 2, 1))))
            key = f"model.layers.{layer}.mlp.experts.{name}"
            del tensors[key]
            tensors[f"{key}_blocks"], tensors[f"{key}_scales"] = torch.from_numpy(codes), torch.from_numpy(scales)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    config = saved_config(folder)
    config["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": [
        "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def saved_names(folder: Path) -> set[str]:
    """Tensor names in a saved Hugging Face folder's safetensors files."""
    from safetensors import safe_open

    names: set[str] = set()
    for path in folder.glob("*.safetensors"):
        with safe_open(str(path), "pt") as tensors:
            names |= set(tensors.keys())
    return names


def saved_config(folder: Path) -> dict:
    """A saved Hugging Face folder's ``config.json``."""
    return json.loads((folder / "config.json").read_text())


def save_gguf(model, path: Path, tokens: list[str] | None = None, ffn_type=None, alignment: int | None = None) -> Path:
    """Write the MLP (with Gemma's post-FFN norm), final norm and embeddings of ``model`` as llama.cpp's converter would.

    Tensors are F32, or ``ffn_type`` (a type gguf-py can quantize) for the FFN matrices; ``alignment``
    sets ``general.alignment`` (default 32).
    """
    config = model.config
    arch = _ALL[config.model_type][1]
    if config.model_type in OSS_ARCHS:
        return _save_gpt_oss_gguf(model, path, tokens, ffn_type)
    experts = config.model_type in MOE_ARCHS
    gemma = config.model_type.startswith("gemma")
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    writer = GGUFWriter(str(path), arch)
    if alignment is not None:
        writer.add_custom_alignment(alignment)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    if experts:
        writer.add_expert_count(N_EXPERTS)
        writer.add_expert_used_count(2)
        if arch == "qwen3moe":
            writer.add_expert_feed_forward_length(EXPERT_WIDTH)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens or tiny_tokens())
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    norm = state["model.norm.weight"] + (1.0 if gemma else 0.0)
    writer.add_tensor("output_norm.weight", norm.astype(np.float32))
    if "lm_head.weight" in state and not config.tie_word_embeddings:
        writer.add_tensor("output.weight", state["lm_head.weight"])
    for i in range(config.num_hidden_layers):
        if gemma:
            post_norm = state[f"model.layers.{i}.post_feedforward_layernorm.weight"] + 1.0
            writer.add_tensor(f"blk.{i}.post_ffw_norm.weight", post_norm.astype(np.float32))
        if experts:  # llama.cpp's stacked experts: [E, d_ff, d] for gate/up, [E, d, d_ff] for down
            gate_up = state[f"model.layers.{i}.mlp.experts.gate_up_proj"]
            matrices = {"ffn_gate_exps": gate_up[:, :EXPERT_WIDTH], "ffn_up_exps": gate_up[:, EXPERT_WIDTH:],
                        "ffn_down_exps": state[f"model.layers.{i}.mlp.experts.down_proj"]}
            writer.add_tensor(f"blk.{i}.ffn_gate_inp.weight", state[f"model.layers.{i}.mlp.gate.weight"])
        else:
            matrices = {ours: state[f"model.layers.{i}.mlp.{theirs}.weight"]
                        for ours, theirs in (("ffn_up", "up_proj"), ("ffn_gate", "gate_proj"), ("ffn_down", "down_proj"))}
        _add_matrices(writer, i, matrices, ffn_type)
    return _finish(writer, path)


def gpt_oss_experts(model, layer: int) -> dict[str, np.ndarray]:
    """Layer ``layer``'s experts as llama.cpp's converter writes gpt-oss: gate and up de-interleaved,
    ``[E, d_ff, d]`` and ``[E, d, d_ff]`` matrices, ``[E, d_ff]`` / ``[E, d]`` biases, the router and its bias."""
    mlp = model.model.layers[layer].mlp
    gate_up = mlp.experts.gate_up_proj.detach().float().numpy()  # [E, d, 2 * d_ff]
    bias = mlp.experts.gate_up_proj_bias.detach().float().numpy()
    return {
        "ffn_gate_exps.weight": gate_up[:, :, 0::2].transpose(0, 2, 1), "ffn_up_exps.weight": gate_up[:, :, 1::2].transpose(0, 2, 1),
        "ffn_down_exps.weight": mlp.experts.down_proj.detach().float().numpy().transpose(0, 2, 1),
        "ffn_gate_exps.bias": bias[:, 0::2], "ffn_up_exps.bias": bias[:, 1::2],
        "ffn_down_exps.bias": mlp.experts.down_proj_bias.detach().float().numpy(),
        "ffn_gate_inp.weight": mlp.router.weight.detach().float().numpy(),
        "ffn_gate_inp.bias": mlp.router.bias.detach().float().numpy(),
    }


def _add_gpt_oss_experts(writer: GGUFWriter, model, layer: int, ffn_type=None) -> None:
    tensors = gpt_oss_experts(model, layer)
    matrices = {k.removesuffix(".weight"): tensors.pop(k) for k in list(tensors) if k.endswith("_exps.weight")}
    _add_matrices(writer, layer, matrices, ffn_type)
    for name, value in tensors.items():  # biases and the router stay F32, as the converter leaves them
        writer.add_tensor(f"blk.{layer}.{name}", np.ascontiguousarray(value, dtype=np.float32))


def _full_header(writer: GGUFWriter, config, tokens: list[str]) -> GGUFWriter:
    """The metadata llama.cpp needs to run a tiny mixture of experts: shapes, attention, RoPE, experts and a
    plain SentencePiece-style vocabulary."""
    writer.add_context_length(config.max_position_embeddings)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    writer.add_expert_count(config.num_local_experts)
    writer.add_expert_used_count(config.num_experts_per_tok)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_token_types([1] * len(tokens))
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    return writer


def _gpt_oss_header(model, path: Path, tokens: list[str]) -> GGUFWriter:
    config = model.config
    writer = _full_header(GGUFWriter(str(path), "gpt-oss"), config, tokens)
    writer.add_expert_feed_forward_length(config.intermediate_size)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_sliding_window(config.sliding_window)
    return writer


def _save_gpt_oss_gguf(model, path: Path, tokens: list[str] | None, ffn_type) -> Path:
    """gpt-oss's experts, final norm and head (what neuron decoding reads)."""
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    writer = _gpt_oss_header(model, path, tokens or tiny_tokens())
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    writer.add_tensor("output.weight", state["lm_head.weight"])
    for i in range(model.config.num_hidden_layers):
        _add_gpt_oss_experts(writer, model, i, ffn_type)
    return _finish(writer, path)


def save_full_gpt_oss_gguf(model, path: Path, ffn_type=None) -> Path:
    """A complete GGUF of a tiny gpt-oss (attention with its sinks and biases) that stock llama.cpp runs, laid
    out as llama.cpp's converter writes one (no rotary reordering: both rotate halves).  Plain RoPE, a
    SentencePiece-style vocabulary (tests feed token ids)."""
    config = model.config
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    writer = _gpt_oss_header(model, path, tiny_tokens())
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    writer.add_tensor("output.weight", state["lm_head.weight"])
    for i in range(config.num_hidden_layers):
        prefix = f"model.layers.{i}."
        names = {"attn_norm.weight": "input_layernorm.weight", "post_attention_norm.weight": "post_attention_layernorm.weight",
                 "attn_sinks.weight": "self_attn.sinks"}
        for proj, ours in (("q_proj", "attn_q"), ("k_proj", "attn_k"), ("v_proj", "attn_v"), ("o_proj", "attn_output")):
            names.update({f"{ours}.weight": f"self_attn.{proj}.weight", f"{ours}.bias": f"self_attn.{proj}.bias"})
        for ours, theirs in names.items():
            writer.add_tensor(f"blk.{i}.{ours}", np.ascontiguousarray(state[prefix + theirs], dtype=np.float32))
        _add_gpt_oss_experts(writer, model, i, ffn_type)
    return _finish(writer, path)


def _add_matrices(writer: GGUFWriter, layer: int, matrices: dict[str, np.ndarray], qtype=None) -> None:
    """Layer ``layer``'s tensors ``blk.N.NAME.weight``: F32, or quantized to ``qtype`` with gguf-py."""
    from gguf.quants import quantize

    for name, weight in matrices.items():
        weight = np.ascontiguousarray(weight)
        if qtype is None:
            writer.add_tensor(f"blk.{layer}.{name}.weight", weight)
        else:
            writer.add_tensor(f"blk.{layer}.{name}.weight", quantize(weight, qtype), raw_dtype=qtype)


def _finish(writer: GGUFWriter, path: Path) -> Path:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _rope_permute(weight: np.ndarray, n_head: int) -> np.ndarray:
    # llama.cpp's llama graph rotates adjacent pairs; transformers rotates halves: its converter reorders q/k rows.
    return weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def save_full_mixtral_gguf(model, path: Path) -> Path:
    """A complete GGUF of a tiny Mixtral (attention too) that stock llama.cpp loads and runs, as its converter
    writes one: ``llama`` architecture with ``expert_count``, q/k rows reordered for its rotary embedding,
    a plain SentencePiece-style vocabulary (tests feed token ids).  All tensors F32."""
    config = model.config
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    tokens = tiny_tokens()
    writer = _full_header(GGUFWriter(str(path), "llama"), config, tokens)
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    writer.add_tensor("output.weight", state["lm_head.weight"])
    for i in range(config.num_hidden_layers):
        prefix = f"model.layers.{i}."
        gate_up = state[prefix + "mlp.experts.gate_up_proj"]
        tensors = {
            "attn_norm": state[prefix + "input_layernorm.weight"],
            "attn_q": _rope_permute(state[prefix + "self_attn.q_proj.weight"], config.num_attention_heads),
            "attn_k": _rope_permute(state[prefix + "self_attn.k_proj.weight"], config.num_key_value_heads),
            "attn_v": state[prefix + "self_attn.v_proj.weight"],
            "attn_output": state[prefix + "self_attn.o_proj.weight"],
            "ffn_norm": state[prefix + "post_attention_layernorm.weight"],
            "ffn_gate_inp": state[prefix + "mlp.gate.weight"],
        }
        tensors.update({"ffn_gate_exps": gate_up[:, :EXPERT_WIDTH], "ffn_up_exps": gate_up[:, EXPERT_WIDTH:],
                        "ffn_down_exps": state[prefix + "mlp.experts.down_proj"]})
        _add_matrices(writer, i, tensors)
    return _finish(writer, path)
