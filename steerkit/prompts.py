"""Built-in prompt sets and reference text (``steerkit/data``), and reading a user's prompt file."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from steerkit.errors import SteerkitError
from steerkit.files import read_bounded

__all__ = ["builtin_prompts", "read_prompts", "reference_text", "PROMPT_SETS", "RawText", "MAX_PROMPTS_BYTES"]

MAX_PROMPTS_BYTES = 1 << 20


class RawText(str):
    """A prompt continued as it is, without the chat template (what ``/v1/completions`` sends).

    Backends take a user message (``str``), a chat history (a list of
    ``{"role", "content"}``) or this.
    """

PROMPT_SETS = {
    "neutral": "neutral_prompts.txt",  # evaluation of promoting profiles: nothing leads to a topic
    "calibration": "calibration_prompts.txt",  # discovery's strength sweep; kept apart from the evaluation set
    "elicit": "elicit_prompts.txt",  # the model names common things unprompted: measuring suppression
}


def _data(name: str) -> str:
    return resources.files("steerkit").joinpath("data", name).read_text(encoding="utf-8")


def _parse(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def builtin_prompts(name: str) -> list[str]:
    """A built-in prompt set: ``neutral``, ``calibration`` or ``elicit``."""
    if name not in PROMPT_SETS:
        raise SteerkitError(f"prompt set {name!r}: expected one of {', '.join(PROMPT_SETS)}")
    return _parse(_data(PROMPT_SETS[name]))


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a text file: one per line; blank lines and ``#`` comments are skipped."""
    path = Path(path)
    try:
        text = read_bounded(path, MAX_PROMPTS_BYTES, "prompts").decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SteerkitError(f"{path}: not UTF-8 text") from exc
    prompts = _parse(text)
    if not prompts:
        raise SteerkitError(f"{path}: no prompts (expected one prompt per line)")
    return prompts


def reference_text() -> str:
    """The shipped reference text (varied everyday English) used for activation statistics."""
    return _data("reference.txt")
