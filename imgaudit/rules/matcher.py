"""Scanning OCR'd text with compiled rules: number and pattern rules, cue windows, negative contexts,
overlap resolution and word lists, each hit quoted as it appeared in the text."""

from __future__ import annotations

import bisect
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgaudit.rules.compile import PRIORITY_PLAIN, TRIE_END, Rule, RuleSet, compile_rules
from imgaudit.rules.normalise import compact, is_latin, normalise
from imgaudit.rules.numbers import Run, find_runs

# Longest digit string tried against number patterns: E.164 allows 15 digits, plus a "00" prefix.
MAX_NUMBER_DIGITS = 17
# How far back / ahead of a match an exclusion word (plus its gap) may stand, in characters.
CONTEXT_WINDOW = 24


@dataclass(frozen=True, slots=True)
class TextHit:
    """One risky thing found in the text, with enough context to show a reviewer where and why."""

    category: str  # "contact_info" or a word-list category ("prohibited", "drugs", ...)
    kind: str  # phone | landline | qq | wechat | email | url | telegram | whatsapp | word | ...
    severity: str  # "violate" or "review", from the rule
    value: str  # normalised value: "13812345678", "wxid_abc123", "example.com"
    masked: str  # for display and logs: "138****5678", "ab***@x.com"; words unmasked
    line: int  # index of the input line where the match starts
    text: str  # the original text that matched, as it appeared


def _is_word_char(c: str) -> bool:
    return c.isascii() and c.isalnum()


def _mask(mode: str, value: str) -> str:
    if mode == "none":
        return value
    if mode == "email":
        local, at, domain = value.partition("@")
        return f"{local[:2]}***@{domain}" if at else _mask("id", value)
    n = len(value)
    if mode == "number":
        head, tail = (3, 4) if n >= 11 else (2, 2) if n >= 6 else (1, 1)
    else:
        head, tail = (2, 2) if n >= 6 else (1, 1) if n >= 3 else (0, 0)
    if head + tail >= n:
        return "*" * n
    return value[:head] + "*" * (n - head - tail) + value[n - tail :]


@dataclass(frozen=True, slots=True)
class _Found:
    start: int  # span in normalised text
    end: int
    priority: int
    category: str
    kind: str
    severity: str
    value: str
    mask: str


