"""Steering profiles: the YAML format, its strict validation, and loading/saving.

A profile names MLP neurons and what to do to their activation ``h``:

========  =========================  ===========================
op        effect                     affine form ``h*mult + add``
========  =========================  ===========================
clamp c   ``h = c``                  mult 0, add c
scale s   ``h = s*h``                mult s, add 0
add a     ``h = h + a``              mult 1, add a
ablate    ``h = 0``                  mult 0, add 0
========  =========================  ===========================

``strength`` multiplies the edit: clamp and add values are multiplied by it,
a scale factor ``s`` becomes ``1 + strength*(s - 1)``; ablate becomes scale 0.

Example (format version 1)::

    steerkit: 1
    name: dog
    description: talk about dogs
    model: {arch: llama, n_layers: 30, d_model: 576, d_ff: 1536, vocab_size: 49152,
            vocab_sha256: 5f1c...}
    positions: all          # all | prompt | generated
    until: dog              # optional: the edits stop once the answer has named this word (or phrase)
    strength: 1.0
    edits:
      - {layer: 29, neuron: 808, op: clamp, value: 30, tokens: [dog, dogs], score: 0.41}

A mixture-of-experts model's binding adds ``n_experts`` (its ``d_ff`` is the
width of one expert) and each edit names its ``expert``: a neuron is
(layer, expert, neuron).  Dense profiles carry neither field.

Errors name the file, line and field.  YAML is read with a safe loader (no
object construction) and files over 1 MiB are refused.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from steerkit.cache import atomic_write
from steerkit.concept import normalise_concept
from steerkit.errors import SteerkitError
from steerkit.files import read_bounded

__all__ = [
    "Edit", "ModelBinding", "Profile", "load_profile", "parse_profile", "save_profile", "vocab_sha256",
    "joined_vocab_sha256", "neuron_label", "OPS", "POSITIONS",
]

FORMAT_VERSION = 1
_UNTIL_NEEDS = "needs positions all or generated (prompt-position edits end with the prompt anyway)"
MAX_PROFILE_BYTES = 1 << 20
OPS = ("clamp", "scale", "add", "ablate")
POSITIONS = ("all", "prompt", "generated")
#: Where ``discover`` makes a promoting profile act: the answer until it names the concept
#: (``positions: generated`` with ``until``), the prompt, or every position (what weights can carry).
DISCOVERY_POSITIONS = ("until", "prompt", "all")


@dataclass(frozen=True)
class Edit:
    """One neuron edit.  ``value`` is the clamp value, scale factor or offset (unused for ablate)."""

    layer: int
    neuron: int
    op: str
    value: float = 0.0
    tokens: tuple[str, ...] = ()  # informational: what the neuron decodes to
    score: float | None = None  # informational: how discovery ranked it
    expert: int | None = None  # mixture-of-experts models: the expert the neuron belongs to

    def __post_init__(self) -> None:
        # Edits built in code get the checks a YAML file gets (the layer/neuron ranges are the Profile's).
        where = f"edit {self.label}"
        for name in ("layer", "neuron") + (("expert",) if self.expert is not None else ()):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise SteerkitError(f"{where}: {name}: expected a non-negative integer, got {value!r}")
        if self.op not in OPS:
            raise SteerkitError(f"{where}: op: {self.op!r} is not one of {', '.join(OPS)}")
        object.__setattr__(self, "value", finite_number(self.value, f"{where}: value", MAX_EDIT_VALUE))
        if self.score is not None:
            object.__setattr__(self, "score", finite_number(self.score, f"{where}: score"))
        if isinstance(self.tokens, str) or not all(isinstance(t, str) for t in self.tokens):
            raise SteerkitError(f"{where}: tokens: expected a list of strings")
        object.__setattr__(self, "tokens", tuple(self.tokens))

    @property
    def label(self) -> str:
        """``layer:neuron``, or ``layer:expert:neuron`` for an expert's neuron."""
        return neuron_label(self.layer, self.neuron, self.expert)

    def flat_neuron(self, d_ff: int) -> int:
        """The neuron's index among its layer's neurons, every expert's: ``expert * d_ff + neuron``."""
        return (self.expert or 0) * d_ff + self.neuron

    def affine(self, strength: float = 1.0) -> tuple[float, float]:
        """``(mult, add)`` so that the edited activation is ``h*mult + add``."""
        if self.op == "clamp":
            return 0.0, self.value * strength
        if self.op == "add":
            return 1.0, self.value * strength
        if self.op == "scale":
            return 1.0 + strength * (self.value - 1.0), 0.0
        return 1.0 - strength, 0.0  # ablate = scale by 0


