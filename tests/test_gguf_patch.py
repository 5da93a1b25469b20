"""GGUF patching: exact row scaling per quant type, untouched bytes, added biases, metadata, bad input."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as Q, GGUFReader
from gguf.quants import dequantize

from steerkit.runtimes.llamacpp.patch import embedded_profile, patch_gguf
from steerkit.runtimes.llamacpp.scales import SCALE_FIELDS, scale_rows
from steerkit.errors import SteerkitError
from steerkit.gguf_file import GGUFFile
from steerkit.profile import Edit, ModelBinding, Profile, vocab_sha256
from steerkit.weights import open_weights
from tiny_models import save_gguf, tiny_model, tiny_tokens

ROWS, COLS = 6, 512
FLOATS = {Q.F32: np.float32, Q.F16: np.float16}


def random_tensor(qtype: Q, rng: np.random.Generator) -> np.ndarray:
    """Raw bytes of a [ROWS, COLS] tensor: random blocks with sane fp16 scale fields."""
    if qtype in FLOATS:
        return rng.normal(size=(ROWS, COLS)).astype(FLOATS[qtype])
    if qtype == Q.BF16:
        return (rng.normal(size=(ROWS, COLS)).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).reshape(ROWS, -1)
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, size=(ROWS, COLS // block_size, type_size), dtype=np.uint8)
    for offset in SCALE_FIELDS[qtype]:
        scales = rng.uniform(0.01, 0.1, size=blocks.shape[:2]).astype(np.float16)
        blocks[:, :, offset : offset + 2] = scales[..., None].view(np.uint8)
    return blocks.reshape(ROWS, -1)


def values(data: np.ndarray, qtype: Q) -> np.ndarray:
    return np.asarray(dequantize(data, qtype), dtype=np.float32).reshape(ROWS, COLS)


@pytest.mark.parametrize("qtype", [Q.F32, Q.F16, Q.BF16, *SCALE_FIELDS], ids=lambda q: q.name)
@pytest.mark.parametrize("factor", [0.0, 1.0, -1.0, 2.0, -2.0, 0.7])
def test_row_scaling_is_exact(qtype, factor):
    rng = np.random.default_rng(int(qtype) * 7 + 3)
    data = random_tensor(qtype, rng)
    rows = np.array([1, 4])
    patched = scale_rows(data, qtype, rows, np.full(len(rows), factor), "blk.0.ffn_up.weight")
    before, after = values(data, qtype), values(patched, qtype)
    others = np.setdiff1d(np.arange(ROWS), rows)
    assert np.array_equal(data[others], patched[others])  # other rows: identical bytes
    if factor in (0.0, 1.0, -1.0, 2.0, -2.0):
        assert np.array_equal(after[rows], factor * before[rows])  # bit-exact
    elif qtype in FLOATS or qtype == Q.BF16 or len(SCALE_FIELDS[qtype]) == 1:
        # One rounding of each value (F16) or of the one fp16 scale it is a multiple of: at most half an
        # ulp, 2^-11 relative (bf16: 2^-8; F32: 2^-24), plus float32 dequantization noise.
        bound = {Q.F32: 2.0**-24, Q.BF16: 2.0**-8}.get(qtype, 2.0**-11) + 2.0**-22
        error = np.abs(after[rows] - factor * before[rows])
        assert (error <= bound * np.abs(factor * before[rows])).all(), error.max()
    else:  # value = d*q + m: both fp16 fields rounded (checked below), values may cancel
        np.testing.assert_allclose(after[rows], factor * before[rows], rtol=2.0**-11, atol=2.0**-11 * np.abs(before).max())
    if qtype in SCALE_FIELDS:  # every rewritten fp16 scale field is the exact product rounded once
        _, type_size = GGML_QUANT_SIZES[qtype]
        for offset in SCALE_FIELDS[qtype]:
            old_field, new_field = (np.ascontiguousarray(d[rows].reshape(len(rows), -1, type_size)[:, :, offset:offset + 2])
                                    .view(np.float16)[..., 0].astype(np.float64) for d in (data, patched))
            assert (np.abs(new_field - factor * old_field) <= 2.0**-11 * np.abs(factor * old_field)).all()
    if qtype not in FLOATS and qtype != Q.BF16:  # only the scale fields changed
        _, type_size = GGML_QUANT_SIZES[qtype]
        changed = np.nonzero((data[rows] != patched[rows]).reshape(len(rows), -1, type_size).any(axis=(0, 1)))[0]
        allowed = {o + i for o in SCALE_FIELDS[qtype] for i in (0, 1)}
        assert set(changed.tolist()) <= allowed


@pytest.mark.parametrize("name", ["IQ1_M", "TQ1_0", "TQ2_0", "MXFP4"])
def test_types_without_scale_field_are_refused(name):
    if not hasattr(Q, name):
        pytest.skip(f"gguf-py has no {name}")
    qtype = Q[name]
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    data = np.zeros((2, 256 // block_size * type_size), dtype=np.uint8)
    with pytest.raises(SteerkitError, match=f"blk.3.ffn_up.weight: quant type {name} has no plain scale field"):
        scale_rows(data, qtype, np.array([0]), np.array([2.0]), "blk.3.ffn_up.weight")


def binding_of(path) -> ModelBinding:
    return open_weights(str(path)).binding()


@pytest.fixture
def q8_model(tmp_path):
    model = tiny_model("llama", hidden_size=64, intermediate_size=96)
    return model, save_gguf(model, tmp_path / "q8.gguf", ffn_type=Q.Q8_0)


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_patch_changes_only_what_it_must(q8_model, tmp_path):
    model, source = q8_model
    before = sha(source)
    edits = [Edit(1, 5, "scale", -2.0), Edit(1, 9, "clamp", 3.0), Edit(2, 7, "add", 1.5), Edit(0, 0, "ablate")]
    profile = Profile("mix", binding_of(source), edits)
    report = patch_gguf(source, [profile], tmp_path / "out.gguf", progress=False)
    assert sha(source) == before  # input untouched
    assert report.scaled_rows == 3 and report.bias_layers == (1, 2)
    original, patched = GGUFFile(source), GGUFFile(tmp_path / "out.gguf")
    new = {t.name: t for t in patched.tensors}
    for tensor in original.tensors:
        same = np.array_equal(tensor.data, new[tensor.name].data)
        assert same == (tensor.name not in ("blk.0.ffn_up.weight", "blk.1.ffn_up.weight")), tensor.name
    up = values_of(new["blk.1.ffn_up.weight"]), values_of(next(t for t in original.tensors if t.name == "blk.1.ffn_up.weight"))
    assert np.array_equal(up[0][5], -2.0 * up[1][5]) and np.array_equal(up[0][9], 0.0 * up[1][9])
    down = open_weights(str(source)).down_cols(1)
    np.testing.assert_allclose(new["blk.1.ffn_down.bias"].data, 3.0 * down[9], rtol=1e-6)
    np.testing.assert_allclose(new["blk.2.ffn_down.bias"].data, 1.5 * open_weights(str(source)).down_cols(2)[7], rtol=1e-6)
    for key, field in original.fields.items():  # metadata kept as is
        assert patched.raw_field(key) == original.raw_field(key)
    # The copy goes page onto page, and its page-aligned part starts on a 64 KiB boundary of the output.
    assert patched.data_start % 4096 == original.data_start % 4096
    assert (patched.data_start + -original.data_start % 4096) % 65536 == 0
    embedded = embedded_profile(open_weights(str(tmp_path / "out.gguf")))
    assert embedded["names"] == ["mix"] and "op: clamp" in embedded["yaml"] and embedded["sha256"] == report.profile_sha256
    assert len(GGUFReader(tmp_path / "out.gguf").tensors) == len(original.tensors) + 2  # gguf-py reads it too


def test_copy_over_a_longer_file_leaves_no_tail(q8_model, tmp_path):
    """The copy opens its target without truncating (see gguf_out): old bytes past the new end must go."""
    from steerkit.runtimes.llamacpp.gguf_out import write_gguf_copy

    _, source = q8_model
    fresh, reused = tmp_path / "fresh.gguf", tmp_path / "reused.gguf"
    reused.write_bytes(b"x" * (source.stat().st_size * 2))
    for target in (fresh, reused):
        write_gguf_copy(GGUFFile(source), target, lambda key: False, [], {}, {})
    assert reused.read_bytes() == fresh.read_bytes() == source.read_bytes()


@pytest.mark.parametrize("case", ["plain", "spaces", "invalid utf-8", "fewer than the vocabulary"])
def test_vocabulary_digest_from_stored_bytes(tmp_path, case):
    """The GGUF reader hashes its token array undecoded where it can; the digest is always vocab_sha256 of tokens()."""
    tokens = [t.encode() for t in tiny_tokens()]
    if case == "spaces":
        tokens[10:12] = [b" the", "a \u2581b \u00e9".encode()]
    elif case == "invalid utf-8":
        tokens[10] = b"\xff\xfe"
    elif case == "fewer than the vocabulary":
        tokens = tokens[:-5]
    source = save_gguf(tiny_model("llama", hidden_size=64, intermediate_size=96), tmp_path / "m.gguf", tokens=tokens)
    expected = vocab_sha256(open_weights(str(source)).tokens())
    reader = open_weights(str(source))
    if case in ("plain", "spaces"):  # the fast path must not decode
        reader.tokens = lambda: pytest.fail("decoded the tokens")
    assert reader.vocab_digest() == expected


def values_of(tensor) -> np.ndarray:
    return np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)


def test_patched_weights_equal_hf_bake(q8_model, tmp_path):
    """The patched file's (dequantized) MLP equals the HF-baked MLP of the same weights."""
    from steerkit.runtimes.hf import bake
    from steerkit.plan import compile_plan
    from steerkit.weights import open_weights

    model, source = q8_model
    edits = [Edit(1, 5, "scale", 3.0), Edit(1, 9, "clamp", 2.5)]
    profile = Profile("m", binding_of(source), edits)
    patch_gguf(source, [profile], tmp_path / "out.gguf", progress=False)
    reader = open_weights(str(source))
    with torch.no_grad():  # load the Q8_0 weights into the HF model, then bake there
        mlp = model.model.layers[1].mlp
        mlp.up_proj.weight.copy_(torch.from_numpy(reader.up_rows(1)))
        mlp.down_proj.weight.copy_(torch.from_numpy(reader.down_cols(1).T.copy()))
    bake(model, compile_plan([profile]))
    patched = GGUFFile(tmp_path / "out.gguf")
    tensors = {t.name: t for t in patched.tensors}
    np.testing.assert_allclose(values_of(tensors["blk.1.ffn_up.weight"]), mlp.up_proj.weight.detach().numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(tensors["blk.1.ffn_down.bias"].data, mlp.down_proj.bias.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_bad_input(q8_model, tmp_path):
    model, source = q8_model
    good = Profile("p", binding_of(source), [Edit(1, 5, "clamp", 1.0)])
    before = sha(source)
    with pytest.raises(SteerkitError, match="model.d_ff: profile is for 48"):
        patch_gguf(source, [Profile("x", ModelBinding("llama", 3, 64, 48, 96), [])], tmp_path / "o.gguf", progress=False)
    with pytest.raises(SteerkitError, match="refusing to overwrite the input"):
        patch_gguf(source, [good], source, progress=False)
    with pytest.raises(SteerkitError, match="cannot write"):
        patch_gguf(source, [good], tmp_path / "missing-dir" / "o.gguf", progress=False)
    with pytest.raises(SteerkitError, match="cannot be baked"):
        patch_gguf(source, [Profile("p", good.model, good.edits, positions="prompt")], tmp_path / "o.gguf", progress=False)
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(source.read_bytes()[:-100])
    with pytest.raises(SteerkitError, match="truncated"):
        patch_gguf(truncated, [good], tmp_path / "o.gguf", progress=False)
    patch_gguf(source, [good], tmp_path / "once.gguf", progress=False)
    with pytest.raises(SteerkitError, match="already patched by steerkit"):
        patch_gguf(tmp_path / "once.gguf", [good], tmp_path / "twice.gguf", progress=False)
    patch_gguf(tmp_path / "once.gguf", [good], tmp_path / "twice.gguf", allow_repatch=True, progress=False)
    twice = {t.name: t for t in GGUFFile(tmp_path / "twice.gguf").tensors}
    once = {t.name: t for t in GGUFFile(tmp_path / "once.gguf").tensors}
    np.testing.assert_allclose(twice["blk.1.ffn_down.bias"].data, 2 * once["blk.1.ffn_down.bias"].data, rtol=1e-6)
    assert sha(source) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.gguf", "once.gguf", "q8.gguf", "twice.gguf"]  # no leftovers


def test_gemma_clamp_refused_scale_allowed(tmp_path):
    source = save_gguf(tiny_model("gemma3_text"), tmp_path / "g.gguf")
    binding = binding_of(source)
    with pytest.raises(SteerkitError, match="gemma3 graph does not load"):
        patch_gguf(source, [Profile("c", binding, [Edit(1, 2, "clamp", 1.0)])], tmp_path / "o.gguf", progress=False)
    assert not (tmp_path / "o.gguf").exists()
    report = patch_gguf(source, [Profile("s", binding, [Edit(1, 2, "scale", 2.0)])], tmp_path / "o.gguf", progress=False)
    assert report.scaled_rows == 1 and report.bias_layers == () and report.control_vector is None



def test_gemma_approximate_writes_the_fitted_stand_in(tmp_path, monkeypatch):
    """--approximate: the fit of runtimes.hf.post_norm_fit lands in the file (norm gains) and the control vector."""
    from types import SimpleNamespace

    import steerkit.runtimes.hf
    from steerkit.runtimes.hf.post_norm_fit import fit_post_norm
    from steerkit.runtimes.llamacpp.cvec import read_control_vector
    from steerkit.plan import compile_plan
    from steerkit.prompts import reference_text

    model = tiny_model("gemma3_text")
    source = save_gguf(model, tmp_path / "g.gguf")
    tokenizer = lambda text: SimpleNamespace(input_ids=[3 + ord(c) % 90 for c in text[:300]])  # noqa: E731
    monkeypatch.setattr(steerkit.runtimes.hf, "load_model", lambda name: (model, tokenizer))  # the tiny GGUF has no attention
    profile = Profile("c", binding_of(source), [Edit(1, 2, "clamp", 30.0)])
    report = patch_gguf(source, [profile], tmp_path / "a.gguf", progress=False, approximate=True)
    fit = fit_post_norm(model, tokenizer(reference_text()).input_ids, compile_plan([profile], binding_of(source)))[1]
    assert report.control_vector == tmp_path / "a.cvec.gguf" and report.bias_layers == () and report.scaled_rows == 1
    np.testing.assert_allclose(read_control_vector(report.control_vector)[1], fit.offset, rtol=1e-5, atol=1e-6)
    original, patched = ({t.name: t for t in GGUFFile(path).tensors} for path in (source, tmp_path / "a.gguf"))
    for name, tensor in original.items():
        if name == "blk.1.post_ffw_norm.weight":
            np.testing.assert_allclose(patched[name].data, np.float32(fit.gain) * tensor.data, rtol=1e-6)
        elif name != "blk.1.ffn_up.weight":
            assert np.array_equal(patched[name].data, tensor.data), name
    note = embedded_profile(open_weights(str(tmp_path / "a.gguf")))["approximation"]
    assert note == report.approximation and "APPROXIMATION" in note and f"{fit.gain:.3f}" in note


def test_disk_full_leaves_no_partial_output(q8_model, tmp_path, monkeypatch):
    """A write that fails half-way (ENOSPC) ends in one clear error, no file at the target, no temp file."""
    import errno

    from steerkit.runtimes.llamacpp import gguf_out

    _, source = q8_model
    good = Profile("p", binding_of(source), [Edit(1, 5, "clamp", 1.0)])
    real_copy = gguf_out._copy_range
    calls = {"n": 0}

    def failing_copy(src, dst, offset, size):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_copy(src, dst, offset, size)

    monkeypatch.setattr(gguf_out, "_copy_range", failing_copy)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(SteerkitError, match="cannot write .*No space left on device"):
        patch_gguf(source, [good], out_dir / "o.gguf", progress=False)
    assert list(out_dir.iterdir()) == []


@pytest.mark.parametrize("alignment", [64, 8192])
def test_other_alignments(tmp_path, alignment):
    """general.alignment other than 32, including one the page-placement padding cannot serve (8 KiB)."""
    source = save_gguf(tiny_model("llama", hidden_size=64, intermediate_size=96), tmp_path / "m.gguf", ffn_type=Q.Q8_0,
                       alignment=alignment)
    patch_gguf(source, [Profile("p", binding_of(source), [Edit(1, 5, "scale", 2.0), Edit(1, 7, "clamp", 1.0)])],
               tmp_path / "o.gguf", progress=False)
    original, patched = GGUFFile(source), GGUFFile(tmp_path / "o.gguf")
    assert patched.alignment == alignment and patched.data_start % alignment == 0
    if 4096 % alignment == 0:
        assert (patched.data_start + -original.data_start % 4096) % 65536 == 0
    assert all(t.offset % alignment == 0 for t in patched.tensors)
    kept = {t.name: t for t in patched.tensors}
    assert all(np.array_equal(t.data, kept[t.name].data) for t in original.tensors if t.name != "blk.1.ffn_up.weight")
    assert len(GGUFReader(tmp_path / "o.gguf").tensors) == len(original.tensors) + 1


def test_full_disk_is_found_before_the_copy(q8_model, tmp_path, monkeypatch):
    """The output is allocated before the data is copied: a full disk fails there, one line, no file left."""
    import errno

    from steerkit.runtimes.llamacpp import gguf_out

    _, source = q8_model

    def full(fd, offset, size):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gguf_out.os, "posix_fallocate", full)
    monkeypatch.setattr(gguf_out, "_copy_range", lambda *args: pytest.fail("copied data onto a full disk"))
    with pytest.raises(SteerkitError, match="cannot write .*No space left on device"):
        patch_gguf(source, [Profile("p", binding_of(source), [Edit(1, 5, "scale", 2.0)])], tmp_path / "o.gguf",
                   progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["q8.gguf"]


def test_gemma_export_cvec_writes_fitted_offsets(tmp_path, monkeypatch):
    """export-cvec on a post-FFN-norm model: offsets fitted for the unpatched model, with the measured figure."""
    from types import SimpleNamespace

    import steerkit.runtimes.hf
    from steerkit.runtimes.hf.post_norm_fit import fit_post_norm
    from steerkit.runtimes.llamacpp.cvec import export_control_vector
    from steerkit.plan import compile_plan
    from steerkit.prompts import reference_text

    model = tiny_model("gemma3_text")
    source = save_gguf(model, tmp_path / "g.gguf")
    tokenizer = lambda text: SimpleNamespace(input_ids=[3 + ord(c) % 90 for c in text[:300]])  # noqa: E731
    monkeypatch.setattr(steerkit.runtimes.hf, "load_model", lambda name: (model, tokenizer))
    plan = compile_plan([Profile("c", binding_of(source), [Edit(1, 2, "clamp", 30.0)])], binding_of(source))
    vector = export_control_vector(plan, open_weights(str(source)), progress=False)
    expected = fit_post_norm(model, tokenizer(reference_text()).input_ids, plan, fit_gain=False, rows_patched=False)
    np.testing.assert_allclose(vector.directions[1], expected[1].offset, rtol=1e-5, atol=1e-6)
    assert any("offsets fitted" in note and "mean KL per position" in note for note in vector.left_out)


def test_gemma_approximate_refuses_layer_zero_before_loading_the_model(tmp_path, monkeypatch):
    import steerkit.runtimes.hf

    source = save_gguf(tiny_model("gemma3_text"), tmp_path / "g.gguf")
    monkeypatch.setattr(steerkit.runtimes.hf, "load_model", lambda name: pytest.fail("loaded the model for a doomed fit"))
    with pytest.raises(SteerkitError, match="cannot act on layer 0"):
        patch_gguf(source, [Profile("c", binding_of(source), [Edit(0, 2, "clamp", 3.0)])], tmp_path / "o.gguf",
                   progress=False, approximate=True)
    assert not (tmp_path / "o.gguf").exists() and not (tmp_path / "o.cvec.gguf").exists()
