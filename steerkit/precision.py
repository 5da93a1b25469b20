"""Which arithmetic the atlas's full-vocabulary decodes run in, chosen per device at run time.

The atlas is one ``[d_ff, d] @ [d, vocab]`` GEMM per layer and side.  bf16
halves the bytes and, on hardware built for it, doubles the rate: measured
on a 2-core AVX512-BF16 machine, fp32 0.59 s and bf16 0.26 s for one
SmolLM2 layer; on AVX2-only machines of the same kind bf16 runs several
times *slower* than fp32.  So nothing is assumed from the device's name:

* **CUDA**: bf16 where the GPU supports it (tensor cores), else fp32;
* **MPS**: fp32;
* **CPU**: bf16 only when the CPU reports native BF16 (``avx512_bf16`` or
  ``amx_bf16``) *and* a timed probe of the atlas's own decode
  (:func:`steerkit.full_decode.decode_side`, GEMM, top-k and rescoring) at the
  model's width runs at least :data:`MIN_SPEEDUP` times faster in bf16 than
  in fp32; fp32 otherwise.  The whole decode, not the GEMM alone: bf16
  carries a fixed cost per neuron (more candidates, rescored in fp32), so on
  an AMX machine it wins 3x at d_model 4096 and loses at SmolLM2's 576
  (measured: the bare GEMM 3.8x faster, the decode 1.3x slower).  The probe's
  result is kept on disk (:func:`measured_speedup`).

bf16 rounds the decoded vectors and the LM head to 8 bits of mantissa, so
near-ties between tokens can swap; :func:`steerkit.full_decode.decode_side`
therefore takes the top-k *candidates* from the bf16 logits with a margin
and rescores them in fp32 (exact top-k order and probabilities); only the
rest of the vocabulary's share of the log-sum-exp comes from bf16 logits,
corrected for the operand's rounding (within 0.03 nats, docs/measurements.md).  The agreement is measured in
``bench/bench_precision.py`` and checked in the tests.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["Precision", "choose_precision", "check_device", "cpu_flags", "cpu_has_native_bf16", "cpu_kind",
           "measured_speedup", "MIN_SPEEDUP"]

MIN_SPEEDUP = 1.3  # bf16 must beat fp32 by this much on the probe to be used on a CPU
_PROBE_ROWS = 128  # neurons of the probe decode, at the model's width and vocabulary size
_DEFAULT_SHAPE = (576, 49_152)  # d_model and vocabulary probed when none are given (the default model's)
_MAX_PROBE_VOCAB = 1 << 16  # a 4096-wide probe then takes ~9 s; smaller ones misjudge wide vocabularies


@dataclass(frozen=True)
class Precision:
    """The dtype for the atlas's GEMMs on one device, and why it was chosen."""

    device: str
    dtype: torch.dtype
    reason: str

    @property
    def label(self) -> str:
        return str(self.dtype).removeprefix("torch.")


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags as /proc/cpuinfo lists them (empty where it cannot be read)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return set()
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[-1].split())
    return flags


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU reports native BF16 arithmetic (``avx512_bf16`` or ``amx_bf16`` in /proc/cpuinfo)."""
    return bool(cpu_flags(cpuinfo) & {"avx512_bf16", "amx_bf16"})


def cpu_kind(cpuinfo: str | None = None) -> str:
    """The widest matrix arithmetic the CPU reports: ``amx``, ``avx512-bf16``, ``avx512``, ``avx2`` or ``other``
    (names measurements: the same 2-core machine type comes with any of these)."""
    flags = cpu_flags(cpuinfo)
    for kind, flag in (("amx", "amx_bf16"), ("avx512-bf16", "avx512_bf16"), ("avx512", "avx512f"), ("avx2", "avx2")):
        if flag in flags:
            return kind
    return "other"


def _seconds(dtype: torch.dtype, d_model: int, vocab: int, repeats: int = 2) -> float:
    """Best time of the atlas's decode of a probe matrix of the model's shape in ``dtype``."""
    from steerkit.full_decode import decode_side, head_operands

    generator = torch.Generator().manual_seed(0)
    vectors = torch.randn(_PROBE_ROWS, d_model, generator=generator)
    head = torch.randn(min(vocab, _MAX_PROBE_VOCAB), d_model, generator=generator) / d_model ** 0.5
    unembedding_t, fast = head_operands(head.numpy(), "cpu", dtype)
    gain = torch.ones(d_model)
    decode_side(vectors[:16], gain, unembedding_t, 1e-6, 10, fast)  # warm-up: first calls pick kernels
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        decode_side(vectors, gain, unembedding_t, 1e-6, 10, fast)
        best = min(best, time.perf_counter() - started)
    return best


@functools.lru_cache(maxsize=8)
def choose_precision(device: str = "cpu", d_model: int | None = None, vocab: int | None = None) -> Precision:
    """The atlas precision for ``device`` and a model of width ``d_model`` and ``vocab`` tokens (see the module
    doc); measured once per machine and shape (kept on disk)."""
    kind = device.partition(":")[0]
    if kind == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision(device, torch.bfloat16, "CUDA with bf16 support")
        return Precision(device, torch.float32, "CUDA without bf16: fp32")
    if kind == "mps":
        return Precision(device, torch.float32, "MPS: fp32")
    if not cpu_has_native_bf16():
        return Precision(device, torch.float32, "CPU without native BF16 (no avx512_bf16/amx_bf16 flag)")
    width, tokens = d_model or _DEFAULT_SHAPE[0], vocab or _DEFAULT_SHAPE[1]
    speedup = measured_speedup(width, tokens)
    if speedup >= MIN_SPEEDUP:
        return Precision(device, torch.bfloat16, f"CPU with native BF16, decode measured {speedup:.2f}x fp32 "
                                                 f"at d_model {width}, vocabulary {tokens}")
    return Precision(device, torch.float32, f"CPU with BF16 flags but the bf16 decode measured {speedup:.2f}x fp32 "
                                            f"at d_model {width}, vocabulary {tokens}")


def _cpu_identity() -> str:
    """The CPU's model name and flags (what the probe's result depends on, besides the software)."""
    try:
        lines = Path("/proc/cpuinfo").read_text(errors="replace").splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    wanted = [line for line in lines if line.startswith(("model name", "flags", "Features"))]
    return "\n".join(dict.fromkeys(wanted))


def measured_speedup(d_model: int, vocab: int) -> float:
    """fp32 time / bf16 time of the probe decode at this shape on this CPU, measured once and kept on disk.

    Kept so that every process on the machine makes the same choice (a choice that flipped with timing
    noise would miss the atlas cache, whose key holds the dtype) and so that a ``find`` on a wide model
    does not pay the probe (~9 s at d_model 4096) each time.  The key holds the CPU, torch, steerkit
    and the shape; a damaged entry is measured again.
    """
    from steerkit.cache import atomic_write, cache_dir
    from steerkit.version import __version__

    identity = f"{_cpu_identity()}|{torch.__version__}|{__version__}|{d_model}|{vocab}|{_PROBE_ROWS}|{_MAX_PROBE_VOCAB}"
    path = cache_dir("precision") / f"{hashlib.sha256(identity.encode()).hexdigest()[:24]}.json"
    try:
        speedup = float(json.loads(path.read_text())["speedup"])
        if math.isfinite(speedup) and speedup > 0:
            return speedup
    except (OSError, ValueError, KeyError, TypeError):
        pass  # absent or damaged: measure
    speedup = _seconds(torch.float32, d_model, vocab) / _seconds(torch.bfloat16, d_model, vocab)
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps({"speedup": speedup, "d_model": d_model, "vocab": vocab}))
    return speedup


def check_device(device: str) -> str:
    """``device`` if this machine has it; a one-line error naming what it has otherwise."""
    from steerkit.errors import SteerkitError

    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda", "mps") or (index and (kind != "cuda" or not index.isdigit())):
        raise SteerkitError(f"unknown device {device!r} (expected cpu, cuda, cuda:N or mps)")
    if kind == "cuda" and not torch.cuda.is_available():
        raise SteerkitError(f"device {device}: no CUDA device is available to this torch build")
    if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
        raise SteerkitError(f"there is no {device} (this machine has {torch.cuda.device_count()} CUDA devices)")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise SteerkitError(f"device {device}: MPS is not available on this machine")
    return device
