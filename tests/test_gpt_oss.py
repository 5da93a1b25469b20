"""gpt-oss: fused experts with gate/up interleaved, a bias on every projection and a clamped SwiGLU.

A tiny random gpt-oss is read from its Hugging Face folder and GGUFs (F32, MXFP4), decoded and found by a
planted word, edited by hooks (checked against a hand-written loop from the activation's definition),
baked with every op (its expert biases carry clamp/add), patched into GGUFs and run by stock llama.cpp
against the hooks.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGUFReader, GGMLQuantizationType as Q
from gguf.quants import dequantize, quantize
from transformers import AutoModelForCausalLM

from reference import gpt_oss_activations, logits, manual_expert_edit, patched_file_against_hooks
from steerkit.errors import SteerkitError, UnsupportedEdit
from steerkit.plan import compile_plan
from steerkit.profile import Profile
from steerkit.runtimes.hf.hooks import attach
from steerkit.runtimes.hf.modules import model_binding
from steerkit.weights import open_weights
from test_experts import some_edits  # the same five edits, one of each op
from tiny_models import (EXPERT_WIDTH, N_EXPERTS, gpt_oss_experts, save_full_gpt_oss_gguf, save_gguf, save_hf,
                         save_mxfp4_gpt_oss, saved_config, saved_names, tiny_model)

D_MODEL = 32
CLOSE = dict(atol=1e-4, rtol=1e-5)  # float32 sums in another order (see test_experts.py)


@pytest.fixture
def oss():
    return tiny_model("gpt_oss")


def flat_weights(model, layer):
    """Gate, up and down vectors ``[E*d_ff, d]`` in steerkit's flat order, from the module's own tensors."""
    experts = model.model.layers[layer].mlp.experts
    gate_up = experts.gate_up_proj.detach()  # [E, d, 2 * d_ff], gate at even columns
    gate = gate_up[:, :, 0::2].transpose(1, 2).reshape(-1, D_MODEL).numpy()
    up = gate_up[:, :, 1::2].transpose(1, 2).reshape(-1, D_MODEL).numpy()
    return gate, up, experts.down_proj.detach().reshape(-1, D_MODEL).numpy()


def test_readers_deinterleave_the_fused_experts(oss, tmp_path):
    hf, f32 = save_hf(oss, tmp_path / "hf"), save_gguf(oss, tmp_path / "f32.gguf")
    mxfp4 = save_gguf(oss, tmp_path / "mxfp4.gguf", ffn_type=Q.MXFP4)
    for path in (hf, f32, mxfp4):
        reader = open_weights(str(path))
        assert (reader.info.arch.name, reader.info.n_experts, reader.info.d_ff) == ("gpt-oss", N_EXPERTS, EXPERT_WIDTH)
        assert reader.binding() == open_weights(str(f32)).binding() or path == hf
        for layer in range(3):
            wanted = flat_weights(oss, layer)
            if path == mxfp4:  # what MXFP4 itself keeps of the same numbers, via gguf-py
                wanted = [np.asarray(dequantize(quantize(w, Q.MXFP4), Q.MXFP4)) for w in wanted[:2]] + [
                    np.asarray(dequantize(quantize(np.ascontiguousarray(wanted[2].reshape(N_EXPERTS, EXPERT_WIDTH, D_MODEL)
                                                                        .transpose(0, 2, 1)), Q.MXFP4), Q.MXFP4))
                    .transpose(0, 2, 1).reshape(-1, D_MODEL)]
            for got, want in zip((reader.gate_rows(layer), reader.up_rows(layer), reader.down_cols(layer)), wanted):
                np.testing.assert_array_equal(got, want)
    hf_binding = open_weights(str(hf)).binding()
    assert hf_binding.arch == model_binding(oss).arch == "gpt-oss" and hf_binding.n_experts == N_EXPERTS


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_hooks_edit_the_expert_neuron_like_the_reference(oss, strength):
    binding = model_binding(oss)
    edits = some_edits(binding)
    ids = torch.randint(3, 90, (2, 9), generator=torch.Generator().manual_seed(1))
    plain = logits(oss, ids)
    with manual_expert_edit(oss, [binding.edit_at(layer, 5, "scale", 1.0) for layer in range(3)]):
        torch.testing.assert_close(logits(oss, ids), plain, **CLOSE)  # the hand-written loop is the model itself
    with manual_expert_edit(oss, edits, strength):
        wanted = logits(oss, ids)
    handle = attach(oss, compile_plan([Profile("t", binding, edits)], binding, strength))
    got = logits(oss, ids)
    handle.remove()
    assert (wanted - plain).abs().max() > 0.1
    torch.testing.assert_close(got, wanted, **CLOSE)
    assert torch.equal(logits(oss, ids), plain)


def test_activation_peaks_use_the_clamped_activation_on_routed_tokens(oss):
    from steerkit.runtimes.hf.measure import activation_scale

    class Ids:
        def __call__(self, text, return_tensors):
            return type("Batch", (), {"input_ids": torch.tensor([[int(t) for t in text.split()]])})()

    ids = torch.randint(3, 90, (1, 12), generator=torch.Generator().manual_seed(3))
    seen = {}
    hooks = [oss.model.layers[layer].mlp.experts.register_forward_hook(
        lambda module, args, output, layer=layer: seen.__setitem__(layer, args[:2])) for layer in range(3)]
    peaks = activation_scale(oss, Ids(), " ".join(map(str, ids[0].tolist())))
    for hook in hooks:
        hook.remove()
    for layer in range(3):
        x, routes = seen[layer]
        experts = oss.model.layers[layer].mlp.experts
        for e in range(N_EXPERTS):
            h = gpt_oss_activations(x, experts.gate_up_proj[e].detach(), experts.gate_up_proj_bias[e].detach())
            routed = (routes == e).any(dim=1)
            want = h[routed].abs().amax(dim=0) if routed.any() else torch.zeros(EXPERT_WIDTH)
            np.testing.assert_allclose(peaks[layer, e * EXPERT_WIDTH:(e + 1) * EXPERT_WIDTH], want.numpy(), rtol=1e-5, atol=1e-6)


def test_baked_edits_of_every_op_match_hooks_and_reload(oss, tmp_path):
    from steerkit.runtimes.hf.bake import bake, prepare_for_save

    binding = model_binding(oss)
    plan = compile_plan([Profile("t", binding, some_edits(binding))], binding)
    ids = torch.randint(3, 90, (2, 9), generator=torch.Generator().manual_seed(4))
    plain = logits(oss, ids)
    handle = attach(oss, plan)
    hooked = logits(oss, ids)
    handle.remove()
    baked = bake(oss, plan)
    torch.testing.assert_close(logits(oss, ids), hooked, **CLOSE)
    experts = oss.model.layers[2].mlp.experts
    assert torch.count_nonzero(experts.down_proj[3, 101 - 3 * EXPERT_WIDTH]) == 0  # the ablated neuron's down row
    prepare_for_save(oss)
    oss.save_pretrained(tmp_path / "baked")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "baked").eval()
    torch.testing.assert_close(logits(reloaded, ids), hooked, **CLOSE)
    baked.remove()
    assert torch.equal(logits(oss, ids), plain)
    # vLLM and SGLang load exactly these fused names and biases (docs/runtimes.md): the folder keeps the names and
    # config of an unedited save.
    oss.save_pretrained(tmp_path / "plain")
    assert saved_names(tmp_path / "baked") == saved_names(tmp_path / "plain")
    assert {f"model.layers.2.mlp.experts.{n}" for n in ("gate_up_proj", "gate_up_proj_bias", "down_proj",
                                                        "down_proj_bias")} <= saved_names(tmp_path / "baked")
    assert saved_config(tmp_path / "baked") == saved_config(tmp_path / "plain")


def test_openai_mxfp4_checkpoints_are_read_hooked_and_baked_plain(oss, tmp_path, monkeypatch):
    """gpt-oss as OpenAI ships it (experts in MXFP4 ``*_blocks``/``*_scales``): the reader dequantizes what
    transformers dequantizes, hooks edit the model transformers loads from it, and `bake` writes a plain folder
    (no ``quantization_config``) with the edits in the weights."""
    from steerkit.runtimes.hf.checkpoint import write_baked_checkpoint
    from test_checkpoint import _FakeTokenizer

    packed = save_mxfp4_gpt_oss(oss, tmp_path / "mxfp4")  # rounds oss's experts to the same numbers
    assert "model.layers.0.mlp.experts.gate_up_proj_blocks" in saved_names(packed)
    reader = open_weights(str(packed))
    for layer in range(3):
        gate, up, down = flat_weights(oss, layer)
        assert np.array_equal(reader.gate_rows(layer), gate) and np.array_equal(reader.up_rows(layer), up)
        assert np.array_equal(reader.down_cols(layer), down)
    loaded = AutoModelForCausalLM.from_pretrained(packed, dtype=torch.float32).eval()  # dequantized on the CPU
    ids = torch.randint(3, 90, (2, 9), generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(logits(loaded, ids), logits(oss, ids), **CLOSE)
    binding = model_binding(loaded)
    profile = Profile("oss", binding, some_edits(binding))
    handle = attach(oss, compile_plan([profile], model_binding(oss)))
    hooked = logits(oss, ids)
    handle.remove()
    handle = attach(loaded, compile_plan([profile], binding))
    torch.testing.assert_close(logits(loaded, ids), hooked, **CLOSE)
    handle.remove()
    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", lambda *a, **k: _FakeTokenizer())
    baked = write_baked_checkpoint(str(packed), [profile], tmp_path / "baked")
    assert "quantization_config" not in saved_config(baked)
    assert "model.layers.0.mlp.experts.gate_up_proj" in saved_names(baked)
    torch.testing.assert_close(logits(AutoModelForCausalLM.from_pretrained(baked).eval(), ids), hooked, **CLOSE)


def test_mxfp4_checkpoint_with_wrong_block_shapes_is_refused_in_one_line(oss, tmp_path):
    from safetensors.torch import load_file, save_file

    packed = save_mxfp4_gpt_oss(oss, tmp_path / "mxfp4")
    tensors = load_file(packed / "model.safetensors")
    key = "model.layers.1.mlp.experts.down_proj_scales"
    tensors[key] = tensors[key][:, :, :0]
    save_file(tensors, packed / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(SteerkitError, match=r"tensor model.layers.1.mlp.experts.down_proj_scales has shape \[4, 32, 0\], "
                                            r"expected \[4, 32, 1\] from config.json"):
        open_weights(str(packed))


def test_bake_refuses_prompt_positions_without_changing_weights(oss):
    from steerkit.runtimes.hf.bake import bake

    binding = model_binding(oss)
    before = {k: v.clone() for k, v in oss.state_dict().items()}
    with pytest.raises(UnsupportedEdit):
        bake(oss, compile_plan([Profile("p", binding, some_edits(binding), positions="prompt")], binding))
    assert all(torch.equal(v, before[k]) for k, v in oss.state_dict().items())


def test_all_zero_bytes_decode_to_zero_in_every_type():
    """The patch ablates a gpt-oss up row by writing zero bytes: 0 in every block format (codes times a scale)."""
    for qtype in (Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.MXFP4, Q.IQ4_NL, Q.TQ2_0):
        block, size = GGML_QUANT_SIZES[qtype]
        raw = np.zeros((2, 256 // block * size), dtype=np.uint8)
        assert not np.asarray(dequantize(raw, qtype)).any(), qtype.name


def patched_tensors(path):
    return {t.name: np.array(t.data) for t in GGUFReader(path).tensors}


def test_patched_gguf_carries_every_op_exactly(oss, tmp_path):
    from steerkit.runtimes.llamacpp.patch import patch_gguf

    source = save_gguf(oss, tmp_path / "f32.gguf")
    binding = open_weights(str(source)).binding()
    edits = some_edits(binding)
    report = patch_gguf(source, [Profile("t", binding, edits)], tmp_path / "out.gguf", progress=False)
    assert report.scaled_rows == 4  # clamp, scale, ablate, scale 0 (the add scales nothing)
    old, new = patched_tensors(source), patched_tensors(tmp_path / "out.gguf")
    changed = {name for name in old if not np.array_equal(old[name], new[name])}
    assert changed == {"blk.0.ffn_up_exps.weight", "blk.0.ffn_up_exps.bias", "blk.1.ffn_up_exps.weight",
                       "blk.1.ffn_up_exps.bias", "blk.1.ffn_down_exps.weight", "blk.1.ffn_down_exps.bias",
                       "blk.2.ffn_up_exps.weight", "blk.2.ffn_up_exps.bias", "blk.2.ffn_down_exps.bias"}
    wanted = {layer: gpt_oss_experts(oss, layer) for layer in range(3)}
    for edit in edits:
        e, i, layer = edit.expert, edit.neuron, edit.layer
        up, up_bias = new[f"blk.{layer}.ffn_up_exps.weight"], new[f"blk.{layer}.ffn_up_exps.bias"]
        down, down_bias = new[f"blk.{layer}.ffn_down_exps.weight"], new[f"blk.{layer}.ffn_down_exps.bias"]
        column = wanted[layer]["ffn_down_exps.weight"][e, :, i]
        if edit.op in ("ablate", "clamp") or edit.value == 0.0:  # h = (clamp(0.x - 1) + 1) * glu = 0
            assert not up[e, i].any() and up_bias[e, i] == -1.0
        if edit.op == "scale" and edit.value != 0.0:
            np.testing.assert_array_equal(down[e, :, i], (column * np.float32(edit.value)).astype(np.float32))
        if edit.op in ("clamp", "add"):
            np.testing.assert_allclose(down_bias[e] - wanted[layer]["ffn_down_exps.bias"][e], edit.value * column,
                                       rtol=1e-5, atol=1e-6)


def test_quantized_gpt_oss_patches_ablate_and_add_and_refuses_scale(oss, tmp_path):
    from steerkit.runtimes.llamacpp.patch import patch_gguf

    source = save_gguf(oss, tmp_path / "mxfp4.gguf", ffn_type=Q.MXFP4)
    binding = open_weights(str(source)).binding()
    ok = [e for e in some_edits(binding) if e.op != "scale" or e.value == 0.0]
    patch_gguf(source, [Profile("t", binding, ok)], tmp_path / "out.gguf", progress=False)
    after = open_weights(str(tmp_path / "out.gguf"))
    assert not after.up_rows(1)[5].any() and not after.up_rows(0)[70].any()
    scale = Profile("s", binding, [binding.edit_at(1, 40, "scale", 2.5)])
    with pytest.raises(SteerkitError, match=r"blk\.1\.ffn_down_exps\.weight is MXFP4; scale edits of gpt-oss expert "
                                            r"neurons scale their down column, which needs it in F32 or F16"):
        patch_gguf(source, [scale], tmp_path / "scale.gguf", progress=False)
    assert not (tmp_path / "scale.gguf").exists()


def test_atlas_and_find_name_a_planted_gpt_oss_neuron(tmp_path):
    """Neuron (2, 2, 7) planted to write the dog tokens is found at flat index 2*32+7, with the probability a
    hand-written decode (final RMSNorm, gain, LM head, softmax) gives it.  (In a 96-token random model some
    random neurons say "dogs" even more surely, so the planted one is not always first.)"""
    from steerkit.atlas import build_atlas
    from steerkit.find import find_word

    model = tiny_model("gpt_oss")
    with torch.no_grad():
        dog = model.lm_head.weight[[0, 1, 2, 3]].sum(0)
        model.model.layers[2].mlp.experts.down_proj[2, 7] = 10 * dog / dog.norm()  # [E, d_ff, d]: a row per neuron
    reader = open_weights(str(save_gguf(model, tmp_path / "m.gguf")))  # the GGUF carries the vocabulary
    atlas = build_atlas(reader, top_k=5, progress=False)
    assert atlas.token_ids.shape == (3, N_EXPERTS * EXPERT_WIDTH, 4, 5)
    _, hits = find_word(reader, atlas, "dog", limit=5)
    hit = next(h for h in hits if (h.layer, h.neuron) == (2, 2 * EXPERT_WIDTH + 7))
    v = torch.from_numpy(reader.down_cols(2)[2 * EXPERT_WIDTH + 7]).double()
    normed = v / v.pow(2).mean().add(reader.info.rms_eps).sqrt() * torch.from_numpy(reader.norm_gain()).double()
    probs = torch.softmax(torch.from_numpy(reader.unembedding()).double() @ normed, dim=0)
    assert hit.view == "write+" and hit.prob == pytest.approx(float(probs[[0, 1, 2, 3]].sum()), rel=1e-4)


def test_stock_llama_cpp_runs_the_patched_gpt_oss_file_like_the_hooks(tmp_path):
    """End to end: a complete tiny gpt-oss GGUF (F32), patched with every op, run by stock llama.cpp, against
    transformers with the same edits as hooks."""
    from steerkit.runtimes.llamacpp.patch import patch_gguf

    model = tiny_model("gpt_oss")
    source = save_full_gpt_oss_gguf(model, tmp_path / "gpt-oss.gguf")
    binding = open_weights(str(source)).binding()
    edits = [binding.edit_at(layer, flat, op, value) for layer in (0, 1, 2) for flat, op, value in
             ((3, "scale", 4.0), (37, "ablate", 0.0), (70, "clamp", 3.0), (101, "add", -5.0), (126, "scale", -2.0))]
    profile = Profile("oss", binding, edits)
    patch_gguf(source, [profile], tmp_path / "patched.gguf", progress=False)
    ids = [5, 17, 33, 60, 8, 44, 71, 12]
    noise, error, moved = patched_file_against_hooks(model, source, tmp_path / "patched.gguf",
                                                     compile_plan([profile], binding), ids)
    print(f"noise {noise:.4f}, patched vs hooks {error:.4f}, edit effect {moved:.3f}")
    assert moved > 30 * noise
    assert error <= 2 * noise + 1e-3


def test_baked_checkpoint_and_cli_patch_of_gpt_oss_and_its_gguf_refused_by_transformers(oss, tmp_path, monkeypatch):
    import subprocess
    import sys

    from steerkit.profile import dump_profile
    from steerkit.runtimes.hf.checkpoint import write_baked_checkpoint
    from test_checkpoint import _FakeTokenizer

    binding = model_binding(oss)
    profile = Profile("oss", binding, some_edits(binding))
    hf = save_hf(oss, tmp_path / "hf")
    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", lambda *a, **k: _FakeTokenizer())
    baked = write_baked_checkpoint(str(hf), [profile], tmp_path / "baked")
    ids = torch.randint(3, 90, (1, 7), generator=torch.Generator().manual_seed(5))
    handle = attach(oss, compile_plan([profile], binding))
    hooked = logits(oss, ids)
    handle.remove()
    torch.testing.assert_close(logits(AutoModelForCausalLM.from_pretrained(baked).eval(), ids), hooked, **CLOSE)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "steerkit.cli", *args], capture_output=True, text=True, timeout=300)

    yaml = tmp_path / "oss.yaml"
    yaml.write_text(dump_profile(profile))
    gguf = save_gguf(oss, tmp_path / "m.gguf")
    patched = cli("patch", str(gguf), str(yaml), "-o", str(tmp_path / "out.gguf"))
    assert patched.returncode == 0 and (tmp_path / "out.gguf").is_file(), patched.stderr
    refused = cli("bake", str(gguf), str(yaml), "-o", str(tmp_path / "from-gguf"))
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "transformers cannot load gpt-oss GGUFs (it drops the experts)" in refused.stderr
    assert not (tmp_path / "from-gguf").exists()
