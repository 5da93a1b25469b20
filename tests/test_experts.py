"""Mixture-of-experts models (Mixtral, Qwen3-MoE): a neuron is (layer, expert, index).

Tiny random models of both families are read from their Hugging Face folders and GGUFs, decoded
into an atlas, found by a planted word, edited by hooks (checked against a hand-written loop over
tokens and routed experts), baked and patched where weights can carry the edit, and refused in one
line where they cannot.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from transformers import AutoModelForCausalLM

from reference import edited, logits, manual_expert_edit, patched_file_against_hooks
from steerkit.architectures import arch_for_hf
from steerkit.errors import SteerkitError, UnsupportedEdit
from steerkit.plan import compile_plan
from steerkit.profile import Edit, ModelBinding, Profile, dump_profile, parse_profile
from steerkit.runtimes.hf.hooks import attach, attach_rows
from steerkit.runtimes.hf.modules import model_binding
from steerkit.weights import open_weights
from tiny_models import (EXPERT_WIDTH, MOE_ARCHS, N_EXPERTS, save_full_mixtral_gguf, save_gguf, save_hf, saved_config,
                         saved_names, tiny_model)

D_MODEL = 32
# The hook adds its correction after the experts' sum, the reference edits inside each expert: float32 sums in
# another order, ~1e-5 on logits of size ~10 here, against edit effects above 0.1.
CLOSE = dict(atol=1e-4, rtol=1e-5)


@pytest.fixture(params=sorted(MOE_ARCHS))
def moe(request):
    return tiny_model(request.param)


def fused(model, layer):
    """The model's own expert tensors, flattened to steerkit's order: gate, up ``[E*d_ff, d]``, down ``[E*d_ff, d]``."""
    experts = model.model.layers[layer].mlp.experts
    gate_up = experts.gate_up_proj.detach()
    gate = gate_up[:, :EXPERT_WIDTH].reshape(-1, D_MODEL).numpy()
    up = gate_up[:, EXPERT_WIDTH:].reshape(-1, D_MODEL).numpy()
    down = experts.down_proj.detach().transpose(1, 2).reshape(-1, D_MODEL).numpy()
    return gate, up, down


def some_edits(binding):
    return [binding.edit_at(1, 5, "clamp", 3.0), binding.edit_at(1, 40, "scale", 2.5),
            binding.edit_at(2, 100, "add", -4.0), binding.edit_at(0, 70, "ablate"), binding.edit_at(2, 101, "scale", 0.0)]


def test_readers_stack_experts_in_flat_order(moe, tmp_path):
    hf, f32 = save_hf(moe, tmp_path / "hf"), save_gguf(moe, tmp_path / "f32.gguf")
    q8 = save_gguf(moe, tmp_path / "q8.gguf", ffn_type=Q.Q8_0)
    for path in (hf, f32, q8):
        reader = open_weights(str(path))
        info = reader.info
        assert (info.n_experts, info.d_ff, info.neurons) == (N_EXPERTS, EXPERT_WIDTH, N_EXPERTS * EXPERT_WIDTH)
        assert reader.binding().n_experts == N_EXPERTS and reader.binding().arch == model_binding(moe).arch
        for layer in range(info.n_layers):
            gate, up, down = fused(moe, layer)
            tol = 0 if path != q8 else 0.02  # Q8_0: one int8 step of a block's scale
            np.testing.assert_allclose(reader.gate_rows(layer), gate, atol=tol, rtol=0)
            np.testing.assert_allclose(reader.up_rows(layer), up, atol=tol, rtol=0)
            np.testing.assert_allclose(reader.down_cols(layer), down, atol=tol, rtol=0)
            some = np.array([0, 31, 32, 77, 127])  # both ends of the first two experts, and the last neuron
            assert np.array_equal(reader.down_columns(layer, some), reader.down_cols(layer)[some])
            assert np.array_equal(reader.up_rows_of(layer, some), reader.up_rows(layer)[some])


def test_binding_matches_between_model_folder_and_gguf(moe, tmp_path):
    from dataclasses import replace

    hf = open_weights(str(save_hf(moe, tmp_path / "hf"))).binding()
    gguf = open_weights(str(save_gguf(moe, tmp_path / "m.gguf"))).binding()
    assert replace(hf, vocab_sha256=None) == replace(gguf, vocab_sha256=None) == model_binding(moe)
    assert gguf.label(2, 2 * EXPERT_WIDTH + 7) == "2:2:7"


def test_profile_names_the_expert_and_round_trips(moe):
    binding = model_binding(moe)
    profile = Profile("moe", binding, some_edits(binding))
    text = dump_profile(profile)
    assert "n_experts: 4" in text and "{layer: 1, expert: 1, neuron: 8, op: scale, value: 2.5}" in text
    again = parse_profile(text)
    assert again.edits == profile.edits and again.model == binding
    plan = compile_plan([again], binding)
    assert sorted(plan.groups[0].layers[0].neurons.tolist()) == [70]  # layer 0: expert 2, neuron 6 -> 2*32+6


def test_profile_expert_errors_name_the_line():
    moe = ModelBinding("mixtral", 3, 32, 32, 96, None, 4)
    head = "steerkit: 1\nname: t\nmodel: {arch: mixtral, n_layers: 3, d_model: 32, d_ff: 32, vocab_size: 96, n_experts: 4}\nedits:\n"
    with pytest.raises(SteerkitError, match=r"^p.yaml:5: edits\[0\]: expert: missing \(the model has 4 experts"):
        parse_profile(head + "  - {layer: 1, neuron: 3, op: ablate}\n", "p.yaml")
    with pytest.raises(SteerkitError, match=r"^p.yaml:5: edits\[0\].expert: .*4"):
        parse_profile(head + "  - {layer: 1, expert: 4, neuron: 3, op: ablate}\n", "p.yaml")
    with pytest.raises(SteerkitError, match=r"^p.yaml:6: edits\[1\]: neuron 1:2:3 is already edited by edits\[0\]"):
        parse_profile(head + "  - {layer: 1, expert: 2, neuron: 3, op: ablate}\n  - {layer: 1, expert: 2, neuron: 3, op: clamp, value: 1}\n", "p.yaml")
    dense = "steerkit: 1\nname: t\nmodel: {arch: llama, n_layers: 3, d_model: 32, d_ff: 48, vocab_size: 96}\nedits:\n"
    with pytest.raises(SteerkitError, match=r"^p.yaml:5: edits\[0\]: expert: given, but the model has no experts"):
        parse_profile(dense + "  - {layer: 1, expert: 0, neuron: 3, op: ablate}\n", "p.yaml")
    with pytest.raises(SteerkitError, match="expert: missing"):
        Profile("t", moe, [Edit(1, 3, "ablate")])
    other = ModelBinding("mixtral", 3, 32, 32, 96, None, 8)
    with pytest.raises(SteerkitError, match=r"model.n_experts: profile is for 4, this model has 8"):
        compile_plan([Profile("t", moe, [moe.edit_at(1, 3, "ablate")])], other)


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_hooks_edit_the_expert_neuron_like_the_reference(moe, strength):
    binding = model_binding(moe)
    edits = some_edits(binding)
    ids = torch.randint(3, 90, (2, 9), generator=torch.Generator().manual_seed(1))
    plain = logits(moe, ids)
    with manual_expert_edit(moe, edits, strength):
        wanted = logits(moe, ids)
    handle = attach(moe, compile_plan([Profile("t", binding, edits)], binding, strength))
    got = logits(moe, ids)
    handle.remove()
    assert (wanted - plain).abs().max() > 0.1  # the edits matter
    torch.testing.assert_close(got, wanted, **CLOSE)
    assert torch.equal(logits(moe, ids), plain)  # removed: exactly as before


def test_prompt_positions_and_per_row_plans_in_experts(moe):
    binding = model_binding(moe)
    edits = some_edits(binding)
    ids = torch.randint(3, 90, (2, 8), generator=torch.Generator().manual_seed(2))
    prompt = Profile("p", binding, edits, positions="prompt")
    handle = attach(moe, compile_plan([prompt], binding))
    handle.set_prompt_length(5)  # the first 5 positions are the prompt
    got = logits(moe, ids)
    handle.remove()
    with manual_expert_edit(moe, edits, token_mask=(torch.arange(8) < 5).repeat(2)):
        wanted = logits(moe, ids)
    torch.testing.assert_close(got, wanted, **CLOSE)

    # One plan per batch row: row 0 steered, row 1 at strength 0.5, each as if alone.
    plans = [compile_plan([Profile("a", binding, edits)], binding), compile_plan([Profile("a", binding, edits)], binding, 0.5)]
    handle = attach_rows(moe, plans)
    rows = logits(moe, ids)
    handle.remove()
    for row, plan in enumerate(plans):
        handle = attach(moe, plan)
        alone = logits(moe, ids[row:row + 1])
        handle.remove()
        torch.testing.assert_close(rows[row:row + 1], alone, **CLOSE)


def test_activation_peaks_count_routed_tokens_only(moe):
    from steerkit.runtimes.hf.measure import activation_scale

    class Ids:  # activation_scale tokenizes its text; tiny models have no tokenizer
        def __call__(self, text, return_tensors):
            return type("Batch", (), {"input_ids": torch.tensor([[int(t) for t in text.split()]])})()

    ids = torch.randint(3, 90, (1, 12), generator=torch.Generator().manual_seed(3))
    inputs, routes = {}, {}

    def keep(layer):
        def hook(module, args, output):
            inputs[layer], routes[layer] = args[0], args[1]
        return hook

    hooks = [moe.model.layers[layer].mlp.experts.register_forward_hook(keep(layer)) for layer in range(3)]
    peaks = activation_scale(moe, Ids(), " ".join(map(str, ids[0].tolist())))
    for hook in hooks:
        hook.remove()
    for layer in range(3):
        gate, up, _ = fused(moe, layer)
        h = torch.nn.functional.silu(inputs[layer] @ torch.from_numpy(gate).T) * (inputs[layer] @ torch.from_numpy(up).T)
        for flat in range(N_EXPERTS * EXPERT_WIDTH):
            routed = (routes[layer] == flat // EXPERT_WIDTH).any(dim=1)
            want = float(h[routed, flat].abs().max()) if routed.any() else 0.0
            assert peaks[layer, flat] == pytest.approx(want, rel=1e-5, abs=1e-6), (layer, flat)


def planted(model_type: str, layer=2, expert=2, index=7):
    """A tiny model whose expert neuron writes the tiny vocabulary's dog tokens."""
    model = tiny_model(model_type)
    with torch.no_grad():
        dog = model.lm_head.weight[[0, 1, 2, 3]].sum(0) if not model.config.tie_word_embeddings \
            else model.model.embed_tokens.weight[[0, 1, 2, 3]].sum(0)
        model.model.layers[layer].mlp.experts.down_proj[expert, :, index] = 10 * dog / dog.norm()
    return model


