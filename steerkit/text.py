"""Text that came from a file or a user, made safe to print on a terminal or in one line."""

from __future__ import annotations

import unicodedata

__all__ = ["printable"]


def printable(text: str, keep_newlines: bool = False) -> str:
    """``text`` with control characters (terminal escapes included) and lone surrogates shown as ``\\x..`` escapes."""
    out = []
    for char in str(text):
        if keep_newlines and char in "\n\t":
            out.append(char)
        elif unicodedata.category(char) in ("Cc", "Cs", "Cf") and char not in "\u200d":
            out.append(char.encode("unicode_escape", "backslashreplace").decode("ascii")
                       if ord(char) < 0xD800 or ord(char) > 0xDFFF else f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return "".join(out)