@dataclass(frozen=True)
class ModelBinding:
    """The model a profile was made for: shapes plus a hash of the vocabulary.

    The vocabulary hash is the same for the GGUF and Hugging Face copies of a
    model, so one profile serves both runtimes.
    """

    arch: str
    n_layers: int
    d_model: int
    d_ff: int  # neurons per MLP (per expert in a mixture of experts)
    vocab_size: int
    vocab_sha256: str | None = None
    n_experts: int = 1  # experts per layer; 1: a dense MLP

    def edit_at(self, layer: int, flat: int, op: str, value: float = 0.0, **info) -> "Edit":
        """The :class:`Edit` of neuron ``flat`` of ``layer`` (a flat index: ``expert * d_ff + neuron``)."""
        expert, neuron = divmod(int(flat), self.d_ff)
        return Edit(int(layer), neuron, op, value, expert=expert if self.n_experts > 1 else None, **info)

    def label(self, layer: int, flat: int) -> str:
        """How to name neuron ``flat`` of ``layer`` to a user: ``L:N`` or, with experts, ``L:E:N``."""
        expert, neuron = divmod(int(flat), self.d_ff)
        return neuron_label(layer, neuron, expert if self.n_experts > 1 else None)


def neuron_label(layer: int, neuron: int, expert: int | None = None) -> str:
    """``layer:neuron``, or ``layer:expert:neuron`` for an expert's neuron."""
    return f"{layer}:{neuron}" if expert is None else f"{layer}:{expert}:{neuron}"


@dataclass
class Profile:
    """A validated steering profile."""

    name: str
    model: ModelBinding
    edits: list[Edit]
    description: str = ""
    positions: str = "all"
    strength: float = 1.0
    provenance: dict[str, Any] = field(default_factory=dict)
    source: str = "<profile>"  # where it was read from, for messages
    #: With ``positions`` all or generated: the edits stop for the rest of an answer once it has named this
    #: word or phrase (:func:`steerkit.concept.named_so_far`).  Weights cannot do that: runtimes only.
    until: str | None = None

    def __post_init__(self) -> None:
        # Profiles built in code get the checks a YAML file gets, with the same field names.
        where = f"{self.source}: " if self.source != "<profile>" else f"profile {self.name!r}: "
        if not isinstance(self.name, str) or not self.name.strip():
            raise SteerkitError(f"{where}name: expected a non-empty string")
        for name in ("name", "description"):
            if not isinstance(getattr(self, name), str) or not _is_unicode(getattr(self, name)):
                raise SteerkitError(f"{where}{name}: expected Unicode text")
        if not isinstance(self.model, ModelBinding):
            raise SteerkitError(f"{where}model: expected a ModelBinding, got {type(self.model).__name__}")
        if self.positions not in POSITIONS:
            raise SteerkitError(f"{where}positions: {self.positions!r} is not one of {', '.join(POSITIONS)}")
        self.strength = finite_number(self.strength, f"{where}strength", MAX_STRENGTH)
        if self.until is not None:
            if not isinstance(self.until, str):
                raise SteerkitError(f"{where}until: expected a word or short phrase, got {_short(self.until)}")
            try:
                self.until = normalise_concept(self.until)
            except SteerkitError as exc:
                raise SteerkitError(f"{where}until: {exc}") from None
            if self.positions == "prompt":
                raise SteerkitError(f"{where}until: {_UNTIL_NEEDS}")
        if not isinstance(self.provenance, dict):
            raise SteerkitError(f"{where}provenance: expected a mapping")
        seen: dict[tuple[int, int], int] = {}
        for index, edit in enumerate(self.edits):
            if not isinstance(edit, Edit):
                raise SteerkitError(f"{where}edits[{index}]: expected an Edit, got {type(edit).__name__}")
            problem = _expert_problem(edit.expert is not None, self.model)
            if problem:
                raise SteerkitError(f"{where}edits[{index}]: {problem}")
            for name, high in (("layer", self.model.n_layers - 1), ("neuron", self.model.d_ff - 1),
                               ("expert", self.model.n_experts - 1)):
                if (getattr(edit, name) or 0) > high:
                    raise SteerkitError(f"{where}edits[{index}].{name}: {getattr(edit, name)} out of range 0..{high}")
            key = (edit.layer, edit.flat_neuron(self.model.d_ff))
            if key in seen:
                raise SteerkitError(f"{where}edits[{index}]: neuron {edit.label} is already edited by "
                                    f"edits[{seen[key]}]")
            seen[key] = index


    @property
    def placement(self) -> str:
        """Where the edits act, in words: ``positions all``, ``positions generated until 'dog'``."""
        return f"positions {self.positions}" + (f" until {self.until!r}" if self.until else "")


