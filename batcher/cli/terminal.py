"""Everything batcher prints goes through `echo`, which makes control characters visible.

Sheet cells and provider answers reach the terminal inside messages (an email in
an error line, a product name in a table). An escape sequence in such text
could clear the screen, retitle the window, or hide a line; a bidi override
could reorder what the operator reads. `printable` shows every such character
as a `\\x..`/`\\u....` escape instead. Line breaks and tabs that batcher itself
writes are kept.
"""

from __future__ import annotations

import unicodedata
from typing import Any

import click

_KEPT = frozenset("\n\t")
#: format characters that reorder or hide text (bidi controls, zero-width joiners aside)
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _escape(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def printable(text: str) -> str:
    """`text` with every control character and bidi override shown as an escape."""
    if text.isprintable():
        return text
    return "".join(
        _escape(ch)
        if ch not in _KEPT and (unicodedata.category(ch) in {"Cc", "Zl", "Zp"} or ch in _BIDI)
        else ch
        for ch in text
    )


def echo(message: Any = "", *, err: bool = False, nl: bool = True) -> None:
    """click.echo, with control characters made visible."""
    click.echo(printable(str(message)), err=err, nl=nl)
