"""A concept word as the model sees it: its tokens, and how to spot it in text.

Discovery scores neurons on the concept's *tokens*; evaluation counts the
concept's *mentions* in answers.  Both come from the word the user typed.

A word that is a single token in some form (``dog``, ``ĠDogs``...) is scored
on all those forms (see :func:`steerkit.vocab.word_variants`).  A word that
no form spells as one token (``elephant`` might be ``Ġele`` + ``phant``) is
scored on the longest vocabulary token that starts it, with its leading
space: to write the word the model must first emit that piece, and a neuron
promoting it promotes the word.  :attr:`Concept.note` says when that happened.

A short phrase (``ice cream``, ``outer space``: up to :data:`MAX_WORDS` words)
is scored on the tokens of each of its words, found as above (words of
fewer than three letters are skipped), and counted in answers only as the
whole phrase.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from steerkit.errors import SteerkitError
from steerkit.vocab import space_marker, word_variants

__all__ = ["Concept", "concept_from_word", "normalise_concept", "profile_name", "mention_pattern", "named_so_far", "MAX_WORDS",
           "MAX_LETTERS"]

_MIN_PIECE_LETTERS = 3  # shorter first pieces ("Ġe") would stand for thousands of words
MAX_WORDS = 4
MAX_LETTERS = 64  # longer than any word a user means; bounds the regex and every file name built from it
_WORD = r"[^\W\d_]+(?:[-'][^\W\d_]+)*"


@dataclass(frozen=True)
class Concept:
    """A concept word, the token ids that stand for it, and a note on how they were chosen."""

    word: str
    token_ids: tuple[int, ...]
    tokens: tuple[str, ...]
    note: str = ""

    @property
    def pattern(self) -> re.Pattern:
        """Matches the word and its plural as whole words, any case."""
        return mention_pattern(self.word)

    def mentioned_in(self, text: str) -> bool:
        """True if ``text`` names the concept (the word or its plural, any case)."""
        return bool(self.pattern.search(text))


@functools.lru_cache(maxsize=256)
def mention_pattern(word: str) -> re.Pattern:
    """What counts as naming ``word`` in text: the word or phrase, or its plural, as whole words, any case.

    Evaluation counts mentions with it, and runtimes release ``until`` edits with it, so both agree.
    """
    stem = r"\s+".join(re.escape(part) for part in word.lower().split())
    return re.compile(rf"\b{stem}(?:s|es)?\b", re.IGNORECASE)


def named_so_far(word: str, text: str) -> bool:
    """Whether a text still being written has named ``word`` (what releases ``until`` edits).

    A word at the very end counts at once, though it may still grow ("dog" of "dogma"): waiting
    for the next token would steer that token too, and steered models then repeat the word.
    """
    return mention_pattern(word).search(text) is not None


def profile_name(word: str, suppress: bool = False) -> str:
    """The name of the profile for ``word``: ``dog``, ``ice-cream``, or ``no-dog`` for a suppressing one."""
    return f"{'no-' if suppress else ''}{'-'.join(word.lower().split())}"


def normalise_concept(word: str) -> str:
    """``word`` with its spaces normalised, or a one-line error if it is not a word or short phrase.

    Needs no model: commands call it before loading anything.
    """
    word = " ".join(word.split())
    if not word:
        raise SteerkitError("the concept word is empty: give a word such as 'dog'")
    if len(word) > MAX_LETTERS or not re.fullmatch(rf"{_WORD}(?: {_WORD}){{0,{MAX_WORDS - 1}}}", word):
        raise SteerkitError(f"concept {word[:MAX_LETTERS]!r}: expected a word or a phrase of up to {MAX_WORDS} words "
                            f"made of letters, at most {MAX_LETTERS} characters (e.g. 'dog', 'Paris', 'ice cream')")
    return word


def concept_from_word(word: str, vocab: list[str]) -> Concept:
    """The :class:`Concept` for ``word`` in this vocabulary; a one-line error if it cannot be found.

    >>> concept_from_word("dog", vocab).tokens      # doctest: +SKIP
    ('Dog', 'Dogs', 'dog', 'dogs', 'ĠDog', 'ĠDogs', 'Ġdog', 'Ġdogs')
    """
    word = normalise_concept(word)
    parts = [part for part in word.split() if len(part) >= _MIN_PIECE_LETTERS] or word.split()
    if len(parts) == 1 and " " not in word:
        return _word_concept(word, vocab)
    found = [_word_concept(part, vocab) for part in parts]
    ids = tuple(dict.fromkeys(i for c in found for i in c.token_ids))
    tokens = tuple(dict.fromkeys(t for c in found for t in c.tokens))
    return Concept(word, ids, tokens, f"{word!r} is a phrase: scoring the tokens of {', '.join(repr(p) for p in parts)}; "
                                      f"answers count only if they contain the whole phrase")


def _word_concept(word: str, vocab: list[str]) -> Concept:
    """The concept of one word: its single-token forms, or the longest token starting it."""
    marker = space_marker(vocab)
    try:
        pairs = word_variants(word, vocab)
    except SteerkitError:
        pairs = []
    if pairs:
        return Concept(word, tuple(i for i, _ in pairs), tuple(t for _, t in pairs))
    index = {t: i for i, t in enumerate(vocab)}
    for form in dict.fromkeys((word.lower(), word.capitalize(), word)):
        spelled = marker + form
        for end in range(len(spelled) - 1, len(marker) + _MIN_PIECE_LETTERS - 1, -1):
            piece = spelled[:end]
            if piece in index:
                note = (f"{word!r} is not a single token; scoring its first piece {piece!r} "
                        f"(the model must write it to start the word)")
                return Concept(word, (index[piece],), (piece,), note)
    raise SteerkitError(
        f"concept {word!r} is absent from this model's vocabulary: no form of it is a token, "
        f"and no token of {_MIN_PIECE_LETTERS}+ letters starts it"
    )
