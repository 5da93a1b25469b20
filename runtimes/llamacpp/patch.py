"""Compile profiles into a patched GGUF that stock llama.cpp loads as-is.

Per the compilation table (docs/formats.md), for neuron ``j`` of layer
``N`` with affine edit ``h*mult + add``:

* ``mult != 1``: ``blk.N.ffn_up`` row ``j`` is scaled by rewriting only its
  blocks' fp16 scale fields (:mod:`steerkit.runtimes.llamacpp.scales`), so
  ``h = act(gate.x) * (up.x)`` is scaled exactly; in a mixture of experts the
  row is ``blk.N.ffn_up_exps`` row ``(e, i)``, and clamp/add are refused (no
  per-expert bias exists in llama.cpp's Mixtral/Qwen3-MoE graphs);
* gpt-oss, whose experts carry biases and whose activation is not linear in
  the up row, is patched differently (:func:`_biased_expert_edits`);
* ``add != 0``: ``add * W_down[:, j]`` is summed into an F32
  ``blk.N.ffn_down.bias`` tensor, which llama.cpp's llama-family graphs load.
  Gemma's graph loads no such bias and normalises the FFN output first: with
  ``approximate`` the additive part becomes a fitted stand-in (post-FFN norm
  gain scaled in the file, an offset in a control vector next to it;
  :mod:`steerkit.runtimes.hf.post_norm_fit`), measured and described in the file.

The output also carries the profiles (names, sha256, full YAML) as
``steerkit.*`` metadata.  The file is streamed tensor by tensor from the
memory-mapped input (metadata copied byte for byte, memory does not grow
with the model), written to a temporary file and renamed into place; the
input is opened read-only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType
from gguf.quants import dequantize
from tqdm import tqdm

from steerkit.version import __version__
from steerkit.runtimes.llamacpp.gguf_out import pack_string_array_kv, pack_string_kv, write_gguf_copy
from steerkit.runtimes.llamacpp.scales import scale_rows
from steerkit.cache import atomic_write
from steerkit.errors import SteerkitError
from steerkit.plan import LayerEdits, Plan, compile_plan
from steerkit.profile import ModelBinding, Profile, dump_profile
from steerkit.weights.gguf_reader import GGUFWeights

__all__ = ["PatchReport", "patch_gguf", "embedded_profile", "KEY_PREFIX"]

KEY_PREFIX = "steerkit."
_KEY_NAMES, _KEY_SHA, _KEY_YAML, _KEY_VERSION, _KEY_APPROX = (
    KEY_PREFIX + k for k in ("profile.names", "profile.sha256", "profile.yaml", "version", "approximation")
)


@dataclass(frozen=True)
class PatchReport:
    """What a patch did."""

    output: Path
    scaled_rows: int
    bias_layers: tuple[int, ...]
    profile_sha256: str
    control_vector: Path | None = None  # the approximate additive part, for architectures without an FFN bias
    approximation: str | None = None  # what was approximated and its measured divergence (also in the file)


def gguf_binding(weights: GGUFWeights) -> ModelBinding:
    """The profile binding of a GGUF model."""
    return weights.binding()


def embedded_profile(weights: GGUFWeights) -> dict | None:
    """The ``steerkit.*`` metadata of a patched file (``None`` if it was never patched)."""
    file = weights.file
    if _KEY_SHA not in file.fields:
        return None
    return {"names": file.typed(_KEY_NAMES, "strings"), "sha256": file.typed(_KEY_SHA, "string"),
            "yaml": file.typed(_KEY_YAML, "string"), "steerkit": file.typed(_KEY_VERSION, "string"),
            "approximation": file.typed(_KEY_APPROX, "string")}


def control_vector_path(output: Path) -> Path:
    """Where the approximate control vector of a patched file goes: ``OUT.cvec.gguf`` next to it."""
    return output.with_name(output.name.removesuffix(".gguf") + ".cvec.gguf")


def _bias(weights: GGUFWeights, edits: LayerEdits, existing: np.ndarray | None) -> np.ndarray:
    bias = weights.down_offset(edits.layer, edits.neurons, edits.add)
    return bias + existing if existing is not None else bias


def patch_gguf(
    source: str | Path,
    profiles: list[Profile],
    output: str | Path,
    strength: float | None = None,
    allow_repatch: bool = False,
    progress: bool = True,
    approximate: bool = False,
) -> PatchReport:
    """Write ``output``: ``source`` with ``profiles`` compiled into its weights.

    Everything is checked before the first byte is written: the profiles fit
    the model, no edit is position-restricted, the architecture can carry an
    ``ffn_down`` bias if one is needed, every scaled tensor's quant type has a
    scale field, the file is not already patched (unless ``allow_repatch``).
    The profiles' YAML, names and hash go into ``steerkit.*`` metadata.
    With ``approximate``, clamp/add edits on an architecture whose llama.cpp
    graph has no FFN bias (Gemma) become a fitted stand-in: scaled post-FFN
    norm gains in the file and offsets in a control vector next to it
    (:func:`control_vector_path`); the file's metadata and the report's
    ``approximation`` say so, with the stand-in's measured divergence.

    >>> patch_gguf("model.gguf", [load_profile("dog.yaml")], "dog.gguf")   # doctest: +SKIP
    """
    weights = GGUFWeights(Path(source))
    plan = compile_plan(profiles, gguf_binding(weights), strength)
    profile_yaml = "\n---\n".join(dump_profile(p) for p in profiles)
    if strength is not None:
        profile_yaml += f"\n# strength override: {strength}"
    return write_patched(weights, plan, output, [p.name for p in profiles], profile_yaml, allow_repatch, progress,
                         approximate)


def write_patched(
    weights: GGUFWeights,
    plan: Plan,
    output: str | Path,
    names: list[str],
    profile_yaml: str,
    allow_repatch: bool = False,
    progress: bool = True,
    approximate: bool = False,
) -> PatchReport:
    """Write ``weights``' file with an already compiled ``plan`` applied (see :func:`patch_gguf`)."""
    source, output = weights.path, Path(output)
    if output.exists() and output.resolve() == source.resolve():
        raise SteerkitError(f"{output}: refusing to overwrite the input model; choose another output path")
    previous = embedded_profile(weights)
    if previous is not None and not allow_repatch:
        raise SteerkitError(
            f"{source}: already patched by steerkit (profiles {', '.join(previous['names'])}); pass --allow-repatch to patch again"
        )
    merged = plan.merged()
    arch = weights.info.arch
    tensors = {t.name: t for t in weights.file.tensors}

    # Resolve every change before writing anything.
    replaced: dict[str, np.ndarray] = {}
    added: dict[str, np.ndarray] = {}
    row_patches: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    scaled_rows = 0
    stand_in_needed = False  # clamp/add edits that only the fitted stand-in can carry
    for layer, edits in merged.items():
        if arch.experts is not None and arch.experts.biases:
            scaled_rows += _biased_expert_edits(weights, layer, edits, tensors, replaced, row_patches)
            continue
        scale = edits.mult != 1.0
        if scale.any():
            name = weights.ffn_tensor_name("up", layer)  # ffn_up_exps rows are (expert, neuron), the flat order
            tensor = tensors[name]
            rows = edits.neurons[scale]
            # Only the edited rows are read and kept: memory stays independent of the model size.
            data = tensor.data.reshape(-1, tensor.data.shape[-1])
            patched = scale_rows(data[rows], tensor.tensor_type, np.arange(len(rows)), edits.mult[scale], name)
            row_patches[name] = (rows, patched)
            scaled_rows += int(scale.sum())
        if (edits.add != 0).any():
            if arch.experts:
                raise SteerkitError(
                    f"{source}: clamp/add edits of expert neurons cannot be patched: an expert writes only for the "
                    "tokens routed to it and llama.cpp's MoE graphs load no per-expert bias; only scale/ablate "
                    "edits can be patched (use the transformers hooks for the rest)")
            if not arch.llama_cpp_ffn_down_bias:
                if approximate:
                    stand_in_needed = True
                    continue
                raise SteerkitError(
                    f"{source}: clamp/add edits need a blk.N.ffn_down.bias tensor, which llama.cpp's {arch.name} graph does "
                    "not load; only scale/ablate edits can be patched exactly (--approximate puts the rest in a control vector)"
                )
            name = f"blk.{layer}.ffn_down.bias"
            existing = None
            if name in tensors:
                existing = np.array(dequantize(tensors[name].data, tensors[name].tensor_type), dtype=np.float32).reshape(-1)
            bias = _bias(weights, edits, existing)
            (replaced if name in tensors else added)[name] = bias

    cvec_path = note = stand_in = None
    if stand_in_needed:
        cvec_path = control_vector_path(output)
        stand_in, note = _post_norm_stand_in(weights, plan, tensors, replaced, cvec_path.name, progress)
    digest = hashlib.sha256(profile_yaml.encode()).hexdigest()
    new_kv = [
        pack_string_array_kv(_KEY_NAMES, names),
        pack_string_kv(_KEY_SHA, digest),
        pack_string_kv(_KEY_YAML, profile_yaml),
        pack_string_kv(_KEY_VERSION, __version__),
    ]
    if note:
        new_kv.append(pack_string_kv(_KEY_APPROX, note))
    total = sum(t.n_bytes for t in weights.file.tensors)
    with atomic_write(output, suffix=".gguf") as tmp:
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"patch {output.name}", disable=not progress) as bar:
            write_gguf_copy(weights.file, tmp, lambda key: key.startswith(KEY_PREFIX), new_kv, replaced, added, bar.update,
                            row_patches, padding_key=KEY_PREFIX + "padding")
    if stand_in is not None:
        from steerkit.runtimes.llamacpp.cvec import write_control_vector

        write_control_vector(stand_in, weights.info.n_layers, cvec_path)
    return PatchReport(output, scaled_rows, tuple(sorted(int(n.split(".")[1]) for n in added)), digest, cvec_path, note)