def test_atlas_decodes_every_expert_neuron_and_find_names_it(tmp_path):
    from steerkit.atlas import build_atlas
    from steerkit.full_decode import decode_side
    from steerkit.candidates import rank_candidates
    from steerkit.concept import concept_from_word
    from steerkit.find import find_word, quick_find

    reader = open_weights(str(save_gguf(planted("qwen3_moe"), tmp_path / "m.gguf")))
    atlas = build_atlas(reader, top_k=5, progress=False)
    assert atlas.token_ids.shape == (3, N_EXPERTS * EXPERT_WIDTH, 4, 5) and atlas.meta["n_experts"] == N_EXPERTS
    gain, head = torch.from_numpy(reader.norm_gain()), torch.from_numpy(reader.unembedding()).T.contiguous()
    for layer in range(3):
        _, _, down = fused_from_reader(reader, layer)
        ids, probs, lse = decode_side(torch.from_numpy(down), gain, head, reader.info.rms_eps, 5)
        assert np.array_equal(atlas.token_ids[layer, :, 2:], ids.numpy())
        np.testing.assert_allclose(atlas.lse[layer, :, 2:], lse.numpy(), rtol=1e-5)
    _, hits = find_word(reader, atlas, "dog", limit=3)
    assert (hits[0].layer, hits[0].neuron, hits[0].view) == (2, 2 * EXPERT_WIDTH + 7, "write+")
    # Without the atlas: `find` and discovery's ranking shortlist the same expert neuron.
    _, quick = quick_find(reader, "dog", limit=3, decode=48)
    assert [(h.layer, h.neuron, h.view) for h in quick] == [(h.layer, h.neuron, h.view) for h in hits]
    concept = concept_from_word("dog", reader.tokens())
    assert [(c.layer, c.neuron, c.sign) for c in rank_candidates(reader, None, concept, 4, shortlisted=48)] == [
        (c.layer, c.neuron, c.sign) for c in rank_candidates(reader, atlas, concept, 4)]


