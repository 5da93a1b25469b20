"""Vocabulary helpers: showing tokens to people and finding a word's tokens.

Byte-level BPE vocabularies (GPT-2 style, SmolLM2) mark a leading space with
``Ġ``; SentencePiece vocabularies (Gemma) with ``▁``.  A word like "dog"
usually exists as several single tokens: ``dog``, ``Ġdog``, ``Dog``,
``ĠDogs``...  :func:`word_variants` collects those.
"""

from __future__ import annotations

import re

from steerkit.errors import SteerkitError

__all__ = ["space_marker", "display_token", "token_display", "word_variants", "is_word_like", "tokens_from_vocab"]

_MARKERS = ("Ġ", "▁")
_WORD_LIKE = re.compile(r"^[Ġ▁][^\W\d_]{3,}$")


def space_marker(tokens: list[str]) -> str:
    """The leading-space marker this vocabulary uses (``Ġ`` or ``▁``)."""
    sample = tokens[: min(len(tokens), 60000)]
    counts = {m: sum(1 for t in sample if t.startswith(m)) for m in _MARKERS}
    return max(counts, key=counts.get)


def display_token(token: str, byte_level: bool = True) -> str:
    """A token as a person should read it: spaces as spaces, controls escaped.

    ``byte_level`` vocabularies (GPT-2 style, ``Ġ``) spell bytes as stand-in
    characters (``Ã©`` for é); tokenizers' ByteLevel decoder maps them back.
    SentencePiece vocabularies (``▁``) hold plain text.
    """
    if byte_level:
        from tokenizers.decoders import ByteLevel

        text = ByteLevel().decode([token])
    else:
        text = token.replace("▁", " ")
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def token_display(tokens: list[str]):
    """The :func:`display_token` variant suited to this vocabulary (byte-level or not)."""
    byte_level = space_marker(tokens) == "Ġ"
    return lambda token: display_token(token, byte_level)


def is_word_like(token: str) -> bool:
    """True for tokens that are a whole word: a leading-space marker, then three or more letters.

    Word pieces (``osaic``, ``ducive``) do not count; ``Ġdog`` and ``▁Paris`` do.
    """
    return bool(_WORD_LIKE.match(token))


def _forms(word: str) -> list[str]:
    bases = {word, word.lower(), word.capitalize()}
    plurals = {b + ("es" if b.endswith(("s", "x", "ch", "sh")) else "s") for b in bases}
    return sorted(bases | plurals)


def word_variants(word: str, tokens: list[str]) -> list[tuple[int, str]]:
    """Single-token spellings of ``word``: cases, leading space and plural.

    Returns ``(token id, token string)`` pairs; raises a one-line error if no
    form of the word is a single token of this vocabulary.

    >>> word_variants("dog", ["dog", "Ġdog", "cat"])
    [(0, 'dog'), (1, 'Ġdog')]
    """
    word = word.strip()
    if not word:
        raise SteerkitError("the word is empty: give a concept word such as 'dog'")
    if any(ch.isspace() for ch in word):
        raise SteerkitError(f"word {word!r} contains spaces: give a single word")
    index = {t: i for i, t in enumerate(tokens)}
    marker = space_marker(tokens)
    found: dict[int, str] = {}
    for form in _forms(word):
        for candidate in (form, marker + form):
            if candidate in index:
                found[index[candidate]] = candidate
    if not found:
        raise SteerkitError(
            f"word {word!r} is not a single token of this model's vocabulary in any form "
            f"(tried {', '.join(_forms(word))}, with and without a leading space)"
        )
    return sorted(found.items())


def tokens_from_vocab(vocab: dict[str, int], size: int) -> list[str]:
    """Token strings in id order from a ``{token: id}`` mapping; ids without a token get ``<#id>``."""
    strings = [f"<#{i}>" for i in range(size)]
    for text, index in vocab.items():
        if 0 <= index < size:
            strings[index] = text
    return strings
