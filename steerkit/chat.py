"""The chat REPL's state and commands, apart from any terminal: ``steerkit chat`` feeds it lines.

Slash commands change the session between turns; anything else is a user turn
answered under the active profiles.  Each command returns the lines to show.
"""

from __future__ import annotations

from collections.abc import Callable

from steerkit.errors import SteerkitError
from steerkit.sampling import Sampling
from steerkit.session import SteeringSession
from steerkit.text import printable

__all__ = ["ChatRepl", "HELP"]

HELP = ("commands: /profile FILE-or-NAME (add), /clear (drop all profiles), /strength S (or 'default'), /off, /on,\n"
        "          /edits (show active edits), /reset (forget the conversation), /help, /quit")


SHOWN_EDITS = 12  # edits listed per profile by /edits (a discovered direction has a layer's worth)


class ChatRepl:
    """A conversation over a :class:`SteeringSession`."""

    def __init__(self, session: SteeringSession, max_new_tokens: int, sampling: Sampling) -> None:
        self.session, self.max_new_tokens, self.sampling = session, max_new_tokens, sampling
        self.history: list[dict] = []
        self.done = False

    def command(self, line: str) -> list[str]:
        """Run one slash command; errors come back as one ``error:`` line."""
        name, _, argument = line.strip().partition(" ")
        argument = argument.strip()
        handler = self._COMMANDS.get(name)
        if handler is None:
            return [f"unknown command {printable(name)!r}", HELP]
        try:
            return handler(self, argument)
        except SteerkitError as exc:
            return [f"error: {printable(str(exc))}"]

    def ask(self, text: str, on_text: Callable[[str], None] | None = None) -> str:
        """Answer a user turn (the whole conversation so far is the prompt)."""
        self.history.append({"role": "user", "content": text})
        try:
            answer = self.session.generate(list(self.history), self.max_new_tokens, self.sampling, on_text)
        except BaseException:
            self.history.pop()  # a failed turn leaves no half conversation behind
            raise
        self.history.append({"role": "assistant", "content": answer})
        return answer

    def _profile(self, argument: str) -> list[str]:
        if not argument:
            return ["usage: /profile FILE-or-NAME (a profile file, or a shipped name such as dog)"]
        added = self.session.add_profile(argument)
        return [f"added {printable(added.name)} ({len(added.edits)} edits, {printable(added.placement)})"]

    def _clear(self, argument: str) -> list[str]:
        self.session.profiles.clear()
        return ["no profiles active"]

    def _strength(self, argument: str) -> list[str]:
        if argument in ("", "default"):
            self.session.set_strength(None)
            return ["strength: each profile's own"]
        try:
            value = float(argument)
        except ValueError:
            raise SteerkitError(f"/strength {printable(argument)!r}: expected a number") from None
        self.session.set_strength(value)
        return [f"strength {self.session.strength:g}"]

    def _switch(self, on: bool) -> list[str]:
        self.session.enabled = on
        return [f"steering {'on' if on else 'off'}"]

    def _edits(self, argument: str) -> list[str]:
        session = self.session
        if not session.profiles:
            return ["no profiles active"]
        strength = "each profile's own" if session.strength is None else f"{session.strength:g}"
        lines = [f"steering {'on' if session.enabled else 'off'}, strength {strength}"]
        for profile in session.profiles:
            lines.append(f"  {printable(profile.name)} ({printable(profile.placement)}, {len(profile.edits)} edits):")
            lines += [f"    {e.label} {e.op} {e.value:g}  {printable(' '.join(e.tokens[:5]))}"
                      for e in profile.edits[:SHOWN_EDITS]]
            if len(profile.edits) > SHOWN_EDITS:
                lines.append(f"    ... and {len(profile.edits) - SHOWN_EDITS} more")
        return lines

    def _reset(self, argument: str) -> list[str]:
        self.history.clear()
        return ["conversation cleared"]

    def _quit(self, argument: str) -> list[str]:
        self.done = True
        return []

    _COMMANDS = {
        "/profile": _profile, "/clear": _clear, "/strength": _strength,
        "/on": lambda self, _: self._switch(True), "/off": lambda self, _: self._switch(False),
        "/edits": _edits, "/reset": _reset, "/help": lambda self, _: [HELP], "/quit": _quit,
    }
