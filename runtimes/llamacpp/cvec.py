"""llama.cpp control vectors for the additive part of a profile.

A control vector file is a GGUF with ``general.architecture = controlvector``,
``controlvector.model_hint``, ``controlvector.layer_count`` and one F32
tensor ``direction.N`` (length ``n_embd``) per layer, added by llama.cpp to
the output of 0-based layer ``N`` (after its FFN residual add); layer 0 cannot
be targeted.  For a neuron edit ``h*mult + add`` the additive part is
``add * W_down[:, j]``: exact for ``add`` edits on llama-family models (the
FFN output goes straight into the residual), an approximation for a clamp
(the neuron's own activation is not removed) and for Gemma (whose post-FFN
norm comes before the residual add: :func:`export_control_vector` fits the
offsets there).  Scales and ablations have no additive part and are left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGUFWriter

from steerkit.cache import atomic_write
from steerkit.errors import SteerkitError
from steerkit.gguf_file import GGUFFile
from steerkit.plan import Plan
from steerkit.runtimes.llamacpp.gguf_out import check_finite
from steerkit.runtimes.llamacpp.stand_in import check_cvec_layer, fit_stand_in
from steerkit.weights import WeightReader

__all__ = ["ControlVector", "control_vector", "export_control_vector", "write_control_vector", "read_control_vector"]


@dataclass
class ControlVector:
    """Per-layer residual offsets, plus what of the plan they could not express."""

    directions: dict[int, np.ndarray]  # layer -> [n_embd] float32
    model_hint: str
    left_out: list[str]  # human-readable notes on what is not in the vector


def control_vector(plan: Plan, weights: WeightReader) -> ControlVector:
    """The additive part of ``plan`` as per-layer directions (see module doc)."""
    merged = plan.merged()
    info = weights.info
    directions: dict[int, np.ndarray] = {}
    left_out: list[str] = []
    for layer, edits in merged.items():
        adds = edits.add != 0
        scaled = edits.mult != 1
        if scaled.any():
            kinds = "clamped (their own activation stays)" if (adds & scaled).any() else "scaled/ablated"
            left_out.append(f"layer {layer}: {int(scaled.sum())} neurons {kinds}")
        if not adds.any():
            continue
        check_cvec_layer(layer)
        directions[layer] = weights.down_offset(layer, edits.neurons[adds], edits.add[adds])
    if info.arch.post_ffn_norm and directions:
        left_out.append(f"{info.arch.name}: the post-FFN norm is bypassed, so offsets are approximate")
    return ControlVector(directions, info.arch.name, left_out)


def export_control_vector(plan: Plan, weights, progress: bool = True) -> ControlVector:
    """What ``steerkit export-cvec`` writes: :func:`control_vector`, except on models that normalise the FFN
    output (Gemma), where the plain offsets do next to nothing and fitted ones are written instead
    (:mod:`steerkit.runtimes.llamacpp.stand_in`, for the unpatched model; loads it in transformers)."""
    plain = control_vector(plan, weights)
    if not (weights.info.arch.post_ffn_norm and plain.directions):
        return plain
    stand_in = fit_stand_in(weights, plan, rows_patched=False, progress=progress)
    notes = plain.left_out[:-1] + [f"{weights.info.arch.name}: offsets fitted to stand in for edits inside the "
                                   f"post-FFN norm. {stand_in.measured()}"]
    return ControlVector({layer: fit.offset for layer, fit in stand_in.fits.items()}, plain.model_hint, notes)


def write_control_vector(vector: ControlVector, n_layers: int, path: str | Path) -> Path:
    """Write ``vector`` as a llama.cpp control-vector GGUF (atomically)."""
    if not vector.directions:
        raise SteerkitError("the profile has no additive part (no add or clamp edits): nothing to export")
    for layer, direction in vector.directions.items():
        check_finite(f"direction.{layer}", direction)
    with atomic_write(path, suffix=".gguf") as tmp:
        writer = GGUFWriter(tmp, "controlvector")
        writer.add_string("controlvector.model_hint", vector.model_hint)
        writer.add_int32("controlvector.layer_count", n_layers)
        for layer in sorted(vector.directions):
            writer.add_tensor(f"direction.{layer}", vector.directions[layer])
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return Path(path)


def read_control_vector(path: str | Path) -> dict[int, np.ndarray]:
    """The directions of a control-vector file, by layer."""
    file = GGUFFile(path)
    if file.value("general.architecture") != "controlvector":
        raise SteerkitError(f"{path}: not a control-vector GGUF (general.architecture is {file.value('general.architecture')!r})")
    return {int(t.name.split(".")[1]): np.array(t.data, dtype=np.float32) for t in file.tensors if t.name.startswith("direction.")}
