"""Concept words: their tokens, the multi-token fallback, mention counting, and the metrics on answers."""

from __future__ import annotations

import pytest

from steerkit.concept import concept_from_word
from steerkit.errors import SteerkitError
from steerkit.metrics import answer_stats, diversity, repetition
from steerkit.prompts import PROMPT_SETS, builtin_prompts, read_prompts, reference_text

VOCAB = ["dog", "Ġdog", "ĠDogs", "Ġele", "Ġeleph", "phant", "ĠParis", "Ġthe", "Ġa", "cat", "Ġxy"]


def test_single_token_forms_are_collected():
    concept = concept_from_word("dog", VOCAB)
    assert set(concept.tokens) == {"dog", "Ġdog", "ĠDogs"} and concept.note == ""
    assert [VOCAB[i] for i in concept.token_ids] == list(concept.tokens)


def test_multi_token_word_uses_its_longest_first_piece_and_says_so():
    concept = concept_from_word("elephant", VOCAB)
    assert concept.tokens == ("Ġeleph",)
    assert "not a single token" in concept.note and "Ġeleph" in concept.note


@pytest.mark.parametrize("word, message", [
    ("", "empty"), ("   ", "empty"), ("one two three four five", "up to 4 words"), ("dog2", "made of letters"),
    ("a" * 65, "at most 64 characters"), ("dog zebra", "absent"),  # a phrase: every word must be found
    ("zebra", "absent from this model's vocabulary"), ("xyz", "absent"),  # only 2-letter piece "Ġxy"
])
def test_bad_words_are_refused_in_one_line(word, message):
    with pytest.raises(SteerkitError, match=message) as info:
        concept_from_word(word, VOCAB)
    assert "\n" not in str(info.value)


def test_a_phrase_is_scored_on_its_words_and_counted_whole():
    concept = concept_from_word("  hot   dog ", VOCAB + ["Ġhot"])
    assert concept.word == "hot dog" and set(concept.tokens) == {"Ġhot", "dog", "Ġdog", "ĠDogs"}
    assert "phrase" in concept.note
    assert concept.mentioned_in("Two HOT\ndogs, please") and not concept.mentioned_in("a hot day, a dog")
    from steerkit.discovery import profile_name

    assert profile_name("Hot  Dog") == "hot-dog" and profile_name("ice cream", suppress=True) == "no-ice-cream"


def test_mentions_count_whole_words_and_plurals_in_any_case():
    concept = concept_from_word("dog", VOCAB)
    assert concept.mentioned_in("My DOG sleeps") and concept.mentioned_in("two dogs.") and concept.mentioned_in("Dog!")
    assert not concept.mentioned_in("dogma and hotdogs") and not concept.mentioned_in("a cat")


def test_repetition_and_diversity():
    assert repetition("dog dog dog dog dog dog") == pytest.approx(0.75)
    assert repetition("one two three four five") == 0.0 and repetition("too short") == 0.0
    assert diversity(["a b c", "a b c"]) == pytest.approx(0.5)
    assert diversity(["a b c", "d e f"]) == 1.0
    stats = answer_stats(concept_from_word("dog", VOCAB), ["a dog here", "nothing"], [1.0, 2.0])
    assert stats.mention_rate == 0.5 and stats.nll == 1.5


def test_builtin_prompts_and_reference_text_ship_with_the_package(tmp_path):
    sets = {name: builtin_prompts(name) for name in PROMPT_SETS}
    assert len(sets["neutral"]) >= 10 and len(sets["calibration"]) >= 5 and len(sets["elicit"]) >= 10
    assert not set(sets["neutral"]) & set(sets["calibration"])  # discovery never tunes on the evaluation set
    assert len(reference_text().split()) > 300
    with pytest.raises(SteerkitError, match="prompt set"):
        builtin_prompts("nope")
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n")
    with pytest.raises(SteerkitError, match="no prompts"):
        read_prompts(empty)
    with pytest.raises(SteerkitError, match="cannot read"):
        read_prompts(tmp_path / "missing.txt")
    good = tmp_path / "p.txt"
    good.write_text("# c\nFirst?\n\n  Second.  \n")
    assert read_prompts(good) == ["First?", "Second."]
