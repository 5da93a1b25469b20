"""From a concept word to a calibrated steering profile.

1. **Neurons**: :func:`steerkit.candidates.rank_candidates` ranks every neuron
   by how much its write side (with the promoting sign) and read side decode
   to the concept's tokens.
2. **Units**: each neuron's largest ``|h|`` on the shipped reference text.
   Activation scales differ by orders of magnitude between layers, so edit
   values are expressed as multiples of this unit.
3. **Sweep**: every (number of neurons, multiple) setting answers the
   calibration prompts in one batched generation; each setting gets a
   concept mention rate and three fluency figures: the answers' NLL under
   the unsteered model (given their prompts), their trigram repetition, and
   their diversity across prompts (distinct word pairs over all answers: it
   falls when every prompt gets the same answer, the sign of an edit that
   drowns the prompt).
   Each answer is also scored as :mod:`steerkit.scoring` does for ``eval``:
   concept, instruction relevance (the information the answer carries about
   its own prompt) and fluency, combined per answer by harmonic mean.
4. **Fallback**: when no neuron setting inside the budget moves the mention
   rate by :data:`VECTOR_FALLBACK` (the model has no neuron that writes the
   word: about half of 44 everyday words on SmolLM2-135M), the sweep also
   tries the model's own direction for the concept
   (:mod:`steerkit.concept_vector`) after two middle layers, at fractions
   of the residual stream's norm there, as adds on the prompt positions.
5. **Choice**: the setting with the best combined score whose fluency stays
   inside the budget (:class:`Budget`); ties go to the better mention rate,
   then the more fluent setting.  Choosing by mention rate alone picked
   settings whose answers name the concept and stop answering the question.

Promoting profiles *add* ``sign * multiple * unit`` to each neuron at the
**prompt positions only**: the model then reads a prompt that leans towards
the concept and writes its answer freely.  Clamping the same neurons at every
position makes a logit bias that sends answers into loops ("dog dog dog"),
measured when the method was chosen (docs/method.md) and again by this sweep's repetition figure.
Suppressing profiles *clamp* the neurons to the opposite sign at **every
position**, since the concept must be held down wherever it would come up.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from steerkit.version import __version__
from steerkit.atlas import Atlas
from steerkit.candidates import SHORTLISTED, Candidate, rank_candidates
from steerkit.concept import Concept, concept_from_word, profile_name
from steerkit.concept_vector import concept_directions, neuron_adds, vector_layers
from steerkit.errors import SteerkitError
from steerkit.metrics import AnswerStats
from steerkit.output_direction import output_direction, output_layers
from steerkit.scoring import AnswerScores, Summary, answer_stats_of, score_answers, summarise
from steerkit.plan import Plan, compile_plan
from steerkit.profile import DISCOVERY_POSITIONS, Edit, Profile
from steerkit.prompts import builtin_prompts, reference_text
from steerkit.weights import WeightReader

__all__ = ["Budget", "Setting", "SweepPoint", "Discovery", "discover", "build_profile", "profile_name",
           "discovered_profile_path", "profile_for_concept"]


@dataclass(frozen=True)
class Budget:
    """How much fluency a profile may cost, relative to the unsteered model on the same prompts."""

    nll: float = 1.5  # extra nats/token of the answers under the unsteered model
    repetition: float = 0.10  # extra repeated-trigram fraction
    diversity: float = 0.6  # distinct word pairs across answers, at least this fraction of the unsteered figure

    def allows(self, point: AnswerStats, base: AnswerStats) -> bool:
        return (point.nll - base.nll <= self.nll and point.repetition - base.repetition <= self.repetition
                and point.diversity >= self.diversity * base.diversity)


@dataclass(frozen=True)
class Setting:
    """One sweep setting: the first ``n_neurons`` candidates at ``multiple`` times their unit, or, with
    ``layer``, a direction added after that layer at ``multiple`` times the residual stream's norm there:
    the concept vector (``source="sentences"``, :mod:`steerkit.concept_vector`) or the output direction
    (``source="output"``, :mod:`steerkit.output_direction`)."""

    n_neurons: int
    multiple: float
    layer: int | None = None
    source: str = "neurons"

    def label(self) -> str:
        if self.layer is None:
            return f"{self.n_neurons} x {self.multiple:g}"
        kind = "output direction" if self.source == "output" else "vector"
        return f"{kind} after layer {self.layer} x {self.multiple:g}"


@dataclass(frozen=True)
class SweepPoint:
    setting: Setting
    stats: AnswerStats
    in_budget: bool
    summary: Summary | None = None  # concept, relevance, fluency and combined score (steerkit.scoring)


@dataclass
class Discovery:
    """What :func:`discover` found: the profile and the figures behind it."""

    profile: Profile
    concept: Concept
    candidates: list[Candidate]
    baseline: AnswerStats
    sweep: list[SweepPoint]
    chosen: SweepPoint
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def moved(self) -> bool:
        """Whether the chosen setting is inside the budget and changes the mention rate the wanted way."""
        suppress = self.profile.provenance.get("goal") == "suppress"
        rate, base = self.chosen.stats.mention_rate, self.baseline.mention_rate
        return self.chosen.in_budget and (rate < base if suppress else rate > base)

    def failure(self) -> str:
        """One line saying why the profile would not steer (empty when it does)."""
        if self.moved:
            return ""
        word = self.concept.word
        return (f"discovery found no setting that changes how often {word!r} is named while keeping fluency "
                f"inside the budget on this model (best: {self.chosen.stats.mention_rate:.2f} vs "
                f"{self.baseline.mention_rate:.2f} unsteered); no profile written")


POSITION_MODES = DISCOVERY_POSITIONS
_WHERE = {"prompt": "on the prompt positions", "all": "at every position",
          "until": "on the answer until it names {word!r}"}
PROMOTE_MULTIPLES = (4.0, 8.0, 16.0, 32.0)
# The output direction on the answer until it names the concept, as fractions of the residual norm after its layer.
OUTPUT_FRACTIONS = (0.2, 0.25, 0.3, 0.35)
UNTIL_TOKENS = 32  # calibration answer length in ``until`` mode: the word has to come up inside it
# At every position an add acts on each answer token too: much smaller values before answers loop.
PROMOTE_ALL_MULTIPLES = (0.5, 1.0, 2.0, 4.0)
SUPPRESS_MULTIPLES = (2.0, 4.0, 8.0, 16.0)
# Concept vectors (steerkit.concept_vector), as fractions of the residual stream's norm after their layer.
VECTOR_FRACTIONS = (0.3, 0.45, 0.6)
VECTOR_FALLBACK = 0.5  # tried when no neuron setting inside the budget moves the mention rate by this much
NEURON_COUNTS = (1, 2, 4, 8)
DISCOVERY_NEEDS = ("measures_activations", "batches_rows")  # what discovery asks of a backend
# Neuron-based discovery builds a missing atlas up to this many multiply-adds (layers x 2 sides x neurons x vocab
# x d_model): Gemma 3 270M's 1.2e13, a few minutes on 2 cores; an 8B llama's 4.8e14 (hours) ranks from a shortlist.
SMALL_ATLAS = 2e13
_MIN_UNIT = 0.05  # floor for neurons that barely fire on the reference text


_Reference = tuple[AnswerStats, list[AnswerScores]]  # the unsteered answers: budget figures and per-answer scores


def _placement(concept: Concept, positions: str) -> dict:
    """The profile fields that say where a promoting profile acts, for a discovery ``positions`` mode."""
    if positions == "until":
        return {"positions": "generated", "until": concept.word}
    return {"positions": positions}


def build_profile(concept: Concept, candidates: list[Candidate], units: np.ndarray, setting: Setting,
                  suppress: bool, binding, positions: str = "prompt",
                  vectors: dict[str, dict[int, np.ndarray]] | None = None) -> Profile:
    """The profile for one sweep setting (provenance is added by :func:`discover`).

    ``positions`` is where a promoting profile adds (``prompt``; ``all``: what weights can
    carry; ``until``: the answer, until it names the concept); a suppressing one always clamps at
    every position.  ``vectors[source][layer]`` holds the neuron adds of a direction at the residual
    stream's norm after that layer (for settings with a ``layer``).
    """
    if setting.layer is not None:
        return _vector_profile(concept, vectors[setting.source][setting.layer], setting, binding, positions)
    edits = []
    for candidate in candidates[: setting.n_neurons]:
        unit = max(float(units[candidate.layer, candidate.neuron]), _MIN_UNIT)
        value = round(candidate.sign * setting.multiple * unit * (-1 if suppress else 1), 3)
        edits.append(binding.edit_at(candidate.layer, candidate.neuron, "clamp" if suppress else "add", value,
                                     tokens=candidate.tokens, score=round(candidate.score, 4)))
    verb = "Avoid" if suppress else "Talk about"
    where = _WHERE[positions].format(word=concept.word)
    how = (f"clamps {len(edits)} neuron(s) that write {concept.word!r} against it at every position"
           if suppress else
           f"adds to {len(edits)} neuron(s) that write {concept.word!r} {where}")
    return Profile(
        name=profile_name(concept.word, suppress),
        model=binding,
        edits=edits,
        description=f"{verb} {concept.word}: {how} ({setting.multiple:g}x their peak on the reference text). "
                    f"Made by steerkit discover.",
        **({"positions": "all"} if suppress else _placement(concept, positions)),
    )


_DIRECTIONS = {
    "sentences": "the model's own direction for {word!r} (read from sentences that name it)",
    "output": "the direction that raises {word!r} over the average token at the output",
}


def _vector_profile(concept: Concept, adds: np.ndarray, setting: Setting, binding, positions: str) -> Profile:
    edits = [Edit(setting.layer, j, "add", round(float(a) * setting.multiple, 4)) for j, a in enumerate(adds)]
    where = _WHERE[positions].format(word=concept.word)
    what = _DIRECTIONS[setting.source].format(word=concept.word)
    return Profile(
        name=profile_name(concept.word),
        model=binding,
        edits=[e for e in edits if e.value != 0.0],
        description=f"Talk about {concept.word}: adds {what} after layer {setting.layer} {where}, at "
                    f"{setting.multiple:g}x the residual stream's norm there, as adds on the layer's neurons. "
                    f"Made by steerkit discover.",
        **_placement(concept, positions),
    )


def discover(word: str, reader: WeightReader, atlas: Atlas | None, backend, suppress: bool = False,
             prompts: list[str] | None = None, budget: Budget = Budget(), max_new_tokens: int | None = None,
             positions: str = "until", log: Callable[[str], None] = lambda message: None) -> Discovery:
    """Find, calibrate and choose a profile for ``word`` (see the module doc for the method).

    ``backend`` is a :class:`steerkit.runtimes.base.Backend` that measures
    activations (the transformers one; it also batches the sweep).  ``prompts``
    default to the built-in calibration set (promote) or elicit set (suppress).
    ``positions`` says where a promoting profile acts: ``until`` (the default)
    on the answer until it names the concept; ``prompt`` on the prompt only;
    ``all`` at every position, so ``steerkit patch`` can bake it into a GGUF.
    ``max_new_tokens`` per calibration answer defaults to 32 for ``until`` (the
    word has to come up inside it) and 20 otherwise.  ``atlas`` may be ``None``: ``until`` needs none (the
    neuron candidates are then left out of the provenance), and the neuron-based modes rank neurons from a
    shortlist (:func:`steerkit.candidates.rank_candidates`): a big model is steered without waiting for its atlas.
    """
    if positions not in POSITION_MODES:
        raise SteerkitError(f"positions: {positions!r} is not one of {', '.join(POSITION_MODES)}")
    until = positions == "until" and not suppress
    max_new_tokens = max_new_tokens or (UNTIL_TOKENS if until else 20)
    started = time.perf_counter()
    concept = concept_from_word(word, reader.tokens())
    notes: list[str] = []

    def note(message: str) -> None:
        notes.append(message)
        log(message)

    if concept.note:
        note(concept.note)
    log(f"concept tokens: {', '.join(concept.tokens)}")
    if atlas is None and not until:
        log(f"no atlas: ranking neurons from the {SHORTLISTED} write sides a vocabulary sample shortlists")
    # `until` adds a direction, not neurons: without an atlas its candidates (provenance only) are skipped.
    candidates = [] if atlas is None and until else rank_candidates(reader, atlas, concept, limit=max(NEURON_COUNTS))
    binding = reader.binding()
    for c in candidates:
        log(f"  {binding.label(c.layer, c.neuron)} write{'+' if c.sign > 0 else '-'} p={c.write_prob:.3f} x{c.specificity:.2f} "
            f"{c.read_view} p={c.read_prob:.3f}  {' '.join(c.tokens)}")

    units = backend.activation_scale(reference_text())
    prompts = prompts or builtin_prompts("elicit" if suppress else "calibration")

    vectors: dict[str, dict[int, np.ndarray]] = {}

    def measure(settings: list[Setting], reference: _Reference | None = None) -> tuple[_Reference, list[SweepPoint]]:
        """Sweep points of ``settings``, judged against the unsteered answers (generated with them in the same
        batch unless ``reference`` already holds them)."""
        plans: list[Plan | None] = [None] if reference is None else []
        plans += [compile_plan([build_profile(concept, candidates, units, s, suppress, backend.binding, positions,
                                              vectors)]) for s in settings]
        answers = backend.generate(prompts, plans, max_new_tokens)
        scores = score_answers(backend, concept, prompts, answers)
        if reference is None:
            reference = (answer_stats_of(scores[0], answers[0]), scores[0])
            answers, scores = answers[1:], scores[1:]
        base, base_scores = reference
        points = []
        for setting, row, scored in zip(settings, answers, scores):
            stats = answer_stats_of(scored, row)
            points.append(SweepPoint(setting, stats, budget.allows(stats, base), summarise(scored, base_scores, suppress)))
        return reference, points

    def better(a: AnswerStats, b: AnswerStats) -> bool:
        return a.mention_rate < b.mention_rate if suppress else a.mention_rate > b.mention_rate

    if until:
        layers = output_layers(reader.info.n_layers)
        norms = backend.residual_norms(reference_text())
        direction = output_direction(reader, concept)
        vectors["output"] = {layer: neuron_adds(reader, layer, direction) * norms[layer] for layer in layers}
        settings = [Setting(reader.info.d_ff, f, layer, "output") for layer in layers for f in OUTPUT_FRACTIONS]
    else:
        settings = [Setting(n, m) for n in NEURON_COUNTS if n <= len(candidates)
                    for m in (SUPPRESS_MULTIPLES if suppress else
                              PROMOTE_ALL_MULTIPLES if positions == "all" else PROMOTE_MULTIPLES)]
    log(f"sweep: {len(settings)} settings x {len(prompts)} prompts, {max_new_tokens} tokens each")
    reference, sweep = measure(settings)
    baseline = reference[0]
    gain = max((p.stats.mention_rate - baseline.mention_rate for p in sweep if p.in_budget), default=0.0)
    reads_residual = getattr(backend, "measures_activations", False)  # the fallback reads the residual stream
    if not suppress and positions == "prompt" and gain < VECTOR_FALLBACK and reads_residual:
        layers = vector_layers(reader.info.n_layers)
        note(f"no neuron setting inside the budget moved the mention rate by {VECTOR_FALLBACK:g} (best "
             f"{gain:+.2f}): trying the concept's own direction after layers {', '.join(map(str, layers))}")
        norms = backend.residual_norms(reference_text())
        vectors["sentences"] = {layer: adds * norms[layer] for layer, adds in
                                concept_directions(concept.word, backend, reader, layers, prompts).items()}
        sweep += measure([Setting(reader.info.d_ff, f, layer, "sentences") for layer in layers
                          for f in VECTOR_FRACTIONS], reference)[1]

    def goodness(point: SweepPoint) -> tuple:
        rate = -point.stats.mention_rate if suppress else point.stats.mention_rate
        return (point.in_budget, round(point.summary.score, 6), rate, -point.stats.nll)

    chosen = max(sweep, key=goodness)
    if not chosen.in_budget:
        note("no setting kept fluency inside the budget; chose the best score regardless")
    elif not better(chosen.stats, baseline):
        note("no setting inside the fluency budget changed how often the concept is named: "
             "this model has no usable neurons for it (see the sweep)")
    profile = build_profile(concept, candidates, units, chosen.setting, suppress, backend.binding, positions, vectors)
    seconds = time.perf_counter() - started
    profile.provenance = _provenance(concept, candidates, baseline, sweep, chosen, budget, prompts, suppress,
                                     seconds, notes, reader, positions)
    return Discovery(profile, concept, candidates, baseline, sweep, chosen, seconds, notes)


def _provenance(concept, candidates, baseline, sweep, chosen, budget, prompts, suppress, seconds, notes,
                reader, positions) -> dict:
    def row(point: SweepPoint) -> dict:
        scores = {} if point.summary is None else {
            "relevance": round(point.summary.relevance, 4), "score": round(point.summary.score, 4)}
        where = {} if point.setting.layer is None else {"direction": point.setting.source,
                                                        "after_layer": point.setting.layer}
        return {"neurons": point.setting.n_neurons, "multiple": point.setting.multiple, **where, **point.stats.as_dict(),
                **scores, "in_budget": point.in_budget}

    return {
        "method": (f"steerkit discover {'--suppress ' if suppress else ''}"
                   f"{f'--positions {positions} ' if positions != 'until' and not suppress else ''}{concept.word}"),
        "goal": "suppress" if suppress else "promote",
        "steerkit_version": __version__,
        "model": reader.info.label,
        "concept": {"word": concept.word, "tokens": list(concept.tokens), **({"note": concept.note} if concept.note else {})},
        "candidates": [
            {"neuron": reader.binding().label(c.layer, c.neuron), "sign": c.sign, "write_prob": round(c.write_prob, 4), "specificity": round(c.specificity, 3),
             "read_prob": round(c.read_prob, 4), "read_view": c.read_view, "tokens": list(c.tokens)}
            for c in candidates
        ],
        "calibration": {
            "units": "max |activation| per neuron on steerkit/data/reference.txt",
            "reference_sha256": hashlib.sha256(reference_text().encode()).hexdigest()[:16],
            "prompts": len(prompts),
            "prompts_sha256": hashlib.sha256("\n".join(prompts).encode()).hexdigest()[:16],
            "budget": {"nll": budget.nll, "repetition": budget.repetition, "diversity": budget.diversity},
            "unsteered": baseline.as_dict(),
            "sweep": [row(p) for p in sweep],
            "chosen": row(chosen),
            "seconds": round(seconds, 1),
        },
        **({"notes": notes} if notes else {}),
    }


def atlas_for_discovery(reader: WeightReader, positions: str = "until", suppress: bool = False,
                        progress: bool = True) -> Atlas | None:
    """The atlas discovery ranks neurons from: the cached one if there is one; else, for the neuron-based modes,
    one built now if the model is small (:data:`SMALL_ATLAS`); else none, and neurons are ranked from a
    shortlist (:func:`steerkit.candidates.rank_candidates`) instead of waiting hours for a big model's atlas.
    ``until`` needs none."""
    from steerkit.atlas import atlas_for, cached_atlas

    cached = cached_atlas(reader)
    if cached is not None or (positions == "until" and not suppress):
        return cached
    info = reader.info
    if info.n_layers * 2 * info.neurons * info.vocab_size * info.d_model <= SMALL_ATLAS:
        return atlas_for(reader, progress=progress)
    return None


def discovered_profile_path(reader: WeightReader, word: str, suppress: bool = False, positions: str = "until"):
    """Where ``discover`` caches the profile for ``word`` on this model (and ``steer`` looks for the ``until`` one).

    The name holds the steerkit version and the positions mode: a profile discovered by another
    version's method, or for other positions, is not reused.
    """
    from steerkit.cache import cache_dir

    mode = "suppress" if suppress else positions
    method = hashlib.sha256(f"discovery|{__version__}|{mode}".encode()).hexdigest()[:8]
    return cache_dir("profiles") / f"{reader.fingerprint()[:16]}-{profile_name(word, suppress)}-{method}.yaml"


def profile_for_concept(word: str, model: str | None = None, suppress: bool = False,
                        log: Callable[[str], None] = lambda message: None):
    """A profile path for ``word``: shipped (if it fits the model), cached, or discovered now.

    Returns ``(path, origin)`` with origin ``"shipped"``, ``"cached"`` or ``"discovered"``.
    """
    from steerkit.plan import check_binding
    from steerkit.profile import load_profile, save_profile
    from steerkit.shipped import shipped_profile
    from steerkit.weights import open_weights

    reader = open_weights(model)
    name = profile_name(word, suppress)
    shipped = shipped_profile(name)
    if shipped is not None:
        try:
            check_binding(load_profile(shipped), reader.binding())
            return shipped, "shipped"
        except SteerkitError:
            pass  # made for another model: discover for this one
    concept_from_word(word, reader.tokens())  # a word to discover: refuse a bad one before any heavy work
    cached = discovered_profile_path(reader, word, suppress)
    if cached.is_file():
        return cached, "cached"
    from steerkit.runtimes import load_backend

    log(f"no profile for {name!r} on {reader.info.label} yet: discovering one (about a minute)")
    backend = load_backend(model, needs=DISCOVERY_NEEDS)
    atlas = atlas_for_discovery(reader, suppress=suppress)
    found = discover(word, reader, atlas, backend, suppress=suppress, log=log)
    if not found.moved:
        raise SteerkitError(found.failure())
    save_profile(found.profile, cached)
    return cached, "discovered"
