"""Profile format: round trip, strict validation with file:line errors, and a fuzz test."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from steerkit.errors import SteerkitError
from steerkit.plan import compile_plan
from steerkit.profile import Edit, ModelBinding, Profile, dump_profile, load_profile, parse_profile, save_profile

GOOD = """\
steerkit: 1
name: dog
description: talk about dogs
model: {arch: llama, n_layers: 3, d_model: 32, d_ff: 48, vocab_size: 96}
positions: all
strength: 1.0
edits:
  - {layer: 2, neuron: 7, op: clamp, value: 30, tokens: [dog], score: 0.5}
  - {layer: 1, neuron: 3, op: scale, value: 2}
  - {layer: 1, neuron: 4, op: add, value: -1.5}
  - {layer: 0, neuron: 0, op: ablate}
"""


def test_round_trip(tmp_path):
    profile = parse_profile(GOOD, "good.yaml")
    assert [e.op for e in profile.edits] == ["clamp", "scale", "add", "ablate"]
    save_profile(profile, tmp_path / "p.yaml")
    again = load_profile(tmp_path / "p.yaml")
    assert again.edits == profile.edits and again.model == profile.model and again.name == "dog"
    assert dump_profile(again) == dump_profile(profile)


@pytest.mark.parametrize(
    "change, expected",
    [
        (("op: clamp", "op: clomp"), "bad.yaml:8: edits[0].op: 'clomp' is not one of"),
        (("layer: 2", "layer: 3"), "bad.yaml:8: edits[0].layer: 3 out of range 0..2"),
        (("neuron: 7", "neuron: 48"), "bad.yaml:8: edits[0].neuron: 48 out of range 0..47"),
        (("value: 30", "value: .nan"), "bad.yaml:8: edits[0].value: expected a finite number"),
        (("value: 30", "value: .inf"), "edits[0].value: expected a finite number"),
        (("value: 30", "value: lots"), "edits[0].value: expected a number, got 'lots'"),
        (("layer: 2", "layer: true"), "edits[0].layer: expected an integer"),
        (("strength: 1.0", "strength: 1.0\ncolour: red"), "bad.yaml:7: colour: unknown field"),
        (("score: 0.5", "score: 0.5, colour: 1"), "bad.yaml:8: edits[0].colour: unknown field"),
        (("steerkit: 1", "steerkit: 2"), "bad.yaml:1: steerkit: unsupported format version 2"),
        (("positions: all", "positions: some"), "bad.yaml:5: positions: 'some' is not one of"),
        (("op: ablate}", "op: clamp}"), "edits[3]: op clamp needs a 'value'"),
        (("{layer: 1, neuron: 4", "{layer: 1, neuron: 3"), "bad.yaml:10: edits[2]: neuron 1:3 is already edited by edits[1]"),
        (("edits:\n", "edits: [\n"), "bad.yaml:8: YAML syntax error: expected the node content"),
        (("name: dog\n", "name: dog\nname: cat\n"), "bad.yaml:3: YAML: duplicate key 'name'"),
    ],
)
def test_bad_profiles_name_line_and_field(change, expected):
    text = GOOD.replace(*change)
    assert text != GOOD
    with pytest.raises(SteerkitError) as info:
        parse_profile(text, "bad.yaml")
    message = str(info.value)
    assert expected in message and "\n" not in message


def test_unsafe_yaml_is_refused():
    with pytest.raises(SteerkitError, match="YAML"):
        parse_profile("!!python/object/apply:os.system ['echo hi']", "evil.yaml")


def test_oversized_file(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text(GOOD + "#" * (1 << 20))
    with pytest.raises(SteerkitError, match="over the 1048576-byte limit"):
        load_profile(path)


def test_wrong_model_refused():
    profile = parse_profile(GOOD, "good.yaml")
    other = ModelBinding("llama", 3, 32, 64, 96)
    with pytest.raises(SteerkitError, match="model.d_ff: profile is for 48, this model has 64"):
        compile_plan([profile], other)
    with pytest.raises(SteerkitError, match="vocab_sha256"):
        compile_plan([Profile("p", ModelBinding("llama", 3, 32, 48, 96, "a" * 64), [])], ModelBinding("llama", 3, 32, 48, 96, "b" * 64))


def test_combination_rule_composes_in_order():
    binding = ModelBinding("llama", 3, 32, 48, 96)
    clamp = Profile("a", binding, [Edit(1, 5, "clamp", 10.0)])
    scale = Profile("b", binding, [Edit(1, 5, "scale", 2.0)])
    add = Profile("c", binding, [Edit(1, 5, "add", 1.0)], strength=3.0)
    merged = compile_plan([clamp, scale, add]).merged()[1]
    assert (merged.mult[0], merged.add[0]) == (0.0, 23.0)  # ((h*0 + 10) * 2) + 3
    merged = compile_plan([scale, clamp]).merged()[1]
    assert (merged.mult[0], merged.add[0]) == (0.0, 10.0)  # the clamp applied last wins


def test_strength_scales_edits():
    assert Edit(0, 0, "clamp", 10).affine(0.5) == (0.0, 5.0)
    assert Edit(0, 0, "scale", 3).affine(0.5) == (2.0, 0.0)
    assert Edit(0, 0, "add", 4).affine(2) == (1.0, 8.0)
    assert Edit(0, 0, "ablate").affine(1) == (0.0, 0.0)


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.one_of(
    st.text(max_size=300),
    yaml_values.map(lambda v: yaml.safe_dump(v)),
    st.dictionaries(st.sampled_from(["steerkit", "name", "model", "edits", "positions", "strength", "x"]),
                    yaml_values, max_size=6).map(lambda v: yaml.safe_dump(v)),
))
def test_fuzz_loader_raises_only_clean_errors(text):
    try:
        parse_profile(text, "fuzz.yaml")
    except SteerkitError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("fuzz.yaml")
