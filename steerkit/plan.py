"""Compile profiles into a plan: per layer, which neurons get ``h*mult + add``.

Every edit is affine in the activation (see :mod:`steerkit.profile`), so a
layer's edits become three arrays (neuron indices, multipliers, offsets) that
a runtime applies with one indexed write, however many edits there are.

Combining profiles: they apply in the order given, each on top of the ones
before (function composition).  Two edits of the same neuron therefore
compose: a clamp applied last wins; two scales multiply; an add after a clamp
shifts the clamp value.  Each profile keeps its own ``positions`` and ``until``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from steerkit.errors import ProfileMismatch, UnsupportedEdit
from steerkit.profile import MAX_STRENGTH, ModelBinding, Profile, finite_number

__all__ = ["LayerEdits", "EditGroup", "Plan", "compile_plan", "check_binding"]


@dataclass(frozen=True)
class LayerEdits:
    """The edits of one layer: ``h[..., neurons] = h[..., neurons] * mult + add``.

    ``neurons`` are flat indices: ``expert * d_ff + neuron`` in a mixture of experts.
    """

    layer: int
    neurons: np.ndarray  # int64 [n]
    mult: np.ndarray  # float32 [n]
    add: np.ndarray  # float32 [n]


@dataclass(frozen=True)
class EditGroup:
    """Edits that share the token positions they apply to."""

    positions: str  # "all", "prompt" or "generated"
    layers: tuple[LayerEdits, ...]
    until: str | None = None  # the edits stop once the answer has named this (steerkit.concept.named_so_far)


@dataclass(frozen=True)
class Plan:
    """Resolved edits of one or more profiles, in application order."""

    groups: tuple[EditGroup, ...]
    names: tuple[str, ...]

    @property
    def is_empty(self) -> bool:
        return not any(group.layers for group in self.groups)

    def merged(self) -> dict[int, LayerEdits]:
        """All groups composed into one affine edit per neuron (for baking into weights).

        Raises unless every group applies at all positions: weights cannot
        tell prompt tokens from generated ones.
        """
        for group in self.groups:
            if group.positions != "all" and group.layers:
                raise UnsupportedEdit(
                    f"profile edits restricted to {group.positions!r} positions cannot be baked into weights "
                    f"(HF bake, GGUF patch): run them in steerkit (hooks, or its llama.cpp runtime), or use a "
                    f"profile that acts on all positions", "weights"
                )
            if group.until is not None and group.layers:
                raise UnsupportedEdit(
                    f"profile edits that stop once the answer names {group.until!r} cannot be baked into weights "
                    f"(HF bake, GGUF patch): run them in steerkit (hooks, or its llama.cpp runtime), or use a "
                    f"profile without 'until'", "weights"
                )
        per_neuron: dict[tuple[int, int], tuple[float, float]] = {}
        for group in self.groups:
            for edits in group.layers:
                for j, m, a in zip(edits.neurons.tolist(), edits.mult.tolist(), edits.add.tolist()):
                    m0, a0 = per_neuron.get((edits.layer, j), (1.0, 0.0))
                    per_neuron[(edits.layer, j)] = (m0 * m, a0 * m + a)
        return _group_by_layer(per_neuron)


def _group_by_layer(per_neuron: dict[tuple[int, int], tuple[float, float]]) -> dict[int, LayerEdits]:
    layers: dict[int, LayerEdits] = {}
    for layer in sorted({layer for layer, _ in per_neuron}):
        items = sorted((j, ma) for (l, j), ma in per_neuron.items() if l == layer)
        layers[layer] = LayerEdits(
            layer,
            np.array([j for j, _ in items], dtype=np.int64),
            np.array([m for _, (m, _) in items], dtype=np.float32),
            np.array([a for _, (_, a) in items], dtype=np.float32),
        )
    return layers


def check_binding(profile: Profile, actual: ModelBinding) -> None:
    """Refuse a profile made for another model (shapes, architecture or vocabulary differ)."""
    wanted = profile.model
    for name in ("arch", "n_layers", "d_model", "d_ff", "vocab_size", "n_experts"):
        if getattr(wanted, name) != getattr(actual, name):
            raise ProfileMismatch(
                f"{profile.source}: model.{name}: profile is for {getattr(wanted, name)!r}, "
                f"this model has {getattr(actual, name)!r} (made for another model)"
            )
    if wanted.vocab_sha256 and actual.vocab_sha256 and wanted.vocab_sha256 != actual.vocab_sha256:
        raise ProfileMismatch(f"{profile.source}: model.vocab_sha256: profile was made for a model with another vocabulary")


def compile_plan(profiles: list[Profile], model: ModelBinding | None = None, strength: float | None = None) -> Plan:
    """Resolve profiles (checked against ``model`` when given) into a :class:`Plan`.

    ``strength`` overrides every profile's own strength multiplier.

    >>> plan = compile_plan([load_profile("profiles/dog.yaml")])   # doctest: +SKIP
    """
    if strength is not None:
        strength = finite_number(strength, "strength", MAX_STRENGTH)
    groups = []
    for profile in profiles:
        if model is not None:
            check_binding(profile, model)
        factor = profile.strength if strength is None else strength
        per_neuron = {(e.layer, e.flat_neuron(profile.model.d_ff)): e.affine(factor) for e in profile.edits}
        groups.append(EditGroup(profile.positions, tuple(_group_by_layer(per_neuron).values()), profile.until))
    return Plan(tuple(groups), tuple(p.name for p in profiles))