def _expert_problem(has_expert: bool, model: ModelBinding) -> str | None:
    """Why an edit with (or without) an ``expert`` does not fit ``model``; ``None`` if it does."""
    if model.n_experts > 1 and not has_expert:
        return f"expert: missing (the model has {model.n_experts} experts per layer: name the neuron's expert)"
    if model.n_experts == 1 and has_expert:
        return "expert: given, but the model has no experts (a dense MLP)"
    return None


def finite_number(value: Any, where: str, bound: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SteerkitError(f"{where}: expected a number, got {_short(value)}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise SteerkitError(f"{where}: expected a finite number, got {_short(value)}")
    if bound is not None and abs(number) > bound:
        raise SteerkitError(f"{where}: {number:g} is outside ±{bound:g}")
    return number


def _is_unicode(text: str) -> bool:
    """False for text holding lone surrogates (which no file or terminal can take)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def vocab_sha256(tokens: list[str]) -> str:
    """Hash of a vocabulary's token strings, in id order.

    Spaces count as SentencePiece's ``▁``: Gemma's GGUF stores its runs-of-space
    tokens with plain spaces where the Hugging Face tokenizer shows ``▁``, and
    both copies must hash alike.
    """
    return joined_vocab_sha256("\0".join(tokens).encode("utf-8", "surrogatepass"))


def joined_vocab_sha256(joined: bytes) -> str:
    """:func:`vocab_sha256` from the tokens' UTF-8 bytes joined by NUL bytes (a GGUF's array, undecoded)."""
    return hashlib.sha256(joined.replace(b" ", "▁".encode())).hexdigest()  # a space byte is never part of another character


MAX_YAML_DEPTH = 32  # profiles nest 3 levels; provenance a few more
MAX_INT_DIGITS = 30  # no field needs more; int("9" * 5000) would hit Python's digit limit
MAX_STRENGTH = 1e3  # far beyond any useful setting; with MAX_EDIT_VALUE keeps every compiled edit within ±1e8
MAX_EDIT_VALUE = 1e5  # |clamp|, |add|, |scale|: the largest activation measured on the shipped models is ~2,800
# (SmolLM2 layer 28); discovery goes up to 32x a peak. Larger values only overflow what weights can hold


class _LineLoader(yaml.SafeLoader):
    """A safe loader whose mappings remember the line of each key, bounded for hostile files:
    no anchors or aliases (a few hundred bytes of aliases expand to gigabytes), nesting at most
    :data:`MAX_YAML_DEPTH` deep, integers of at most :data:`MAX_INT_DIGITS` digits, and text
    that is valid Unicode (no lone surrogates).
    """

    _depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise yaml.composer.ComposerError(None, None, "anchors and aliases (&name, *name) are not allowed "
                                              "in profiles", event.start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested more than {MAX_YAML_DEPTH} levels deep",
                                                  event.start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _construct_int(loader: _LineLoader, node: yaml.ScalarNode) -> int:
    digits = sum(ch.isdigit() for ch in node.value)
    if digits > MAX_INT_DIGITS:
        raise yaml.constructor.ConstructorError(None, None, f"integer of {digits} digits (at most {MAX_INT_DIGITS})",
                                                node.start_mark)
    return yaml.SafeLoader.construct_yaml_int(loader, node)


def _construct_str(loader: _LineLoader, node: yaml.ScalarNode) -> str:
    value = loader.construct_scalar(node)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise yaml.constructor.ConstructorError(None, None, "text holds a lone surrogate (not valid Unicode)",
                                                node.start_mark) from None
    return value


class _Mapping(dict):
    line: int = 0
    key_lines: dict


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> _Mapping:
    mapping = _Mapping()
    mapping.line = node.start_mark.line + 1
    mapping.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is not a string", key_node.start_mark)
        if key in mapping:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        mapping[key] = loader.construct_object(value_node, deep=True)
        mapping.key_lines[key] = key_node.start_mark.line + 1
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_LineLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_LineLoader.add_constructor("tag:yaml.org,2002:str", _construct_str)


class _Checker:
    """Field checks that produce ``file:line: field: problem`` errors."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, mapping: Any, key: str | None, path: str, problem: str) -> SteerkitError:
        line = getattr(mapping, "key_lines", {}).get(key) if key else None
        line = line or getattr(mapping, "line", None)
        where = f"{self.source}:{line}" if line else self.source
        return SteerkitError(f"{where}: {path}: {problem}")

    def mapping(self, value: Any, parent: Any, key: str | None, path: str, allowed: set[str], required: set[str]) -> dict:
        if not isinstance(value, dict):
            raise self.fail(parent, key, path, f"expected a mapping, got {type(value).__name__}")
        for name in value:
            if name not in allowed:
                raise self.fail(value, name, f"{path}.{name}" if path else name, f"unknown field (allowed: {', '.join(sorted(allowed))})")
        for name in sorted(required):
            if name not in value:
                raise self.fail(value, None, path or "profile", f"missing required field {name!r}")
        return value

    def integer(self, mapping: dict, key: str, path: str, low: int = 0, high: int | None = None) -> int:
        value = mapping[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(mapping, key, path, f"expected an integer, got {value!r}")
        if value < low or (high is not None and value > high):
            raise self.fail(mapping, key, path, f"{value} out of range {low}..{high if high is not None else 'inf'}")
        return value

    def number(self, mapping: dict, key: str, path: str, bound: float | None = None) -> float:
        try:
            return finite_number(mapping[key], "", bound)
        except SteerkitError as exc:
            raise self.fail(mapping, key, path, str(exc).removeprefix(": ")) from None

    def string(self, mapping: dict, key: str, path: str, choices: tuple[str, ...] | None = None) -> str:
        value = mapping[key]
        if not isinstance(value, str):
            raise self.fail(mapping, key, path, f"expected a string, got {value!r}")
        if choices and value not in choices:
            raise self.fail(mapping, key, path, f"{value!r} is not one of {', '.join(choices)}")
        return value


_TOP_FIELDS = {"steerkit", "name", "description", "model", "positions", "until", "strength", "edits", "provenance"}
_MODEL_FIELDS = {"arch", "n_layers", "d_model", "d_ff", "vocab_size", "vocab_sha256", "n_experts"}
_EDIT_FIELDS = {"layer", "neuron", "expert", "op", "value", "tokens", "score"}


def parse_profile(text: str, source: str = "<profile>") -> Profile:
    """Parse and validate profile YAML text; ``source`` names it in errors."""
    check = _Checker(source)
    try:
        data = yaml.load(text, Loader=_LineLoader)  # noqa: S506 - _LineLoader is a SafeLoader
    except (yaml.composer.ComposerError, yaml.constructor.ConstructorError) as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark else ""
        raise SteerkitError(f"{source}{line}: YAML: {exc.problem or exc.context}") from exc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark else ""
        raise SteerkitError(f"{source}{line}: YAML syntax error: {exc.problem or exc.context}") from exc
    except yaml.YAMLError as exc:
        raise SteerkitError(f"{source}: YAML error: {exc}") from exc
    except RecursionError as exc:
        raise SteerkitError(f"{source}: YAML nested too deeply") from exc
    top = check.mapping(data, None, None, "", _TOP_FIELDS, {"steerkit", "name", "model", "edits"})
    version = check.integer(top, "steerkit", "steerkit", 1)
    if version != FORMAT_VERSION:
        raise check.fail(top, "steerkit", "steerkit", f"unsupported format version {version} (this steerkit reads {FORMAT_VERSION})")
    name = check.string(top, "name", "name")
    description = check.string(top, "description", "description") if "description" in top else ""
    positions = check.string(top, "positions", "positions", POSITIONS) if "positions" in top else "all"
    strength = check.number(top, "strength", "strength", MAX_STRENGTH) if "strength" in top else 1.0
    until = None
    if "until" in top:
        until = check.string(top, "until", "until")
        try:
            until = normalise_concept(until)
        except SteerkitError as exc:
            raise check.fail(top, "until", "until", str(exc)) from None
        if positions == "prompt":
            raise check.fail(top, "until", "until", _UNTIL_NEEDS)

    model_map = check.mapping(top["model"], top, "model", "model", _MODEL_FIELDS,
                              _MODEL_FIELDS - {"vocab_sha256", "n_experts"})
    binding = ModelBinding(
        arch=check.string(model_map, "arch", "model.arch"),
        n_layers=check.integer(model_map, "n_layers", "model.n_layers", 1),
        d_model=check.integer(model_map, "d_model", "model.d_model", 1),
        d_ff=check.integer(model_map, "d_ff", "model.d_ff", 1),
        vocab_size=check.integer(model_map, "vocab_size", "model.vocab_size", 1),
        vocab_sha256=check.string(model_map, "vocab_sha256", "model.vocab_sha256") if "vocab_sha256" in model_map else None,
        n_experts=check.integer(model_map, "n_experts", "model.n_experts", 1) if "n_experts" in model_map else 1,
    )

    if not isinstance(top["edits"], list):
        raise check.fail(top, "edits", "edits", "expected a list of edits")
    edits: list[Edit] = []
    seen: dict[tuple[int, int], int] = {}
    for index, item in enumerate(top["edits"]):
        path = f"edits[{index}]"
        entry = check.mapping(item, top, "edits", path, _EDIT_FIELDS, {"layer", "neuron", "op"})
        op = check.string(entry, "op", f"{path}.op", OPS)
        if op != "ablate" and "value" not in entry:
            raise check.fail(entry, None, path, f"op {op} needs a 'value'")
        tokens = entry.get("tokens", [])
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise check.fail(entry, "tokens", f"{path}.tokens", "expected a list of strings")
        problem = _expert_problem("expert" in entry, binding)
        if problem:
            raise check.fail(entry, "expert" if "expert" in entry else None, path, problem)
        edit = Edit(
            layer=check.integer(entry, "layer", f"{path}.layer", 0, binding.n_layers - 1),
            neuron=check.integer(entry, "neuron", f"{path}.neuron", 0, binding.d_ff - 1),
            op=op,
            value=check.number(entry, "value", f"{path}.value", MAX_EDIT_VALUE) if "value" in entry else 0.0,
            tokens=tuple(tokens),
            score=check.number(entry, "score", f"{path}.score") if "score" in entry else None,
            expert=check.integer(entry, "expert", f"{path}.expert", 0, binding.n_experts - 1) if "expert" in entry else None,
        )
        key = (edit.layer, edit.flat_neuron(binding.d_ff))
        if key in seen:
            raise check.fail(entry, None, path, f"neuron {edit.label} is already edited by edits[{seen[key]}]")
        seen[key] = index
        edits.append(edit)
    provenance = top.get("provenance", {})
    if not isinstance(provenance, dict):
        raise check.fail(top, "provenance", "provenance", "expected a mapping")
    return Profile(name, binding, edits, description, positions, strength, _plain(provenance), source, until)


def _plain(value: Any) -> Any:
    # Strip the line-tracking mapping type so the profile dumps as plain YAML.
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def load_profile(path: str | Path) -> Profile:
    """Read and validate a profile file: a regular file of at most 1 MiB (read with that bound, whatever
    its stated size: ``/dev/zero`` or a FIFO never hang or fill memory)."""
    path = Path(path)
    try:
        text = read_bounded(path, MAX_PROFILE_BYTES, "profile").decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SteerkitError(f"{path}: not UTF-8 text") from exc
    return parse_profile(text, str(path))


def profile_to_dict(profile: Profile) -> dict[str, Any]:
    """The YAML-ready mapping of a profile (informational fields omitted when empty)."""
    edits = []
    for edit in profile.edits:
        entry: dict[str, Any] = {"layer": edit.layer, **({"expert": edit.expert} if edit.expert is not None else {}),
                                 "neuron": edit.neuron, "op": edit.op}
        if edit.op != "ablate":
            entry["value"] = edit.value
        if edit.tokens:
            entry["tokens"] = list(edit.tokens)
        if edit.score is not None:
            entry["score"] = edit.score
        edits.append(entry)
    # n_experts only where there are experts: dense profiles stay as they were.
    model = {k: v for k, v in asdict(profile.model).items() if v is not None and (k != "n_experts" or v > 1)}
    data: dict[str, Any] = {"steerkit": FORMAT_VERSION, "name": profile.name, "description": profile.description,
                            "model": model, "positions": profile.positions,
                            **({"until": profile.until} if profile.until else {}),
                            "strength": profile.strength, "edits": edits}
    if profile.provenance:
        data["provenance"] = profile.provenance
    return data


def dump_profile(profile: Profile) -> str:
    """Profile as YAML text (edits one per line)."""
    data = profile_to_dict(profile)
    edits = data.pop("edits")
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    text += "edits:\n" + "".join(f"  - {yaml.safe_dump(e, default_flow_style=True, allow_unicode=True, width=1000, sort_keys=False).strip()}\n" for e in edits)
    return text


def save_profile(profile: Profile, path: str | Path) -> None:
    """Write a profile as YAML, atomically."""
    with atomic_write(path, suffix=".yaml") as tmp:
        tmp.write_text(dump_profile(profile), encoding="utf-8")
