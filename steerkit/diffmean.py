"""The standard baseline for concept steering: a mean-difference vector, written as a profile.

Contrast data, as in repeng and AxBench's DiffMean: the model's own answers
to prompts about the concept ("Tell me about elephants.", positive) and to
the neutral calibration prompts (negative), each read after its own prompt.
The vector is the difference of the mean residual stream after one layer,
over the answers' tokens, and it is added at every position.  (Answers to
the neutral prompts under the prompting baseline's system message were
tried first as the positive set: they named the concept only ~30 % of the
time, and the vector built from them moved nothing -- "dog" 0 -> 0.08 at
best on the neutral prompts.)

A vector added to the residual stream after layer L's MLP is exactly an
``add`` edit on that layer's neurons (:func:`steerkit.concept_vector.neuron_adds`).  So the baseline is an
ordinary profile: every runtime, ``patch`` and ``eval`` run it as they run
discovered profiles, and the comparison is like for like.
"""

from __future__ import annotations

import numpy as np

from steerkit.concept import profile_name
from steerkit.concept_vector import neuron_adds
from steerkit.profile import Edit, Profile

__all__ = ["CONCEPT_PROMPTS", "CONCEPT_SYSTEM", "AVOID_SYSTEM", "concept_messages", "diffmean_layer", "diffmean_profile",
           "diffmean_profiles"]

#: The system message of the prompting baseline (the wording measured in AxBench-style comparisons).
CONCEPT_SYSTEM = "You love {word}. Whatever the user asks, bring {word} into your answer."
#: The suppression counterpart.
AVOID_SYSTEM = "Never mention {word}. Whatever the user asks, answer without naming {word}."


def concept_messages(prompt: str, word: str, suppress: bool = False) -> list[dict[str, str]]:
    """``prompt`` as a chat with the prompting baseline's system message for ``word``."""
    system = (AVOID_SYSTEM if suppress else CONCEPT_SYSTEM).format(word=word)
    return [{"role": "system", "content": system}, {"role": "user", "content": prompt}]


#: Prompts whose answers are about the concept: the positive half of the contrast data.
CONCEPT_PROMPTS = ("Tell me about {word}.", "Write a short poem about {word}.", "Describe {word} in a few sentences.",
                   "What do you know about {word}?", "Write a short story about {word}.",
                   "Give me a fun fact about {word}.")


def diffmean_layer(n_layers: int) -> int:
    """The layer whose output the vector is added to: the middle of the model (AxBench steers Gemma 2
    at about half depth; on SmolLM2 layers 15-18 of 30 did best among 2-18, measured on two words)."""
    return max(1, round(0.5 * (n_layers - 1)))


def diffmean_profile(word: str, backend, reader, prompts: list[str], max_new_tokens: int = 40,
                     layer: int | None = None) -> Profile:
    """The mean-difference profile for ``word`` (see the module doc), built with ``backend``
    (one that measures the residual stream) from greedy answers to :data:`CONCEPT_PROMPTS`
    against answers to ``prompts``."""
    layer = diffmean_layer(reader.info.n_layers) if layer is None else layer
    return diffmean_profiles(word, backend, reader, prompts, [layer], max_new_tokens)[0]


def diffmean_profiles(word: str, backend, reader, prompts: list[str], layers: list[int],
                      max_new_tokens: int = 40) -> list[Profile]:
    """:func:`diffmean_profile` for each of ``layers``, from one set of contrast answers."""
    about = [p.format(word=word) for p in CONCEPT_PROMPTS]
    # One batched call: answers about the concept (positive), then to the neutral prompts (negative).
    answers = backend.generate(about + list(prompts), [None], max_new_tokens)[0]
    pos = backend.answer_states(about, answers[:len(about)], layers)
    neg = backend.answer_states(list(prompts), answers[len(about):], layers)
    profiles = []
    for layer, vector in zip(layers, (pos - neg).astype(np.float64)):
        amounts = neuron_adds(reader, layer, vector)
        profiles.append(Profile(
            name=f"diffmean-{profile_name(word)}",
            model=reader.binding(),
            edits=[Edit(layer, j, "add", float(a)) for j, a in enumerate(amounts) if a != 0.0],
            description=f"Mean-difference vector for {word!r} after layer {layer} (baseline made by steerkit eval)",
            positions="all",
            provenance={"method": "mean difference of the residual stream", "layer": layer, "prompts": len(prompts),
                        "norm": round(float(np.linalg.norm(vector)), 4)},
        ))
    return profiles