@dataclass(frozen=True, slots=True)
class TextRules:
    """Compiled rules: build once with :meth:`load`, then :meth:`scan` any number of texts."""

    _set: RuleSet

    @classmethod
    def load(cls, rule_files: Sequence[Path] = (), word_files: Sequence[Path] = ()) -> TextRules:
        """The built-in rules, then each rule file on top, then each word file as a list of its own."""
        return cls(compile_rules(rule_files, word_files))

    def scan(self, lines: Sequence[str]) -> list[TextHit]:
        """Every contact detail and listed word in ``lines`` (OCR lines, in reading order), de-duplicated.

        Lines are read as one text so a number split over two lines is still found; each hit names the
        line it starts on.
        """
        if not lines:
            return []
        joined = "\n".join(lines)
        s, omap = normalise(joined)
        if not s:
            return []
        line_starts = [0]
        for line in lines[:-1]:
            line_starts.append(line_starts[-1] + len(line) + 1)

        found: list[_Found] = []
        runs = find_runs(s, self._set.digits)
        self._numbers(s, runs, found)
        self._patterns(s, joined, omap, found)
        self._cued(s, joined, omap, runs, found)
        found = _resolve(found)
        found += self._words(s)
        found.sort(key=lambda f: (f.start, -f.end))

        hits: list[TextHit] = []
        seen: set[tuple[str, str, str]] = set()
        for f in found:
            key = (f.category, f.kind, f.value)
            if key in seen:
                continue
            seen.add(key)
            o0, o1 = omap[f.start], omap[f.end - 1] + 1
            at = bisect.bisect_right(line_starts, o0) - 1
            hits.append(
                TextHit(f.category, f.kind, f.severity, f.value, _mask(f.mask, f.value), at, joined[o0:o1])
            )
        return hits

    # -- number runs --

    def _numbers(self, s: str, runs: list[Run], found: list[_Found]) -> None:
        rules = [r for r in self._set.rules if r.on_digits and not r.cued]
        if not rules:
            return
        for run in runs:
            n = len(run.digits)
            for i in range(n):
                total = 0
                for j in range(i, n):
                    total += len(run.digits[j])
                    if total > MAX_NUMBER_DIGITS:
                        break
                    if not run.window_ok(i, j):
                        continue
                    ds = "".join(run.digits[i : j + 1])
                    start, end = run.starts[i], run.ends[j]
                    for r in rules:
                        m = r.pattern.fullmatch(ds)
                        if m is None or _excluded(r, s, start, end):
                            continue
                        if not r.attached_letters and start > 0 and is_latin(s[start - 1]):
                            continue  # "sf13812345678": a tracking number, not a phone
                        # Quote "+86 …" with its plus sign.
                        begin = start - 1 if i == 0 and start > 0 and s[start - 1] == "+" else start
                        found.append(_found(r, begin, end, r.value(m)))

    # -- text patterns --

    def _patterns(self, s: str, joined: str, omap: list[int], found: list[_Found]) -> None:
        for r in self._set.rules:
            if r.on_digits or r.cued:
                continue
            for m in r.pattern.finditer(s):
                f = self._accept_text(r, m, m.start(), s, joined, omap)
                if f is not None:
                    found.append(f)

    def _accept_text(
        self, r: Rule, m: re.Match[str], start: int, s: str, joined: str, omap: list[int]
    ) -> _Found | None:
        if m.end() == m.start():
            return None
        if r.require is not None and r.require.search(m.group()) is None:
            return None
        value = r.value(m)
        if not value or (r.exclude_value is not None and r.exclude_value.search(value)):
            return None
        if r.exclude_original is not None:
            original = joined[omap[m.start()] : omap[m.end() - 1] + 1]
            if r.exclude_original.search(original):
                return None
        if _excluded(r, s, m.start(), m.end()):
            return None
        return _found(r, start, m.end(), value)

    # -- cues --

    def _cued(self, s: str, joined: str, omap: list[int], runs: list[Run], found: list[_Found]) -> None:
        if self._set.cue_re is None:
            return
        run_at = {run.starts[0]: run for run in runs}
        for cm in self._set.cue_re.finditer(s):
            cue_start, cue_end = cm.start(1), cm.end(1)
            positions = self._gap_positions(s, cue_end)
            for ri in self._set.cue_rules[cm.group(1)]:
                r = self._set.rules[ri]
                f = (
                    self._cued_number(r, s, cue_start, positions, run_at)
                    if r.on_digits
                    else self._cued_text(r, s, cue_start, positions, joined, omap)
                )
                if f is not None:
                    found.append(f)

    def _gap_positions(self, s: str, p: int) -> list[int]:
        out = [p]
        for _ in range(self._set.gap_max):
            m = self._set.gap_step.match(s, p)
            if m is None or m.end() == p:
                break
            p = m.end()
            out.append(p)
        return out

    def _cued_number(
        self, r: Rule, s: str, cue_start: int, positions: list[int], run_at: Mapping[int, Run]
    ) -> _Found | None:
        for p in positions:
            run = run_at.get(p)
            if run is None:
                continue
            for j in range(len(run.digits) - 1, -1, -1):
                ds = "".join(run.digits[: j + 1])
                if len(ds) > MAX_NUMBER_DIGITS or not run.window_ok(0, j):
                    continue
                m = r.pattern.fullmatch(ds)
                if m is not None and not _excluded(r, s, cue_start, run.ends[j]):
                    return _found(r, cue_start, run.ends[j], r.value(m))
            return None
        return None

    def _cued_text(
        self, r: Rule, s: str, cue_start: int, positions: list[int], joined: str, omap: list[int]
    ) -> _Found | None:
        for p in positions:
            m = r.pattern.match(s, p)
            if m is not None and m.end() > p:
                return self._accept_text(r, m, cue_start, s, joined, omap)
        return None

    # -- words --

    def _words(self, s: str) -> list[_Found]:
        if not self._set.trie:
            return []
        c, where = compact(s)
        n = len(c)
        matches: list[tuple[int, int, int, bool]] = []
        for i in range(n):
            node: Mapping[str, Any] = self._set.trie
            k = i
            while k < n and (child := node.get(c[k])) is not None:
                node = child
                k += 1
                for li, allow in node.get(TRIE_END, ()):
                    matches.append((i, k, li, allow))
        allowed = [(i, k, li) for i, k, li, allow in matches if allow]
        out: list[_Found] = []
        for i, k, li, allow in matches:
            if allow or any(a <= i and k <= b and li == al for a, b, al in allowed):
                continue
            start, end = where[i], where[k - 1] + 1
            if _is_word_char(c[i]) and start > 0 and _is_word_char(s[start - 1]):
                continue  # "gun" in "begun"
            if _is_word_char(c[k - 1]) and end < len(s) and _is_word_char(s[end]):
                continue
            wl = self._set.lists[li]
            out.append(_Found(start, end, PRIORITY_PLAIN, wl.category, "word", wl.severity, c[i:k], "none"))
        return out


def _found(r: Rule, start: int, end: int, value: str) -> _Found:
    return _Found(start, end, r.priority, r.category, r.kind, r.severity, value, r.mask)


def _excluded(r: Rule, s: str, start: int, end: int) -> bool:
    if r.exclude_before is not None and r.exclude_before.search(s, max(0, start - CONTEXT_WINDOW), start):
        return True
    return r.exclude_after is not None and r.exclude_after.match(s, end, end + CONTEXT_WINDOW) is not None


def _resolve(found: list[_Found]) -> list[_Found]:
    """Drop a hit lying inside a more specific one of the same category: the domain of an e-mail, the
    phone in "微信：138…" (a wechat hit), a number inside the longer number it was read from."""

    def beaten(a: _Found, b: _Found) -> bool:
        if b is a or b.category != a.category or not (b.start <= a.start and a.end <= b.end):
            return False
        return b.priority > a.priority or (b.priority == a.priority and b.end - b.start > a.end - a.start)

    return [a for a in found if not any(beaten(a, b) for b in found)]