def _float_tensor(tensors: dict, name: str, source: Path, types: tuple, why: str) -> np.ndarray:
    """A copy of a float tensor's values, ``[E, rows, cols]`` as stored (a one-line error naming it if it is
    missing or of another type)."""
    tensor = tensors.get(name)
    if tensor is None:
        raise SteerkitError(f"{source}: tensor {name} is missing (expected in a gpt-oss model)")
    if tensor.tensor_type not in types:
        raise SteerkitError(f"{source}: {name} is {tensor.tensor_type.name}; {why}")
    return np.array(tensor.data, copy=True)


def _biased_expert_edits(weights: GGUFWeights, layer: int, edits: LayerEdits, tensors: dict,
                         replaced: dict[str, np.ndarray], row_patches: dict) -> int:
    """Edits of gpt-oss expert neurons, whose ``h = (clamp(u) + 1) * glu(g)`` is not linear in the up row.

    * ablate (and the ablating half of clamp): up row ``(e, i)`` becomes zeros (all-zero bytes are 0 in
      every ggml type) and its up bias -1, so ``clamp(u) + 1 = 0`` and ``h = 0`` exactly;
    * other scales: the down column ``(e, :, i)`` is scaled (F32/F16 ``ffn_down_exps`` only);
    * add (clamp's constant): ``add * W_down[e][:, i]`` into ``ffn_down_exps.bias[e]``, which llama.cpp adds
      before weighting by the router, so it reaches exactly the tokens routed to the expert.

    Returns the number of neurons scaled.
    """
    source, d_ff = weights.path, weights.info.d_ff
    neurons, mult, add = edits.neurons, edits.mult, edits.add
    up_name, down_name = f"blk.{layer}.ffn_up_exps", f"blk.{layer}.ffn_down_exps"
    f32, why_bias = (GGMLQuantizationType.F32,), "expected F32 (an expert bias, as llama.cpp's converter writes it)"
    zero, scale = mult == 0.0, (mult != 0.0) & (mult != 1.0)
    if zero.any():
        up = tensors[up_name + ".weight"]  # checked by the reader
        data = up.data.reshape(-1, up.data.shape[-1])  # rows (expert, neuron): the flat order
        row_patches[up.name] = (neurons[zero], np.zeros_like(data[neurons[zero]]))
        bias = _float_tensor(tensors, up_name + ".bias", source, f32, why_bias)  # [E, d_ff]
        bias.reshape(-1)[neurons[zero]] = -1.0
        replaced[up_name + ".bias"] = bias
    if scale.any():
        down = _float_tensor(tensors, down_name + ".weight", source, (GGMLQuantizationType.F32, GGMLQuantizationType.F16),
                             "scale edits of gpt-oss expert neurons scale their down column, which needs it in F32 "
                             "or F16 (ablate, clamp and add work on any type)")  # [E, d, d_ff]
        for flat, factor in zip(neurons[scale].tolist(), mult[scale].tolist()):
            column = down[flat // d_ff, :, flat % d_ff]
            down[flat // d_ff, :, flat % d_ff] = (column.astype(np.float32) * np.float32(factor)).astype(down.dtype)
        replaced[down_name + ".weight"] = down
    if (add != 0).any():
        bias = _float_tensor(tensors, down_name + ".bias", source, f32, why_bias)  # [E, d]
        moved = add != 0
        columns = weights.down_columns(layer, neurons[moved]).astype(np.float64)  # [n, d], the original weights
        np.add.at(bias, neurons[moved] // d_ff, (add[moved].astype(np.float64)[:, None] * columns).astype(np.float32))
        replaced[down_name + ".bias"] = bias
    return int((mult != 1.0).sum())


def _post_norm_stand_in(weights: GGUFWeights, plan: Plan, tensors: dict, replaced: dict[str, np.ndarray],
                        cvec_name: str, progress: bool):
    """Fit the stand-in (:mod:`steerkit.runtimes.llamacpp.stand_in`) for the patched file and measure it.

    The fitted gains go into ``replaced`` (post-FFN norm weights); returns the control vector of the
    offsets and the note for the file's metadata.
    """
    from steerkit.runtimes.llamacpp.cvec import ControlVector
    from steerkit.runtimes.llamacpp.stand_in import fit_stand_in

    stand_in = fit_stand_in(weights, plan, rows_patched=True, progress=progress)
    for layer, fit in stand_in.fits.items():
        name = f"blk.{layer}.post_ffw_norm.weight"
        tensor = tensors.get(name)
        if tensor is None:
            raise SteerkitError(f"{weights.path}: tensor {name} is missing (expected in a {weights.info.arch.name} model)")
        if tensor.tensor_type != GGMLQuantizationType.F32:
            raise SteerkitError(f"{weights.path}: {name} is {tensor.tensor_type.name}, expected F32 (a norm weight)")
        replaced[name] = np.asarray(tensor.data, dtype=np.float32) * np.float32(fit.gain)
    vector = ControlVector({layer: fit.offset for layer, fit in stand_in.fits.items()}, weights.info.arch.name, [])
    return vector, (f"APPROXIMATION: {weights.info.arch.name} normalises the FFN output and llama.cpp loads no FFN bias "
                    f"here, so the clamp/add edits of layers {sorted(stand_in.fits)} are replaced by a fitted stand-in: "
                    f"post-FFN norm gains scaled by {', '.join(f'{f.gain:.3f}' for f in stand_in.fits.values())} in this "
                    f"file, plus offsets in the control vector {cvec_name} (run llama.cpp with --control-vector "
                    f"{cvec_name}; without it this file is wrong). {stand_in.measured()}")
