"""Hostile profiles, each with the words its one-line refusal must contain (shared by the CLI, API and
server suites)."""

from __future__ import annotations

HEAD = ("steerkit: 1\nname: p\nmodel: {arch: llama, n_layers: 2, d_model: 8, d_ff: 16, vocab_size: 12}\n")
EDITS = "edits:\n  - {layer: 1, neuron: 3, op: clamp, value: 2.0}\n"


def _bomb(levels: int) -> str:
    lines = ['  a0: &a0 ["x","x","x","x","x","x","x","x","x"]']
    lines += [f"  a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "provenance:\n" + "\n".join(lines) + "\n"


PROFILES = {
    "alias bomb": (HEAD + _bomb(9) + EDITS, ":5: YAML: anchors and aliases"),
    "anchor chain": (HEAD + "provenance:\n" + "".join(f"  k{i}: &k{i} {i}\n" for i in range(3000)) + EDITS,
                     "anchors and aliases"),
    "deep flow nesting": (HEAD + "provenance: {x: " + "[" * 5000 + "]" * 5000 + "}\n" + EDITS,
                          "nested more than 32 levels deep"),
    "400-digit value": (HEAD + "edits:\n  - {layer: 1, neuron: 3, op: clamp, value: " + "9" * 400 + "}\n",
                        "integer of 400 digits"),
    "5000-digit layer": (HEAD + "edits:\n  - {layer: " + "9" * 5000 + ", neuron: 3, op: scale, value: 2}\n",
                         "integer of 5000 digits"),
    "huge float": (HEAD + "edits:\n  - {layer: 1, neuron: 3, op: add, value: 1.0e+300}\n", "outside ±100000"),
    "infinite strength": (HEAD + "strength: .inf\n" + EDITS, "strength: expected a finite number"),
    "strength too big": (HEAD + "strength: 1.0e+5\n" + EDITS, "strength: 100000 is outside ±1000"),
    "lone surrogate": (HEAD.replace("name: p", 'name: "\\ud800"') + EDITS, "lone surrogate"),
    "python tag": (HEAD + "provenance: !!python/object/apply:os.system ['true']\n" + EDITS, "YAML"),
}