def fused_from_reader(reader, layer):
    return reader.gate_rows(layer), reader.up_rows(layer), reader.down_cols(layer)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "steerkit.cli", *args], capture_output=True, text=True, timeout=300)


def test_cli_names_expert_neurons(tmp_path):
    path = str(save_gguf(planted("qwen3_moe"), tmp_path / "m.gguf"))
    shown = run_cli("neuron", "2:2:7", "--model", path)
    assert shown.returncode == 0 and shown.stdout.startswith("neuron 2:2:7\n"), shown.stderr
    write = next(line for line in shown.stdout.splitlines() if line.strip().startswith("write+"))
    assert "dog" in write.split(",")[0].lower(), write
    found = run_cli("find", "dog", "--model", path, "--limit", "5")
    assert found.returncode == 0 and ["2:2:7", "write+"] in [line.split()[:2] for line in found.stdout.splitlines()]
    for address, message in (("2:7", "has 4 experts per layer: expected LAYER:EXPERT:INDEX"),
                             ("2:4:7", "out of range (experts 0..3, neurons 0..31)")):
        refused = run_cli("neuron", address, "--model", path)
        assert refused.returncode != 0 and message in refused.stderr and "Traceback" not in refused.stderr
    dense = str(save_gguf(tiny_model("llama"), tmp_path / "dense.gguf"))
    refused = run_cli("neuron", "2:0:7", "--model", dense)
    assert refused.returncode != 0 and "no experts: expected LAYER:INDEX" in refused.stderr


