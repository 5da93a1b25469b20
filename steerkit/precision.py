"""Which arithmetic the atlas's full-vocabulary decodes run in, chosen per device at run time.

The atlas is one ``[d_ff, d] @ [d, vocab]`` GEMM per layer and side.  bf16
halves the bytes and, on hardware built for it, doubles the rate: measured
on a 2-core AVX512-BF16 machine, fp32 0.59 s and bf16 0.26 s for one
SmolLM2 layer; on AVX2-only machines of the same kind bf16 runs several
times *slower* than fp32.  So nothing is assumed from the device's name:

* **CUDA**: bf16 where the GPU supports it (tensor cores), else fp32;
* **MPS**: fp32;
* **CPU**: bf16 only when the CPU reports native BF16 (``avx512_bf16`` or
  ``amx_bf16``) *and* a timed probe of the atlas's own GEMM shape runs at
  least :data:`MIN_SPEEDUP` times faster in bf16 than in fp32; fp32 otherwise.

bf16 rounds the decoded vectors and the LM head to 8 bits of mantissa, so
near-ties between tokens can swap; :func:`steerkit.atlas.decode_side`
therefore takes the top-k *candidates* from the bf16 logits with a margin
and rescores them in fp32 (exact top-k order and probabilities); only the
rest of the vocabulary's share of the log-sum-exp comes from bf16 logits
(within 0.03 nats, docs/measurements.md).  The agreement is measured in
``bench/bench_precision.py`` and checked in the tests.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["Precision", "choose_precision", "check_device", "cpu_has_native_bf16", "MIN_SPEEDUP"]

MIN_SPEEDUP = 1.3  # bf16 must beat fp32 by this much on the probe to be used on a CPU
_PROBE_SHAPE = (768, 576, 8192)  # neurons x d_model x vocabulary chunk: the atlas's GEMM, a quarter of a layer


@dataclass(frozen=True)
class Precision:
    """The dtype for the atlas's GEMMs on one device, and why it was chosen."""

    device: str
    dtype: torch.dtype
    reason: str

    @property
    def label(self) -> str:
        return str(self.dtype).removeprefix("torch.")


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU reports native BF16 arithmetic (``avx512_bf16`` or ``amx_bf16`` in /proc/cpuinfo)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[-1].split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def _seconds(dtype: torch.dtype, repeats: int = 3) -> float:
    n, d, v = _PROBE_SHAPE
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(n, d, generator=generator).to(dtype)
    b = torch.randn(d, v, generator=generator).to(dtype)
    a @ b  # warm-up: first calls pick kernels
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return best


@functools.lru_cache(maxsize=8)
def choose_precision(device: str = "cpu") -> Precision:
    """The atlas precision for ``device`` (see the module doc); measured once per process."""
    kind = device.partition(":")[0]
    if kind == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision(device, torch.bfloat16, "CUDA with bf16 support")
        return Precision(device, torch.float32, "CUDA without bf16: fp32")
    if kind == "mps":
        return Precision(device, torch.float32, "MPS: fp32")
    if not cpu_has_native_bf16():
        return Precision(device, torch.float32, "CPU without native BF16 (no avx512_bf16/amx_bf16 flag)")
    fp32, bf16 = _seconds(torch.float32), _seconds(torch.bfloat16)
    if fp32 / bf16 >= MIN_SPEEDUP:
        return Precision(device, torch.bfloat16, f"CPU with native BF16, measured {fp32 / bf16:.2f}x fp32")
    return Precision(device, torch.float32, f"CPU with BF16 flags but bf16 measured only {fp32 / bf16:.2f}x fp32")


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
