"""Parity of the patched GGUF (run by llama.cpp) with the HF hooks, on the real default model."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
import torch

from steerkit.runtimes.hf import load_model, model_binding, steered
from steerkit.runtimes.llamacpp.model import LlamaCppModel
from steerkit.runtimes.llamacpp.patch import patch_gguf
from steerkit.plan import compile_plan
from steerkit.profile import Edit, Profile
from steerkit.sources import resolve_model

pytestmark = pytest.mark.real

TEXTS = [
    "My dog likes to run in the park with other dogs, and then we go home for dinner. After dinner he sleeps on the rug by the fire while I read the newspaper and drink a cup of tea.",
    "Write a short poem about the sea and the sky, with a rhyme in every line. The waves roll in and the gulls cry out, the clouds drift by without a doubt.",
    "The capital of France is Paris, and it is known for its museums and food. Every year millions of visitors climb the Eiffel Tower and walk along the Seine.",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n\nprint([fibonacci(i) for i in range(10)])",
    "Once upon a time, in a small village by the mountains, there lived an old baker who woke up before dawn every morning to bake bread for the whole village.",
    "Photosynthesis is the process by which green plants use sunlight, water and carbon dioxide to make glucose and oxygen. It takes place in the chloroplasts of leaf cells.",
    "To make a good cup of coffee, grind the beans just before brewing, use water just below boiling, and let it steep for about four minutes before pressing.",
    "The football match ended in a draw after the home team scored a late penalty. Fans celebrated in the streets, singing songs until long after midnight.",
    "In 1969, astronauts landed on the Moon for the first time. Neil Armstrong stepped onto the surface and said that it was one small step for a man.",
    "Dear customer, thank you for your order. Your package has been shipped and should arrive within three to five business days. Please contact us with any questions.",
]
EDITS = {
    "clamp": [Edit(29, 808, "clamp", 30.0), Edit(20, 100, "clamp", -5.0)],
    "scale": [Edit(29, 808, "scale", 3.0), Edit(25, 77, "scale", -2.0)],
    # Single ablations barely move this model; 96 neurons over three layers do.
    "ablate": [Edit(layer, j, "ablate") for layer in (2, 15, 29) for j in range(0, 1536, 48)],
    "add": [Edit(29, 808, "add", 12.0), Edit(15, 1000, "add", -4.0)],
}

# Bounds on how far a patched file may be from the hooks: the figures measured (docs/measurements.md) plus a
# stated margin. The measure's own noise is what the F32 copy shows, where both runtimes compute with the same
# weights: there the four ops' KL ratios to the unpatched baseline spread 0.91-1.17, so a ratio is read to
# within NOISE = 0.17, and each bound is the largest ratio measured plus that.
NOISE = 0.17
Q4_RATIO = 1.09 + NOISE  # SmolLM2 Q4_1: clamp 1.09, scale 1.09, ablate 1.06, add 1.02
F32_RATIO = 1.17 + NOISE  # the F32 copy: 0.91-1.17
GEMMA_RATIO = 1.12 + NOISE  # Gemma 3 Q4_K_M, 192 neurons: scale 1.12, ablate 1.05
PROMPT_VECTOR_RATIO = 0.44 + NOISE  # the japan profile's prompt-position vector: 0.44
UNTIL_RATIO = 1.26 + NOISE  # the until-release, per text: 1.08 and 1.26 (checked on both texts pooled)
# The Gemma stand-in is an approximation with an error of its own: 0.0263 in llama.cpp (the file states 0.0249,
# measured in transformers); allowed: that plus twice the unpatched runtimes' disagreement (0.0043).
STAND_IN_KL = 0.026


def kl_per_position(p_logits: np.ndarray, q_logits: np.ndarray) -> np.ndarray:
    p = torch.log_softmax(torch.from_numpy(p_logits), -1)
    q = torch.log_softmax(torch.from_numpy(q_logits), -1)
    return (p.exp() * (p - q)).sum(-1).numpy()


@pytest.fixture(scope="module")
def setup():
    model, tokenizer = load_model("smollm2-135m")
    ids = [tokenizer(t).input_ids for t in TEXTS]
    return model, tokenizer, ids


def hf_logits(model, ids, plan=None) -> list[np.ndarray]:
    out = []
    for row in ids:
        with torch.no_grad():
            if plan is None:
                out.append(model(torch.tensor([row])).logits[0].numpy())
            else:
                with steered(model, plan):
                    out.append(model(torch.tensor([row])).logits[0].numpy())
    return out


def compare(hf: list[np.ndarray], cpp: list[np.ndarray]) -> tuple[float, float]:
    kl = np.concatenate([kl_per_position(h, c) for h, c in zip(hf, cpp)]).mean()
    top1 = np.concatenate([h.argmax(-1) == c.argmax(-1) for h, c in zip(hf, cpp)]).mean()
    return float(kl), float(top1)


@pytest.fixture(scope="module")
def baseline(setup):
    model, _, ids = setup
    cpp = LlamaCppModel(resolve_model().path)
    return compare(hf_logits(model, ids), [cpp.logits(row) for row in ids])


@pytest.mark.parametrize("op", sorted(EDITS))
def test_patched_gguf_matches_hf_hooks(setup, baseline, op, tmp_path):
    model, tokenizer, ids = setup
    binding = model_binding(model, tokenizer)
    profile = Profile(op, binding, EDITS[op])
    patch_gguf(resolve_model().path, [profile], tmp_path / "patched.gguf", progress=False)
    cpp = LlamaCppModel(tmp_path / "patched.gguf")
    steered_hf = hf_logits(model, ids, compile_plan([profile], binding))
    kl, top1 = compare(steered_hf, [cpp.logits(row) for row in ids])
    base_kl, base_top1 = baseline
    moved, _ = compare(steered_hf, hf_logits(model, ids))
    print(f"{op}: KL {kl:.4f} (baseline {base_kl:.4f}, ratio {kl / base_kl:.2f}), top-1 {top1:.3f} "
          f"(baseline {base_top1:.3f}), the edit itself moves KL {moved:.3f}")
    assert kl <= Q4_RATIO * base_kl
    assert top1 >= base_top1 - 0.03
    assert moved > 2 * kl  # the check can see the edit: it moves far more than the runtimes disagree


@pytest.fixture(scope="module")
def f32_copy(setup, tmp_path_factory):
    """The default model dequantized to F32 (llama.cpp then computes with exactly transformers' weights),
    and its unpatched KL / top-1 against the HF runtime."""
    from dequantized import write_f32_copy

    model, _, ids = setup
    path = write_f32_copy(resolve_model().path, tmp_path_factory.mktemp("f32") / "smollm2-f32.gguf")
    return path, compare(hf_logits(model, ids), [LlamaCppModel(path).logits(row) for row in ids])


@pytest.mark.parametrize("op", sorted(EDITS))
def test_patch_is_exact_on_f32_weights(setup, f32_copy, op, tmp_path):
    """Top-1 >= 98 %: on the quantized model even the unpatched file agrees 96.9 % (8-bit activations in
    llama.cpp's quantized matmuls); on an F32 copy the patched file must agree as well as the unpatched one."""
    model, tokenizer, ids = setup
    binding = model_binding(model, tokenizer)
    profile = Profile(op, binding, EDITS[op])
    source, (base_kl, base_top1) = f32_copy
    patch_gguf(source, [profile], tmp_path / "patched.gguf", progress=False)
    steered_hf = hf_logits(model, ids, compile_plan([profile], binding))
    kl, top1 = compare(steered_hf, [LlamaCppModel(tmp_path / "patched.gguf").logits(row) for row in ids])
    moved, _ = compare(steered_hf, hf_logits(model, ids))
    print(f"f32 {op}: KL {kl:.2e} (baseline {base_kl:.2e}, ratio {kl / base_kl:.2f}), top-1 {top1:.4f} "
          f"(baseline {base_top1:.4f}), the edit itself moves KL {moved:.3f}")
    assert kl <= F32_RATIO * base_kl and top1 >= 0.98 and moved > 1000 * kl


def test_patched_dog_answer_in_llama_cpp(tmp_path):
    from steerkit.profile import load_profile
    from steerkit.shipped import shipped_profile

    patch_gguf(resolve_model().path, [load_profile(shipped_profile("dog-clamp"))], tmp_path / "dog.gguf", progress=False)
    question = [{"role": "user", "content": "What is your favourite animal?"}]
    plain = LlamaCppModel(resolve_model().path).chat(question, max_tokens=20)
    steered_text = LlamaCppModel(tmp_path / "dog.gguf").chat(question, max_tokens=20)
    assert "dog" not in plain.lower() and "cat" not in plain.lower(), plain
    assert "dog" in steered_text.lower(), steered_text


def test_control_vector_layer_convention(setup, tmp_path):
    """direction.N acts on the output of layer N: matches HF add hooks there, not at N-1 or N+1."""
    from steerkit.runtimes.llamacpp.cvec import control_vector, read_control_vector, write_control_vector
    from steerkit.weights import open_weights

    model, tokenizer, ids = setup
    binding = model_binding(model, tokenizer)
    profile = Profile("add", binding, [Edit(15, 1000, "add", -8.0), Edit(15, 3, "add", 6.0), Edit(22, 5, "add", 5.0)])
    plan = compile_plan([profile], binding)
    vector = control_vector(plan, open_weights("smollm2-135m"))
    path = write_control_vector(vector, 30, tmp_path / "add.cvec.gguf")
    directions = read_control_vector(path)  # the file round-trips
    assert sorted(directions) == [15, 22] and all(np.array_equal(directions[k], vector.directions[k]) for k in directions)
    cpp = LlamaCppModel(resolve_model().path)
    steered_hf = hf_logits(model, ids[:4], plan)
    results = {}
    for shift in (-1, 0, 1):
        cpp.set_control_vector({layer + shift: d for layer, d in directions.items()})
        results[shift] = compare(steered_hf, [cpp.logits(row) for row in ids[:4]])[0]
    cpp.set_control_vector(None)
    moved, _ = compare(steered_hf, hf_logits(model, ids[:4]))
    assert results[0] < 0.01 < moved
    assert results[-1] > 10 * results[0] and results[1] > 10 * results[0]


def test_llama_cpp_session_switches_profiles():
    from steerkit.sampling import GREEDY
    from steerkit.session import open_session

    session = open_session("smollm2-135m", runtime="llama.cpp")
    assert session.backend.name == "llama.cpp"
    plain = session.generate("What is your favourite animal?", 20, GREEDY)
    session.add_profile("dog-clamp")
    steered_text = session.generate("What is your favourite animal?", 20, GREEDY)
    session.enabled = False
    again = session.generate("What is your favourite animal?", 20, GREEDY)
    assert "dog" in steered_text.lower() and "dog" not in plain.lower()
    assert again == plain  # steering off: identical to the untouched model


GEMMA_EDITS = {
    "scale": [Edit(layer, j, "scale", 3.0) for layer in (5, 12, 17) for j in range(7, 2048, 32)],
    "ablate": [Edit(layer, j, "ablate") for layer in (3, 9, 16) for j in range(0, 2048, 32)],
}


@pytest.mark.parametrize("op", sorted(GEMMA_EDITS))
def test_gemma3_scale_and_ablate_parity(op, tmp_path):
    """Gemma 3: scale/ablate are pure up_proj row edits, so the patched GGUF needs no extra tensor."""
    model, tokenizer = gemma3()
    ids = [tokenizer(t).input_ids for t in TEXTS[:5]]
    binding = model_binding(model, tokenizer)
    profile = Profile(op, binding, GEMMA_EDITS[op])
    source = resolve_model("gemma3-270m").path
    patch_gguf(source, [profile], tmp_path / "patched.gguf", progress=False)
    base_kl, base_top1 = compare(hf_logits(model, ids), [_gemma_cpp().logits(row) for row in ids])
    steered_hf = hf_logits(model, ids, compile_plan([profile], binding))
    kl, top1 = compare(steered_hf, [LlamaCppModel(tmp_path / "patched.gguf").logits(row) for row in ids])
    moved, _ = compare(steered_hf, hf_logits(model, ids))
    print(f"gemma3 {op}: KL {kl:.4f} (baseline {base_kl:.4f}, ratio {kl / base_kl:.2f}), top-1 {top1:.3f} "
          f"(baseline {base_top1:.3f}), the edit itself moves KL {moved:.3f}")
    assert kl <= GEMMA_RATIO * base_kl and top1 >= base_top1 - 0.03 and moved > 2 * kl


def test_gemma3_clamp_approximation_figure(tmp_path):
    """Gemma 3 clamp via --approximate: up rows zeroed exactly, plus a fitted stand-in (post-FFN norm gains in the
    file, offsets as a control vector); measured in llama.cpp against the HF hooks, and described in the file."""
    import re

    from steerkit.runtimes.llamacpp import embedded_profile
    from steerkit.runtimes.llamacpp.cvec import read_control_vector
    from steerkit.weights.gguf_reader import GGUFWeights

    model, tokenizer = gemma3()
    ids = [tokenizer(t).input_ids for t in TEXTS[:5]]
    binding = model_binding(model, tokenizer)
    profile = Profile("clamp", binding, [Edit(17, 100, "clamp", 10.0), Edit(12, 5, "clamp", 10.0)])
    report = patch_gguf(resolve_model("gemma3-270m").path, [profile], tmp_path / "clamp.gguf", progress=False,
                        approximate=True)
    cpp = LlamaCppModel(report.output)
    cpp.set_control_vector(read_control_vector(report.control_vector))
    steered_hf = hf_logits(model, ids, compile_plan([profile], binding))
    kl, top1 = compare(steered_hf, [cpp.logits(row) for row in ids])
    base_kl, base_top1 = compare(hf_logits(model, ids), [_gemma_cpp().logits(row) for row in ids])
    moved, _ = compare(steered_hf, hf_logits(model, ids))
    print(f"gemma3 clamp stand-in: KL {kl:.4f} vs HF hooks (baseline {base_kl:.4f}, ratio {kl / base_kl:.1f}), "
          f"top-1 {top1:.3f} (baseline {base_top1:.3f}); the exact edit moves KL {moved:.3f}")
    # Measured: 0.026 / 91.6 % (the offsets alone, unfitted: KL 2.73 / 39 %, i.e. nothing of the edit).
    assert kl <= STAND_IN_KL + 2 * base_kl and top1 >= 0.9
    note = embedded_profile(GGUFWeights(report.output))["approximation"]
    assert note == report.approximation and "APPROXIMATION" in note and report.control_vector.name in note
    stated = float(re.search(r"mean KL per position ([0-9.]+)", note).group(1))
    print(f"gemma3 clamp stand-in: the file states KL {stated}")
    assert abs(kl - stated) <= 2 * base_kl  # the file's own figure is what llama.cpp shows, within the runtimes' noise


def test_gemma3_export_cvec_fitted_offsets(tmp_path):
    """export-cvec on Gemma: offsets fitted for the unpatched model beat the plain add * W_down[:, j]."""
    from steerkit.runtimes.llamacpp.cvec import control_vector, export_control_vector
    from steerkit.weights.gguf_reader import GGUFWeights

    model, tokenizer = gemma3()
    ids = [tokenizer(t).input_ids for t in TEXTS[:5]]
    binding = model_binding(model, tokenizer)
    plan = compile_plan([Profile("clamp", binding, [Edit(17, 100, "clamp", 10.0), Edit(12, 5, "clamp", 10.0)])], binding)
    weights = GGUFWeights(resolve_model("gemma3-270m").path)
    steered_hf = hf_logits(model, ids, plan)
    cpp = _gemma_cpp()
    results = {}
    for name, vector in (("plain", control_vector(plan, weights)), ("fitted", export_control_vector(plan, weights, False))):
        cpp.set_control_vector(vector.directions)
        results[name] = compare(steered_hf, [cpp.logits(row) for row in ids])
    cpp.set_control_vector(None)
    moved, _ = compare(steered_hf, hf_logits(model, ids))
    print(f"gemma3 export-cvec: plain KL {results['plain'][0]:.3f} / top-1 {results['plain'][1]:.3f}, fitted KL "
          f"{results['fitted'][0]:.3f} / top-1 {results['fitted'][1]:.3f}; the exact edit moves KL {moved:.3f}")
    # Measured: plain 2.71 / 40 %, fitted 0.44 / 66 % (0.16 of the plain vector's and of the edit's KL; allowed 0.25).
    assert results["fitted"][0] < 0.25 * results["plain"][0] and results["fitted"][0] < 0.25 * moved


_CACHE: dict = {}


def gemma3():
    if "hf" not in _CACHE:
        _CACHE["hf"] = load_model("gemma3-270m")
    return _CACHE["hf"]


def _gemma_cpp() -> LlamaCppModel:
    if "cpp" not in _CACHE:
        _CACHE["cpp"] = LlamaCppModel(resolve_model("gemma3-270m").path)
    return _CACHE["cpp"]


def test_prompt_position_profile_matches_hf_in_llama_cpp(setup, baseline):
    """A discovered profile (adds on prompt positions) runs in llama.cpp as a control vector set for the prompt only."""
    from steerkit.runtimes.hf import attach
    from steerkit.runtimes.llamacpp.prompt_vector import vector_steering
    from steerkit.profile import load_profile
    from steerkit.shipped import shipped_profile
    from steerkit.weights.gguf_reader import GGUFWeights

    model, tokenizer, ids = setup
    profile = load_profile(shipped_profile("japan"))  # steerkit 0.3's discovery: two neurons, prompt positions
    assert profile.positions == "prompt" and all(e.op == "add" for e in profile.edits)
    plan = compile_plan([profile], model_binding(model, tokenizer))
    steering = vector_steering(GGUFWeights(resolve_model().path), plan)
    cpp = LlamaCppModel(resolve_model().path)
    hf, cpp_logits, plain = [], [], hf_logits(model, ids)
    for row in ids:
        split = len(row) // 2
        handle = attach(model, plan)
        handle.set_prompt_length(split)
        with torch.no_grad():
            hf.append(model(torch.tensor([row])).logits[0].numpy())
        handle.remove()
        cpp_logits.append(cpp.logits_steered(row[:split], row[split:], steering))
    kl, top1 = compare(hf, cpp_logits)
    moved, _ = compare(hf, plain)
    base_kl, base_top1 = baseline
    print(f"prompt-position japan profile: KL {kl:.4f} (baseline {base_kl:.4f}, ratio {kl / base_kl:.2f}), "
          f"top-1 {top1:.3f} (baseline {base_top1:.3f}), the edit moves KL {moved:.3f}")
    assert kl <= PROMPT_VECTOR_RATIO * base_kl and top1 >= base_top1 - 0.03 and moved > 2 * kl
    # The vector is cleared after the prompt: decoding the same tokens again unsteered gives the plain logits.
    np.testing.assert_allclose(cpp.logits(ids[0]), LlamaCppModel(resolve_model().path).logits(ids[0]), atol=1e-4)


def test_until_profile_is_released_at_the_same_token_in_both_runtimes(setup, baseline):
    """Adds on the answer until it names "dog": llama.cpp (control vector dropped at the naming token) against
    the transformers hooks (mask ending there), over texts whose continuation names the word, and over one
    that never does."""
    from steerkit.concept import named_so_far
    from steerkit.runtimes.hf import attach
    from steerkit.runtimes.llamacpp.prompt_vector import vector_steering
    from steerkit.weights.gguf_reader import GGUFWeights

    model, tokenizer, _ = setup
    binding = model_binding(model, tokenizer)
    edits = [Edit(24, j, "add", 2.0 * (1 if j % 2 else -1)) for j in range(0, 1536, 8)]
    profile = Profile("u", binding, edits, positions="generated", until="dog")
    always = Profile("a", binding, edits, positions="generated")
    pairs = [("Tell me about your pet.", " I have a small dog called Rex. He loves long walks in the rain."),
             ("Write a line about the sea.", " The waves roll in and the gulls cry out over the grey water.")]
    cpp = LlamaCppModel(resolve_model().path)
    weights = GGUFWeights(resolve_model().path)
    pooled = []
    for prompt, rest in pairs:
        prompt_ids = tokenizer(prompt).input_ids
        rest_ids = tokenizer(rest, add_special_tokens=False).input_ids
        row = prompt_ids + rest_ids
        outputs = {}
        for name, p in (("until", profile), ("always", always)):
            plan = compile_plan([p], binding)
            handle = attach(model, plan, tokenizer)
            handle.set_prompt_length(len(prompt_ids))
            with torch.no_grad():
                hf = model(torch.tensor([row])).logits[0].numpy()
            handle.remove()
            outputs[name] = (hf, cpp.logits_steered(prompt_ids, rest_ids, vector_steering(weights, plan)))
        kl, top1 = compare([outputs["until"][0]], [outputs["until"][1]])
        base_kl, _ = baseline
        print(f"until profile, {prompt!r}: KL {kl:.4f} (baseline {base_kl:.4f}, ratio {kl / base_kl:.2f}), top-1 {top1:.3f}")
        assert top1 >= 0.9, (prompt, kl, top1)
        pooled.append(outputs["until"])
        named = next((k for k in range(len(rest_ids)) if named_so_far("dog", tokenizer.decode(rest_ids[:k + 1]))), None)
        for hf_or_cpp in (0, 1):
            until, steered_always = outputs["until"][hf_or_cpp], outputs["always"][hf_or_cpp]
            start = len(prompt_ids) + (named if named is not None else len(rest_ids))
            # Before the naming token both profiles compute the same; from it on only 'always' is steered.
            np.testing.assert_allclose(until[:start], steered_always[:start], atol=1e-3)
            if named is not None:
                assert np.abs(until[start:] - steered_always[start:]).max() > 0.1
    kl, _ = compare([hf for hf, _ in pooled], [cpp_logits for _, cpp_logits in pooled])
    assert kl <= UNTIL_RATIO * baseline[0], kl


def test_discovered_dog_profile_answers_in_llama_cpp():
    from steerkit.sampling import GREEDY
    from steerkit.session import open_session

    session = open_session(runtime="llama.cpp")
    session.add_profile("dog")
    steered_text = session.generate("What is your favourite animal?", 20, GREEDY)
    session.enabled = False
    plain = session.generate("What is your favourite animal?", 20, GREEDY)
    assert "dog" in steered_text.lower() and "dog" not in plain.lower(), (steered_text, plain)


_EDIT_VALUES = st.one_of(st.floats(-50, 50), st.sampled_from([0.0, 1e-30, -1e5, 1e5, 65504.0, -65504.0]))
_EDITS = st.lists(st.builds(Edit, layer=st.integers(0, 29), neuron=st.integers(0, 1535),
                            op=st.sampled_from(["clamp", "scale", "add", "ablate"]), value=_EDIT_VALUES),
                  min_size=1, max_size=12, unique_by=lambda e: (e.layer, e.neuron))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(profiles=st.lists(_EDITS, min_size=1, max_size=3),
       strength=st.one_of(st.none(), st.floats(-1e3, 1e3), st.sampled_from([0.0, 1e3, -1e3])))
def test_every_patched_output_loads_in_llama_cpp(tmp_path, profiles, strength):
    """Random profiles (every op, extreme values, several profiles, any strength) are either refused in one
    line or patched into a file that llama-cpp-python loads and runs; moderate edits give finite logits."""
    from steerkit.errors import SteerkitError
    from steerkit.runtimes.llamacpp.cvec import export_control_vector, write_control_vector
    from steerkit.weights import open_weights

    reader = open_weights("smollm2-135m")
    made = [Profile(f"p{i}", reader.binding(), edits) for i, edits in enumerate(profiles)]
    out = tmp_path / "fuzz.gguf"
    out.unlink(missing_ok=True)
    try:
        patch_gguf(resolve_model().path, made, out, strength=strength, progress=False)
    except SteerkitError as exc:
        assert "\n" not in str(exc) and not out.exists()
        event(f"patch refused: {str(exc).split(':')[-1][:40]}")
        return
    event("patched")
    model = LlamaCppModel(out, n_ctx=64)
    logits = model.logits([1, 504, 3767, 314])
    moderate = all(abs(e.value) <= 50 for edits in profiles for e in edits) and abs(strength or 1.0) <= 10
    assert logits.shape == (4, 49152)
    if moderate:
        assert np.isfinite(logits).all()
    plan = compile_plan(made, reader.binding(), strength)
    try:  # the additive part as a control vector: refused in one line, or written, read back and applied
        vector = export_control_vector(plan, reader, progress=False)
        path = write_control_vector(vector, 30, tmp_path / "fuzz.cvec.gguf")
    except SteerkitError as exc:
        assert "\n" not in str(exc)
        return
    if vector.directions:
        plain = LlamaCppModel(resolve_model().path, n_ctx=64)
        from steerkit.runtimes.llamacpp.cvec import read_control_vector

        plain.set_control_vector(read_control_vector(path))
        assert plain.logits([1, 504, 3767, 314]).shape == (4, 49152)