def test_baked_scale_and_ablate_match_hooks_and_reload(moe, tmp_path):
    from steerkit.runtimes.hf.bake import bake, prepare_for_save

    binding = model_binding(moe)
    edits = [e for e in some_edits(binding) if e.op in ("scale", "ablate")]
    plan = compile_plan([Profile("t", binding, edits)], binding)
    ids = torch.randint(3, 90, (2, 9), generator=torch.Generator().manual_seed(4))
    plain = logits(moe, ids)
    handle = attach(moe, plan)
    hooked = logits(moe, ids)
    handle.remove()
    baked = bake(moe, plan)
    torch.testing.assert_close(logits(moe, ids), hooked, **CLOSE)
    prepare_for_save(moe)
    moe.save_pretrained(tmp_path / "baked")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "baked").eval()
    torch.testing.assert_close(logits(reloaded, ids), hooked, **CLOSE)
    baked.remove()
    assert torch.equal(logits(moe, ids), plain)
    # Serving engines load the family's own per-expert checkpoint names: the baked folder must keep them, and
    # its config, exactly as an unedited save writes them (docs/runtimes.md, the MoE engine table).
    moe.save_pretrained(tmp_path / "plain")
    assert saved_names(tmp_path / "baked") == saved_names(tmp_path / "plain")
    layout = arch_for_hf(moe.config.model_type, "test").experts
    assert f"{layout.hf_prefix.format(layer=1, expert=0)}.{layout.hf_names[1]}.weight" in saved_names(tmp_path / "baked")
    assert saved_config(tmp_path / "baked") == saved_config(tmp_path / "plain")
    clamp = compile_plan([Profile("c", binding, [binding.edit_at(1, 5, "clamp", 3.0)])], binding)
    before = moe.model.layers[1].mlp.experts.gate_up_proj.detach().clone()
    with pytest.raises(UnsupportedEdit, match="clamp/add edits of expert neurons cannot be baked"):
        bake(moe, clamp)
    assert torch.equal(moe.model.layers[1].mlp.experts.gate_up_proj, before)


