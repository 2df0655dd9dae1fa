"""Text folded for matching, with a map back to the original characters (so a hit can quote the text
exactly as it appeared). Rules, cues and word lists are normalised the same way as the text they match."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from functools import cache

import opencc

# Clause punctuation (as it is after NFKC) still separates words: "水枪，支付宝" must not read "枪支".
_CLAUSE = frozenset(",;:!?。、")
# Zero-width and formatting characters: invisible in the image text, used to break up matches.
_INVISIBLE = frozenset("\u200b\u200c\u200d\u200e\u200f\u2060\u2061\u2062\u2063\ufeff\u00ad\u180e") | {
    chr(c) for c in range(0xFE00, 0xFE10)
}
# One gap step in regex form: any character but letters, digits, CJK and "@" (see is_sep).
SEP_RE = r"[^\w@]|_"
_CJK = "\u3007\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff"
_CLAUSE_CLASS = re.escape("".join(sorted(_CLAUSE)))
# Separators that may be dropped: SEP_RE minus clause punctuation.
_SOFT_RUN = re.compile(f"(?<=[{_CJK}])(?:[^\\w@{_CLAUSE_CLASS}]|_)+(?=[{_CJK}])")
_NOT_SOFT = re.compile(f"(?:[^\\W_]|[@{_CLAUSE_CLASS}])+")
_ZERO_LIKE = frozenset("○◯⭕")


def is_sep(c: str) -> bool:
    """A character that can stand between the pieces of one evasive value: anything but letters, digits,
    CJK and "@" (spaces, punctuation, symbols, emoji, marks such as a keycap's). Same as SEP_RE."""
    return c == "_" or not (c.isalnum() or c == "@")


def is_latin(c: str) -> bool:
    return c.isascii() and c.isalpha()


def _fold(ch: str) -> str:
    """Full-width to half-width, compatibility forms (①, ²) to plain ones, case folded; invisibles gone."""
    if ch in _INVISIBLE:
        return ""
    if ch in _ZERO_LIKE:  # circles OCR and sellers use for the CJK zero 〇
        return "〇"
    return unicodedata.normalize("NFKC", ch).casefold()


class _FoldTable(dict[int, str]):
    """A ``str.translate`` table holding each character's fold, filled on first sight of the character;
    ``odd`` collects characters whose fold is not exactly one character (the offset map then needs care)."""

    def __init__(self) -> None:
        super().__init__()
        self.odd: set[str] = set()

    def __missing__(self, code: int) -> str:
        folded = _fold(chr(code))
        if len(folded) != 1:
            self.odd.add(chr(code))
        self[code] = folded
        return folded


_FOLD = _FoldTable()


@cache
def _t2s() -> Callable[[str], str]:
    """The Traditional→Simplified converter, built on first use (it loads dictionaries)."""
    return opencc.OpenCC("t2s").convert


def normalise(text: str) -> tuple[str, list[int]]:
    """``text`` folded for matching, and for each character of the result the index of the original
    character it came from (so a hit can quote the text exactly as it appeared).

    NFKC (full-width to half-width, ① to 1), case folding, Traditional to Simplified, invisible characters
    dropped, and spaces/symbols between two CJK characters removed ("減 肥 藥" reads "减肥药").
    """
    if text.isascii():
        return text.lower(), list(range(len(text)))
    folded = text.translate(_FOLD)
    if len(folded) == len(text) and _FOLD.odd.isdisjoint(text):
        index = list(range(len(text)))
    else:
        index = []
        for i, ch in enumerate(text):
            index.extend([i] * len(_FOLD[ord(ch)]))
    if not folded.isascii():
        convert = _t2s()
        simplified = convert(folded)
        if len(simplified) != len(folded):  # a phrase changed length: convert one character at a time
            simplified = "".join(t if len(t := convert(c)) == 1 else c for c in folded)
        folded = simplified
    return _squeeze_cjk(folded, index)


def normalise_word(text: str) -> str:
    """A cue, exclusion word or listed word from a rule file, normalised like the text it must match."""
    return normalise(text.strip())[0]


def _squeeze_cjk(s: str, index: list[int]) -> tuple[str, list[int]]:
    parts: list[str] = []
    idx: list[int] = []
    prev = 0
    for m in _SOFT_RUN.finditer(s):
        parts.append(s[prev : m.start()])
        idx += index[prev : m.start()]
        prev = m.end()
    if not prev:
        return s, index
    parts.append(s[prev:])
    idx += index[prev:]
    return "".join(parts), idx


def compact(s: str) -> tuple[str, list[int]]:
    """``s`` without soft separators, for word lists ("减 肥-药", "v.i.a.g.r.a"), and where each char was."""
    parts: list[str] = []
    where: list[int] = []
    for m in _NOT_SOFT.finditer(s):
        parts.append(m.group())
        where += range(m.start(), m.end())
    return "".join(parts), where
