"""Text from untrusted files made safe for where it goes: a terminal (:func:`printable`) or XML
(:func:`xml_text`). Both show a character they remove as a visible escape (``\\x1b``, ``\\u202e``)."""

from __future__ import annotations

import re

# C0 controls but tab / newline / carriage return, DEL, C1 controls (0x9b starts an escape sequence on some
# terminals), bidirectional overrides and isolates, lone surrogates (unprintable in UTF-8).
_CONTROL = "\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff"
_UNSAFE = re.compile(f"[{_CONTROL}]")
_UNSAFE_LINE = re.compile(f"[{_CONTROL}\t\n\r]")
# Characters XML 1.0 does not allow at all (not even as &#...; references), plus those it discourages.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(m: re.Match) -> str:
    c = m.group()
    return _NAMED.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")


def printable(text: str, one_line: bool = False) -> str:
    """``text`` safe for a terminal: control characters escaped (``one_line``: newlines and tabs too)."""
    return (_UNSAFE_LINE if one_line else _UNSAFE).sub(_escape, text)


def xml_text(text: str) -> str:
    """``text`` with the characters XML 1.0 cannot hold escaped (ElementTree escapes ``<``, ``&``, quotes)."""
    return _NOT_XML.sub(_escape, str(text))
