"""A concept word as the model sees it: its tokens, and how to spot it in text.

Discovery scores neurons on the concept's *tokens*; evaluation counts the
concept's *mentions* in answers.  Both come from the word the user typed.

A word that is a single token in some form (``dog``, ``ĠDogs``...) is scored
on all those forms (see :func:`steerkit.vocab.word_variants`).  A word that
no form spells as one token (``elephant`` might be ``Ġele`` + ``phant``) is
scored on the longest vocabulary token that starts it, with its leading
space: to write the word the model must first emit that piece, and a neuron
promoting it promotes the word.  :attr:`Concept.note` says when that happened.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from steerkit.errors import SteerkitError
from steerkit.vocab import space_marker, word_variants

__all__ = ["Concept", "concept_from_word"]

_MIN_PIECE_LETTERS = 3  # shorter first pieces ("Ġe") would stand for thousands of words


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
        stem = re.escape(self.word.lower())
        return re.compile(rf"\b{stem}(?:s|es)?\b", re.IGNORECASE)

    def mentioned_in(self, text: str) -> bool:
        """True if ``text`` names the concept (the word or its plural, any case)."""
        return bool(self.pattern.search(text))


def concept_from_word(word: str, vocab: list[str]) -> Concept:
    """The :class:`Concept` for ``word`` in this vocabulary; a one-line error if it cannot be found.

    >>> concept_from_word("dog", vocab).tokens      # doctest: +SKIP
    ('Dog', 'Dogs', 'dog', 'dogs', 'ĠDog', 'ĠDogs', 'Ġdog', 'Ġdogs')
    """
    word = word.strip()
    if not word:
        raise SteerkitError("the concept word is empty: give a word such as 'dog'")
    if not re.fullmatch(r"[^\W\d_]+(?:[-'][^\W\d_]+)*", word):
        raise SteerkitError(f"concept {word!r}: expected one word made of letters (e.g. 'dog', 'Paris')")
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
