"""Number runs: digits read as one number through separators ("138 1234 5678", across two OCR lines),
numerals ("幺三八") and homoglyphs ("l38oo…"), as the ``[digits]`` section of the rule files says."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from imgaudit.rules.normalise import is_latin, is_sep


@dataclass(frozen=True, slots=True)
class DigitReading:
    """How digit-like characters are read inside number runs."""

    token: re.Pattern[str]  # letters, digits and digit-like characters written together
    digit: re.Pattern[str]  # a digit or numeral: a token without one holds no number
    numerals: Mapping[str, str]
    anywhere: Mapping[str, str]
    inner: Mapping[str, str]
    edge: Mapping[str, str]
    max_gap: int
    breakers: frozenset[str]


@dataclass(frozen=True, slots=True)
class Run:
    """Digits read as one number: groups of adjacent digits and the separators between them."""

    starts: tuple[int, ...]
    ends: tuple[int, ...]
    digits: tuple[str, ...]
    gaps: tuple[str, ...]  # gaps[k] stands between group k and group k + 1

    def window_ok(self, i: int, j: int) -> bool:
        """Groups i..j may be read as a number on their own: the whole run, a single group, or a part cut
        at a line break or at a separator unlike the ones inside it ("138-1234-5678/139...")."""
        last = len(self.digits) - 1
        if i == j or (i == 0 and j == last):
            return True
        inner = {self.gaps[k].strip() for k in range(i, j)}

        def cut(gap: str) -> bool:
            return "\n" in gap or gap.strip() not in inner

        return (i == 0 or cut(self.gaps[i - 1])) and (j == last or cut(self.gaps[j]))


def find_runs(s: str, d: DigitReading) -> list[Run]:
    """Every number run in the normalised text ``s``, in order."""
    positions: list[int] = []
    digits: list[str] = []
    for m in d.token.finditer(s):
        tok, base = m.group(), m.start()
        if tok.isascii() and tok.isdigit():
            positions.extend(range(base, base + len(tok)))
            digits.extend(tok)
            continue
        if d.digit.search(tok) is None:
            continue
        for k, digit in enumerate(_read_token(tok, d)):
            if digit is not None:
                positions.append(base + k)
                digits.append(digit)
    runs: list[Run] = []
    starts: list[int] = []
    ends: list[int] = []
    groups: list[list[str]] = []
    gaps: list[str] = []
    prev = -2
    for p, digit in zip(positions, digits, strict=True):
        if p == prev + 1:
            groups[-1].append(digit)
            ends[-1] = p + 1
        else:
            if groups and not _crossable(s, prev + 1, p, d):
                runs.append(Run(tuple(starts), tuple(ends), tuple(map("".join, groups)), tuple(gaps)))
                starts, ends, groups, gaps = [], [], [], []
            if groups:
                gaps.append(s[prev + 1 : p])
            starts.append(p)
            ends.append(p + 1)
            groups.append([digit])
        prev = p
    if groups:
        runs.append(Run(tuple(starts), tuple(ends), tuple(map("".join, groups)), tuple(gaps)))
    return runs


def _read_token(tok: str, d: DigitReading) -> list[str | None]:
    """The digit each character of a token stands for, or None. Homoglyphs count only in a token
    that already holds a digit and no other latin letter ("l38oo" yes, "iphone" no)."""

    def real(c: str) -> bool:
        return "0" <= c <= "9" or c in d.numerals

    has_digit = any(real(c) for c in tok)
    foreign = any(is_latin(c) and c not in d.anywhere and c not in d.inner and c not in d.edge for c in tok)
    out: list[str | None] = []
    last = len(tok) - 1
    for k, c in enumerate(tok):
        if "0" <= c <= "9":
            out.append(c)
        elif c in d.numerals:
            out.append(d.numerals[c])
        elif foreign or not has_digit:
            out.append(None)
        elif c in d.anywhere:
            out.append(d.anywhere[c])
        elif c in d.inner and 0 < k < last and real(tok[k - 1]) and real(tok[k + 1]):
            out.append(d.inner[c])
        elif c in d.edge and last > 0 and k in (0, last):
            out.append(d.edge[c])
        else:
            out.append(None)
    return out


def _crossable(s: str, a: int, b: int, d: DigitReading) -> bool:
    if b - a > d.max_gap:
        return False
    return all(is_sep(c) and c not in d.breakers for c in s[a:b])
