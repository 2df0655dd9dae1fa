"""Terminal output that cannot be hijacked by the text it shows.

File names, URLs, OCR text, captions, metadata, error messages and config values come from whoever
uploaded an image or wrote a file. In text mode they pass through ``safe`` (inside our own Rich markup)
or ``cell`` (a Rich ``Text``, for tables) before they reach a terminal:

- Rich markup in them is escaped, so ``a[/x]b.jpg`` cannot crash a command and ``[blink]`` cannot
  restyle it; emoji codes (``:warning:``) are off on both consoles for the same reason;
- control characters (C0, DEL, C1) and bidirectional overrides are shown as ``\\uXXXX`` escapes, so an
  ANSI sequence cannot recolour, move the cursor or retitle the terminal, and U+202E cannot make
  ``gpj.exe`` read as ``exe.jpg``. Newlines (and tabs) survive only where a field is multi-line on purpose.

JSON mode keeps the exact text: ``dumps`` writes the same characters, escaped for JSON (C1 and bidi
controls too, so even raw JSON on a terminal is inert).
"""

from __future__ import annotations

import json
import re
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.text import Text

# C0 except \t \n, DEL, C1, the bidi embeddings/overrides/isolates and the implicit marks (LRM, RLM, ALM).
_UNSAFE = "\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
_UNSAFE_INLINE = re.compile(f"[\t\n{_UNSAFE}]")
_UNSAFE_MULTILINE = re.compile(f"[{_UNSAFE}]")
# What json.dumps(ensure_ascii=False) leaves raw but a terminal would still obey (C0 it escapes itself).
_JSON_RAW = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]")

console = Console(stderr=True, soft_wrap=True, emoji=False)  # messages, progress, errors
out = Console(highlight=False, soft_wrap=True, emoji=False)  # results


def _escape_char(m: re.Match[str]) -> str:
    return f"\\u{ord(m.group()):04x}"


def clean(value: object, *, multiline: bool = False) -> str:
    """``value`` as text with every terminal control character shown as a ``\\uXXXX`` escape.

    ``multiline`` keeps newlines and tabs (OCR text, tracebacks, log lines); elsewhere they are escaped
    too, so one field cannot fake another line of output.
    """
    text = value if isinstance(value, str) else str(value)
    return (_UNSAFE_MULTILINE if multiline else _UNSAFE_INLINE).sub(_escape_char, text)


def safe(value: object, *, multiline: bool = False) -> str:
    """``clean`` and Rich-escaped: for untrusted text inside a string that carries our own markup."""
    return escape(clean(value, multiline=multiline))


def cell(value: object, style: str = "", *, multiline: bool = False) -> Text:
    """A table cell (or any renderable) from untrusted text: a ``Text`` is never parsed as markup."""
    return Text(clean("" if value is None else value, multiline=multiline), style=style)


def dumps(obj: Any) -> str:
    """One JSON line: the exact text, readable CJK, nothing a terminal would act on."""
    return _JSON_RAW.sub(_escape_char, json.dumps(obj, ensure_ascii=False, default=str))
