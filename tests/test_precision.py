"""The atlas's arithmetic per device: chosen from what the CPU reports and measures, and exact enough in bf16."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from steerkit.atlas import atlas_for, build_atlas
from steerkit.full_decode import candidate_logits, decode_side, head_operands
from steerkit.decode import rms_normalize
from steerkit.precision import Precision, choose_precision, cpu_has_native_bf16, cpu_kind
from steerkit.weights import open_weights
from tiny_models import save_gguf, tiny_model

BF16 = Precision("cpu", torch.bfloat16, "forced by the test")
# The stated log-sum-exp tolerance of the bf16 path (docs/measurements.md): over every SmolLM2 neuron, the worst view
# was 0.019 nats (bf16 emulated, 16 rescored candidates and the operand correction); 0.039 without the correction.
LSE_TOLERANCE = 0.03


def test_native_bf16_is_read_from_the_cpu_flags():
    assert cpu_has_native_bf16("processor: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile\n")
    assert cpu_has_native_bf16("Features: fp asimd amx_bf16")
    assert not cpu_has_native_bf16("flags\t\t: fpu sse avx2 fma avx512f avx512_vnni\n")
    assert not cpu_has_native_bf16("")
    # The kind that names a machine's measurements (bench/results/atlas-8b-cpu-<kind>.json).
    assert cpu_kind("flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n") == "amx"
    assert cpu_kind("flags\t\t: fpu avx2 avx512f avx512_bf16\n") == "avx512-bf16"
    assert cpu_kind("flags\t\t: fpu avx2 avx512f avx512_vnni\n") == "avx512"
    assert cpu_kind("flags\t\t: fpu sse avx2 fma\n") == "avx2" and cpu_kind("") == "other"


def test_this_machine_chooses_and_the_atlas_records_it(tmp_path):
    reader = open_weights(str(save_gguf(tiny_model("llama"), tmp_path / "t.gguf")))
    chosen = choose_precision("cpu", reader.info.d_model, reader.info.vocab_size)
    assert chosen.dtype in (torch.float32, torch.bfloat16) and chosen.reason
    if not cpu_has_native_bf16():
        assert chosen.dtype == torch.float32  # never bf16 without native support: it is several times slower
    atlas = atlas_for(reader, top_k=3, progress=False)
    assert (atlas.meta["dtype"], atlas.meta["device"]) == (chosen.label, "cpu")


def test_the_probe_is_measured_once_per_shape_and_kept(tmp_path, monkeypatch):
    """Every process on the machine makes the same choice: the probe's result is kept on disk, per shape, and a
    damaged entry is measured again."""
    import steerkit.precision as precision

    monkeypatch.setenv("STEERKIT_CACHE", str(tmp_path))
    calls = []
    monkeypatch.setattr(precision, "_seconds", lambda dtype, d, v: calls.append(dtype) or (2.0 if dtype == torch.float32 else 1.0))
    assert precision.measured_speedup(64, 1000) == 2.0 and len(calls) == 2
    assert precision.measured_speedup(64, 1000) == 2.0 and len(calls) == 2  # read back, not measured
    assert precision.measured_speedup(128, 1000) == 2.0 and len(calls) == 4  # another shape: measured
    for damage in ('{"speedup": "fast"}', "not json", '{"speedup": -1}', '{"speedup": NaN}'):
        for path in (tmp_path / "precision").iterdir():
            path.write_text(damage)
        before = len(calls)
        assert precision.measured_speedup(64, 1000) == 2.0 and len(calls) == before + 2, damage


def test_bf16_candidates_rescored_in_fp32_give_the_fp32_atlas(tmp_path):
    reader = open_weights(str(save_gguf(tiny_model("qwen3"), tmp_path / "t.gguf")))
    exact = build_atlas(reader, top_k=5, progress=False, precision=Precision("cpu", torch.float32, "test"))
    fast = build_atlas(reader, top_k=5, progress=False, precision=BF16)
    assert fast.meta["dtype"] == "bfloat16"
    assert np.array_equal(exact.token_ids, fast.token_ids)
    np.testing.assert_allclose(fast.probs, exact.probs, atol=2e-3)
    np.testing.assert_allclose(fast.lse, exact.lse, atol=2e-3)


def test_rescoring_corrects_the_log_sum_exp():
    """Wide logits (a few dominant tokens): the corrected log-sum-exp is exact where bf16 alone is not."""
    generator = torch.Generator().manual_seed(0)
    vectors = torch.randn(64, 48, generator=generator) * 3
    unembedding_t = torch.randn(48, 5000, generator=generator)
    gain = torch.ones(48)
    ids, probs, lse = decode_side(vectors, gain, unembedding_t, 1e-6, 8)
    ids_b, probs_b, lse_b = decode_side(vectors, gain, unembedding_t, 1e-6, 8, unembedding_t.to(torch.bfloat16))
    assert torch.equal(ids, ids_b)
    torch.testing.assert_close(probs_b, probs, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(lse_b, lse, atol=3e-3, rtol=0)  # the rest of the vocabulary in bf16


def _shared_mean_case(seed: int = 0):
    """Head rows sharing a large mean and vectors pointing along it: a row's logits all move together when its
    operand is rounded to bf16 (the error the mean-row correction is for)."""
    generator = torch.Generator().manual_seed(seed)
    mean = torch.randn(64, generator=generator)
    head = mean * 0.5 + torch.randn(6000, 64, generator=generator) * 0.3  # [vocab, d]
    vectors = torch.randn(64, 64, generator=generator) * 2 + 4 * mean
    return head, vectors


def test_the_operand_rounding_shared_by_a_row_is_corrected():
    """Rescoring the top candidates leaves the rest of the vocabulary's terms moved by residual . w: here 0.018
    nats uncorrected; the mean-row shift brings it to 0.005."""
    head, vectors = _shared_mean_case()
    exact_t = head.T.contiguous()
    ids, _, lse = decode_side(vectors, torch.ones(64), exact_t, 1e-6, 8)
    unembedding_t, fast = head_operands(head.numpy(), "cpu", torch.bfloat16)
    ids_b, _, lse_b = decode_side(vectors, torch.ones(64), unembedding_t, 1e-6, 8, fast)
    assert torch.equal(ids, ids_b)
    assert float((lse - lse_b).abs().max()) <= 0.01


def test_emulated_bf16_makes_the_errors_of_real_bf16():
    """The emulation bench/bench_precision.py measures with on CPUs without native BF16: fp32 GEMMs on
    bf16-rounded values give what the bf16 GEMM gives, to a rounding of the logits."""
    head, vectors = _shared_mean_case(1)
    unembedding_t, fast = head_operands(head.numpy(), "cpu", torch.bfloat16)
    real = decode_side(vectors, torch.ones(64), unembedding_t, 1e-6, 8, fast)
    emulated = decode_side(vectors, torch.ones(64), unembedding_t, 1e-6, 8, fast.float(), torch.bfloat16)
    exact = decode_side(vectors, torch.ones(64), head.T.contiguous(), 1e-6, 8)
    assert torch.equal(real[0], emulated[0])
    # bf16 is off by ~0.006 nats here; the emulation reproduces that to within a tenth of it (measured: 2e-4).
    assert float((real[2] - emulated[2]).abs().max()) <= 0.1 * float((real[2] - exact[2]).abs().max())


def test_every_candidate_gather_gives_the_plain_dot_products():
    """Row by row (CPU), in blocks (accelerators) and by columns: the logits a plain sum gives."""
    generator = torch.Generator().manual_seed(1)
    head = torch.randn(3000, 40, generator=generator)  # [vocab, d]
    normed = torch.randn(300, 40, generator=generator)
    ids = torch.randint(0, 3000, (300, 17), generator=generator)
    wanted = (head[ids] * normed[:, None, :]).sum(-1)
    for got in (candidate_logits(normed, head.T, ids, per_row=True), candidate_logits(normed, head.T, ids, per_row=False),
                candidate_logits(normed, head.T.contiguous(), ids)):
        torch.testing.assert_close(got, wanted, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_side_top_k_is_torch_top_k_over_the_whole_vocabulary(dtype):
    """The floored group candidates and the lazy merges give exactly the top-k of the full logits; the head
    as head_operands lays it out (a [vocab, d] view in bf16) changes nothing."""
    generator = torch.Generator().manual_seed(2)
    vocab, d = 10_000, 32  # several chunks, the last one not a whole number of groups
    head = torch.randn(vocab, d, generator=generator)
    vectors = torch.randn(50, d, generator=generator)
    unembedding_t, fast = head_operands(head.numpy(), "cpu", dtype)
    ids, probs, lse = decode_side(vectors, torch.ones(d), unembedding_t, 1e-6, 7, fast)
    logits = rms_normalize(vectors, torch.ones(d), 1e-6) @ head.T
    for sign, column in ((1.0, 0), (-1.0, 1)):
        best, where = torch.topk(sign * logits, 7, dim=1)
        assert torch.equal(ids[:, column].long(), where)
        exact_lse = torch.logsumexp(sign * logits, dim=1)
        torch.testing.assert_close(lse[:, column], exact_lse, atol=1e-4 if dtype == torch.float32 else 3e-3, rtol=0)
        torch.testing.assert_close(probs[:, column], (best - exact_lse[:, None]).exp(), atol=1e-3, rtol=1e-3)


@pytest.mark.real
@pytest.mark.slow
def test_bf16_agrees_with_fp32_on_the_default_model():
    """The issue's bar, on the last layer of SmolLM2 (both sides, every neuron): top-10 sets agree for >= 99.9 % of
    views, the top token for >= 99.99 %, log-sum-exps within LSE_TOLERANCE nats.  In bf16 where the CPU has native
    BF16 (where the atlas would use it); emulated elsewhere, where bf16 matmuls are ~7x slower than fp32 and the
    atlas never uses them.  The full measurement is bench/bench_precision.py."""
    reader = open_weights(None)
    info = reader.info
    gain = torch.from_numpy(reader.norm_gain())
    unembedding_t, fast = head_operands(reader.unembedding(), "cpu", torch.bfloat16)
    exact_t = unembedding_t.contiguous()
    emulate = None if cpu_has_native_bf16() else torch.bfloat16
    fast = fast if emulate is None else fast.float()
    sets = tops = views = 0
    for side in (reader.up_rows(29), reader.down_cols(29)):
        vectors = torch.from_numpy(side)
        ids, _, lse = decode_side(vectors, gain, exact_t, info.rms_eps, 10)
        ids_b, _, lse_b = decode_side(vectors, gain, unembedding_t, info.rms_eps, 10, fast, emulate)
        sets += int((ids.sort(-1).values == ids_b.sort(-1).values).all(-1).sum())
        tops += int((ids[..., 0] == ids_b[..., 0]).sum())
        views += ids.shape[0] * 2
        assert float((lse - lse_b).abs().max()) <= LSE_TOLERANCE
    assert sets / views >= 0.999 and tops / views >= 0.9999, (sets / views, tops / views)


@pytest.mark.real
@pytest.mark.slow
def test_a_bf16_atlas_leaves_discovery_and_find_unchanged_on_the_default_model(monkeypatch):
    """The issue's bar for the bf16 atlas: `find dog` and the discovery of every shipped profile unchanged.  For each
    shipped discovered profile's concept, discovery ranks the same neurons with the same signs in the same order
    (the 8 it tries), with scores close; `find dog` lists the same 20 neurons and views.  Real bf16 where the CPU
    has native BF16, emulated elsewhere (as in the test above)."""
    import steerkit.atlas
    from steerkit.candidates import rank_candidates
    from steerkit.discovery import NEURON_COUNTS
    from steerkit.evaluate import profile_concept
    from steerkit.find import find_word
    from steerkit.profile import load_profile
    from steerkit.shipped import shipped_dir

    reader = open_weights(None)
    cached = atlas_for(reader, progress=False)  # built once per run by the real tests; fp32 on most CPUs
    exact = cached if cached.meta["dtype"] == "float32" else build_atlas(reader, progress=False, precision=Precision(
        "cpu", torch.float32, "the test's reference"))
    if not cpu_has_native_bf16():
        monkeypatch.setattr(steerkit.atlas, "head_operands",
                            lambda *args: (lambda exact_t, fast: (exact_t, fast.float()))(*head_operands(*args)))
        monkeypatch.setattr(steerkit.atlas, "decode_side", lambda *args: decode_side(*args, emulate=torch.bfloat16))
    rounded = build_atlas(reader, progress=False, precision=BF16)
    profiles = [load_profile(path) for path in sorted(shipped_dir().glob("*.yaml"))]
    profiles = [p for p in profiles if p.provenance.get("method", "").startswith("steerkit discover")]
    assert len(profiles) >= 12
    for profile in profiles:
        concept = profile_concept(profile, reader.tokens())
        a, b = (rank_candidates(reader, atlas, concept, limit=max(NEURON_COUNTS)) for atlas in (exact, rounded))
        assert [(c.layer, c.neuron, c.sign) for c in a] == [(c.layer, c.neuron, c.sign) for c in b], profile.name
        np.testing.assert_allclose([c.score for c in b], [c.score for c in a], rtol=0.02)
    (_, found_exact), (_, found_rounded) = (find_word(reader, atlas, "dog", 20) for atlas in (exact, rounded))
    assert [(h.layer, h.neuron, h.view) for h in found_exact] == [(h.layer, h.neuron, h.view) for h in found_rounded]
