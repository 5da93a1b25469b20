"""Compare the atlases of two models of identical shape (e.g. base vs instruct).

The headline figure is the paper's: the share of neurons whose top token is
the same in both models.  It is given for each of the four views.
"""

from __future__ import annotations

from dataclasses import dataclass

from steerkit.atlas import Atlas
from steerkit.decode import VIEWS
from steerkit.errors import SteerkitError

__all__ = ["AtlasComparison", "check_comparable", "compare_atlases"]


@dataclass(frozen=True)
class AtlasComparison:
    """Shares of neurons keeping their top-1 token, per view and per layer."""

    same_top1: dict[str, float]  # view label -> share over all neurons
    per_layer: dict[str, list[float]]  # view label -> share per layer
    n_neurons: int


def check_comparable(a, b) -> None:
    """Refuse two models (weight readers) whose atlases cannot be compared, before either atlas is built."""
    first, second = a.binding(), b.binding()
    if (first.n_layers, first.d_ff, first.n_experts) != (second.n_layers, second.d_ff, second.n_experts):
        raise SteerkitError(f"models differ in shape: {a.info.label} has {first.n_layers}x{a.info.neurons} neurons, "
                            f"{b.info.label} has {second.n_layers}x{b.info.neurons}")
    if first.vocab_sha256 != second.vocab_sha256:
        raise SteerkitError(f"models {a.info.label} and {b.info.label} have different vocabularies")


def compare_atlases(a: Atlas, b: Atlas) -> AtlasComparison:
    """Share of neurons whose top token agrees between two atlases of the same shape."""
    if a.token_ids.shape[:3] != b.token_ids.shape[:3]:
        raise SteerkitError(
            f"models differ in shape: {a.meta['model']} has {a.n_layers}x{a.neurons} neurons, "
            f"{b.meta['model']} has {b.n_layers}x{b.neurons}"
        )
    if a.vocab != b.vocab:
        raise SteerkitError(f"models {a.meta['model']} and {b.meta['model']} have different vocabularies")
    same = a.token_ids[..., 0] == b.token_ids[..., 0]  # [layers, neurons, views]
    return AtlasComparison(
        same_top1={v.label: float(same[:, :, i].mean()) for i, v in enumerate(VIEWS)},
        per_layer={v.label: [float(x) for x in same[:, :, i].mean(axis=1)] for i, v in enumerate(VIEWS)},
        n_neurons=int(same.shape[0] * same.shape[1]),
    )
