"""Free text that people type (names, labels) and that others then read: what is refused,
and how untrusted text is made safe to keep in a log.

Names and labels end up in other people's screens, in the audit log and in terminals. A
control character (a newline, an escape sequence) or an invisible formatting character (the
bidirectional overrides U+202A-U+202E and isolates U+2066-U+2069, zero-width spaces, a
byte-order mark) can make a name display as something else than what it is ("Trojan
Source", CVE-2021-42574), forge a line in a log, or hide in a look-alike. So they are
refused with a clear error, by Unicode category: ``Cc`` (control), ``Cf`` (format),
``Cs`` (surrogate), ``Zl`` and ``Zp`` (line and paragraph separators). Two format characters
are allowed because real writing needs them: U+200C ZERO WIDTH NON-JOINER (Persian, Indic
scripts) and U+200D ZERO WIDTH JOINER (also inside emoji sequences such as a family).

Pure functions (only ``gateway.errors`` imported): used by the API's request models and by
the operators' command line.
"""

from __future__ import annotations

import unicodedata
from typing import Final

from gateway.errors import GatewayError

__all__ = ["TextRefused", "check_plain_text", "for_log", "for_spreadsheet", "refused_character"]

#: what makes a spreadsheet read a cell as a formula (OWASP "CSV injection"); tab and
#: carriage return too, which some programs strip before they look
_FORMULA_STARTS: Final = ("=", "+", "-", "@", "\t", "\r")

_REFUSED_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_ALLOWED_FORMAT: Final = frozenset({"\u200c", "\u200d"})


class TextRefused(GatewayError, ValueError):
    """A name or label contains a character that is refused (see the module docstring).
    Also a ``ValueError``, so pydantic reports it as a validation error of the field."""

    def __init__(self, what: str, position: int, character: str) -> None:
        self.what = what
        self.position = position
        self.character = character
        name = unicodedata.name(character, "unnamed")
        super().__init__(
            f"{what} contains the control or invisible formatting character "
            f"U+{ord(character):04X} ({name}) at position {position}; use plain text "
            "(no control characters, no bidirectional overrides or isolates, no zero-width "
            "spaces)"
        )


def refused_character(text: str) -> tuple[int, str] | None:
    """(position, character) of the first refused character of ``text``, or None."""
    for position, character in enumerate(text):
        if (
            unicodedata.category(character) in _REFUSED_CATEGORIES
            and character not in _ALLOWED_FORMAT
        ):
            return position, character
    return None


def check_plain_text(text: str, what: str = "the text") -> str:
    """``text`` unchanged, or :class:`TextRefused` naming the first refused character."""
    found = refused_character(text)
    if found is not None:
        raise TextRefused(what, *found)
    return text


def for_log(text: str, limit: int = 100) -> str:
    """``text`` made safe to keep in a log or an audit entry: every refused or
    non-printable character written as ``\\uXXXX`` (so nothing can break a line or turn
    the display around), and at most ``limit`` characters kept, with a note of how many
    were cut."""
    kept = text[:limit]
    escaped = "".join(
        f"\\u{ord(c):04x}"
        if not c.isprintable() or refused_character(c) is not None or c == "\\"
        else c
        for c in kept
    )
    if len(text) > limit:
        escaped += f"... ({len(text) - limit} more characters)"
    return escaped


def for_spreadsheet(cell: object) -> object:
    """A CSV cell that no spreadsheet opens as a formula: text beginning with ``=``, ``+``,
    ``-``, ``@``, a tab or a carriage return gets a leading ``'`` (shown as text, the rest
    kept as it was); anything else, numbers included (``-18.4`` stays a number), unchanged.
    For every text cell whose content someone else chose: a vehicle's trouble codes, a
    name (security review 4, decision 0039)."""
    if isinstance(cell, str) and cell.startswith(_FORMULA_STARTS):
        return "'" + cell
    return cell