def test_patched_gguf_scales_expert_up_rows_and_refuses_clamp(moe, tmp_path):
    from gguf import GGUFReader

    from steerkit.runtimes.llamacpp.cvec import export_control_vector
    from steerkit.runtimes.llamacpp.patch import patch_gguf

    source = save_gguf(moe, tmp_path / "q8.gguf", ffn_type=Q.Q8_0)
    binding = open_weights(str(source)).binding()
    edits = [binding.edit_at(1, 40, "scale", 2.0), binding.edit_at(1, 3, "ablate"), binding.edit_at(2, 127, "scale", -1.0)]
    report = patch_gguf(source, [Profile("t", binding, edits)], tmp_path / "out.gguf", progress=False)
    assert report.scaled_rows == 3
    before, after = open_weights(str(source)), open_weights(str(tmp_path / "out.gguf"))
    for layer in range(3):
        wanted = before.up_rows(layer)
        for edit in edits:
            if edit.layer == layer:
                flat = edit.flat_neuron(EXPERT_WIDTH)
                wanted[flat] = edited(torch.from_numpy(wanted[flat]), edit).numpy()
        assert np.array_equal(after.up_rows(layer), wanted)  # factors 2, 0, -1: exact
        assert np.array_equal(after.down_cols(layer), before.down_cols(layer))
        assert np.array_equal(after.gate_rows(layer), before.gate_rows(layer))
    # Only ffn_up_exps bytes of layers 1 and 2 changed.
    old, new = ({t.name: bytes(t.data.tobytes()) for t in GGUFReader(p).tensors} for p in (source, tmp_path / "out.gguf"))
    assert {name for name in old if old[name] != new[name]} == {"blk.1.ffn_up_exps.weight", "blk.2.ffn_up_exps.weight"}
    clamp = Profile("c", binding, [binding.edit_at(1, 5, "clamp", 3.0)])
    with pytest.raises(SteerkitError, match="clamp/add edits of expert neurons cannot be patched"):
        patch_gguf(source, [clamp], tmp_path / "clamp.gguf", progress=False, approximate=True)
    assert not (tmp_path / "clamp.gguf").exists()
    with pytest.raises(UnsupportedEdit, match="cannot become a constant vector"):
        export_control_vector(compile_plan([Profile("a", binding, [binding.edit_at(1, 5, "add", 3.0)])], binding),
                              open_weights(str(source)))


def test_stock_llama_cpp_runs_the_patched_moe_file_like_the_hooks(tmp_path):
    """End to end: a complete tiny Mixtral GGUF patched with scale/ablate edits, run by stock llama.cpp, against
    transformers with the edits as hooks.  F32 experts: llama.cpp's Q8_0 kernels quantize the activations
    too, which flips near-tied routing choices of a random tiny model (measured: 7.8 on one position's
    logits, 0.1 on the others); the quantized rows' scale fields are checked exactly above."""
    from steerkit.runtimes.llamacpp.patch import patch_gguf

    model = tiny_model("mixtral")
    source = save_full_mixtral_gguf(model, tmp_path / "mixtral.gguf")
    reader = open_weights(str(source))
    binding = reader.binding()
    edits = [binding.edit_at(layer, flat, op, value) for layer in (0, 1, 2) for flat, op, value in
             ((3, "scale", 4.0), (37, "ablate", 0.0), (70, "scale", -3.0), (101, "scale", 6.0), (126, "ablate", 0.0))]
    profile = Profile("moe", binding, edits)
    patch_gguf(source, [profile], tmp_path / "patched.gguf", progress=False)
    ids = [5, 17, 33, 60, 8, 44, 71, 12]
    noise, error, moved = patched_file_against_hooks(model, source, tmp_path / "patched.gguf",
                                                     compile_plan([profile], binding), ids)
    print(f"noise {noise:.4f}, patched vs hooks {error:.4f}, edit effect {moved:.3f}")
    assert moved > 30 * noise  # the edits move the logits far beyond the runtimes' disagreement
    assert error <= 2 * noise + 1e-3
