"""Text-risk rules for OCR'd text: contact details that pull buyers off-platform, and prohibited words.

Sellers evade plain regexes ("138 1234 5678", "１３８…", "幺三八…", "薇信：abc123", "abc艾特qq点com"), and
each team needs its own cues and word lists. So the engine here holds only the generic mechanics —
normalisation with a map back to the original characters, reading number runs through separators,
numerals and homoglyphs, cue windows, negative contexts, overlap resolution — and TOML rule files hold
the data. The built-in ``rules/contact.toml`` is always loaded first and documents the format at its
top; files given to :meth:`TextRules.load` apply on top of it, in order. In short::

    [sets]
    line = ["line id", "加line"]           # named word lists, used as "@line"

    [[pattern]]                            # a regex over the normalised text
    name = "line"                          # unique; a later file with the same name updates that rule
    kind = "line"
    cues = ["@line"]                       # must start right after a cue (gap: spaces, ：, 号 …)
    pattern = '[a-z][a-z0-9._-]{3,19}'
    severity = "review"

    [[number]]                             # a rule over number runs (evasions already undone)
    name = "qq"
    severity = "review"                    # only change the built-in QQ rule's severity

    [[words]]
    category = "drugs"
    words = ["冰毒", "k粉"]
    file = "drugs.txt"                     # relative to the rule file; one per line, '#' comments

Word files given to ``load`` are lists whose category is the file stem, severity "violate". A mistake in
a rule file raises :class:`~imgaudit.errors.ConfigError` naming the file and the rule.
"""

from __future__ import annotations

import bisect
import re
import tomllib
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

import opencc

from imgaudit.errors import ConfigError

CONTACT_INFO = "contact_info"
SEVERITIES = ("violate", "review")
MASKS = ("number", "email", "id", "none")
BUILTIN_NAME = "contact.toml (built-in)"
# Longest digit string tried against number patterns: E.164 allows 15 digits, plus a "00" prefix.
MAX_NUMBER_DIGITS = 17
# How far back / ahead of a match an exclusion word (plus its gap) may stand, in characters.
CONTEXT_WINDOW = 24
# Default rule priorities: a cue makes a hit more specific than the bare number it contains.
PRIORITY_PLAIN = 0
PRIORITY_CUED = 10

# Clause punctuation (as it is after NFKC) still separates words: "水枪，支付宝" must not read "枪支".
_CLAUSE = frozenset(",;:!?。、")
# Zero-width and formatting characters: invisible in the image text, used to break up matches.
_INVISIBLE = frozenset("\u200b\u200c\u200d\u200e\u200f\u2060\u2061\u2062\u2063\ufeff\u00ad\u180e") | {
    chr(c) for c in range(0xFE00, 0xFE10)
}
# One gap step in regex form: any character but letters, digits, CJK and "@" (see _is_sep).
_SEP_RE = r"[^\w@]|_"
_TRIE_END = "\0"
_SECTIONS = {"number", "pattern", "words"}
_TOP_KEYS = {"version", "defaults", "gap", "digits", "sets", *_SECTIONS}
_COMMON_RULE_KEYS = {
    "name", "kind", "category", "severity", "pattern", "cues", "exclude_before", "exclude_after",
    "priority", "mask", "enabled",
}  # fmt: skip
_RULE_KEYS = {
    "number": _COMMON_RULE_KEYS | {"attached_letters"},
    "pattern": _COMMON_RULE_KEYS | {"require", "exclude_value", "exclude_original", "canon"},
    "words": {"name", "category", "severity", "words", "file", "allow", "enabled"},
}
_DIGIT_MAPS = ("numerals", "homoglyphs", "inner_homoglyphs", "edge_homoglyphs")
_DIGIT_CHARS = frozenset("0123456789")


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


# ---- normalisation ---------------------------------------------------------------------------------


def _is_sep(c: str) -> bool:
    """A character that can stand between the pieces of one evasive value: anything but letters, digits,
    CJK and "@" (spaces, punctuation, symbols, emoji, marks such as a keycap's). Same as _SEP_RE."""
    return c == "_" or not (c.isalnum() or c == "@")


_CJK = "\u3007\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff"
_CLAUSE_CLASS = re.escape("".join(sorted(_CLAUSE)))
# Separators that may be dropped: _SEP_RE minus clause punctuation.
_SOFT_RUN = re.compile(f"(?<=[{_CJK}])(?:[^\\w@{_CLAUSE_CLASS}]|_)+(?=[{_CJK}])")
_NOT_SOFT = re.compile(f"(?:[^\\W_]|[@{_CLAUSE_CLASS}])+")


def _is_word_char(c: str) -> bool:
    return c.isascii() and c.isalnum()


def _is_latin(c: str) -> bool:
    return c.isascii() and c.isalpha()


_ZERO_LIKE = frozenset("○◯⭕")


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


def _compact(s: str) -> tuple[str, list[int]]:
    """``s`` without soft separators, for word lists ("减 肥-药", "v.i.a.g.r.a"), and where each char was."""
    parts: list[str] = []
    where: list[int] = []
    for m in _NOT_SOFT.finditer(s):
        parts.append(m.group())
        where += range(m.start(), m.end())
    return "".join(parts), where


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


# ---- compiled rules --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Rule:
    name: str
    on_digits: bool  # a [[number]] rule: matched against digit strings, not text
    kind: str
    category: str
    severity: str
    pattern: re.Pattern[str]
    cued: bool
    priority: int
    mask: str
    exclude_before: re.Pattern[str] | None
    exclude_after: re.Pattern[str] | None
    attached_letters: bool
    require: re.Pattern[str] | None
    exclude_value: re.Pattern[str] | None
    exclude_original: re.Pattern[str] | None
    canon: tuple[tuple[re.Pattern[str], str], ...]

    def value(self, m: re.Match[str]) -> str:
        if "value" in self.pattern.groupindex:
            v = m.group("value")
        elif self.on_digits and self.pattern.groups:
            v = m.group(1)
        else:
            v = m.group(0)
        for rx, repl in self.canon:
            v = rx.sub(repl, v)
        return v


@dataclass(frozen=True, slots=True)
class _WordList:
    category: str
    severity: str


@dataclass(frozen=True, slots=True)
class _Digits:
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
class _Run:
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

    _rules: tuple[_Rule, ...]
    _cue_re: re.Pattern[str] | None
    _cue_rules: Mapping[str, tuple[int, ...]]
    _gap_step: re.Pattern[str]
    _gap_max: int
    _digits: _Digits
    _lists: tuple[_WordList, ...]
    _trie: Mapping[str, Any]

    @classmethod
    def load(cls, rule_files: Sequence[Path] = (), word_files: Sequence[Path] = ()) -> TextRules:
        """The built-in rules, then each rule file on top, then each word file as a list of its own."""
        builder = _Builder()
        builtin = resources.files("imgaudit.signals").joinpath("rules")
        builder.add_toml(
            builtin.joinpath("contact.toml").read_text(encoding="utf-8"),
            BUILTIN_NAME,
            lambda rel: builtin.joinpath(rel).read_text(encoding="utf-8"),
        )
        for path in map(Path, rule_files):
            base = path.parent
            builder.add_toml(
                _read(path, "rule file"), str(path), lambda rel, base=base: _read(base / rel, "word file")
            )
        for path in map(Path, word_files):
            builder.add_words(
                {"category": path.stem, "words": _word_lines(_read(path, "word file"))}, str(path)
            )
        return builder.build()

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
        runs = self._runs(s)
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
            line = bisect.bisect_right(line_starts, o0) - 1
            hits.append(
                TextHit(f.category, f.kind, f.severity, f.value, _mask(f.mask, f.value), line, joined[o0:o1])
            )
        return hits

    # -- number runs --

    def _runs(self, s: str) -> list[_Run]:
        positions: list[int] = []
        digits: list[str] = []
        for m in self._digits.token.finditer(s):
            tok, base = m.group(), m.start()
            if tok.isascii() and tok.isdigit():
                positions.extend(range(base, base + len(tok)))
                digits.extend(tok)
                continue
            if self._digits.digit.search(tok) is None:
                continue
            for k, d in enumerate(self._read_token(tok)):
                if d is not None:
                    positions.append(base + k)
                    digits.append(d)
        runs: list[_Run] = []
        starts: list[int] = []
        ends: list[int] = []
        groups: list[list[str]] = []
        gaps: list[str] = []
        prev = -2
        for p, d in zip(positions, digits, strict=True):
            if p == prev + 1:
                groups[-1].append(d)
                ends[-1] = p + 1
            else:
                if groups and not self._crossable(s, prev + 1, p):
                    runs.append(_Run(tuple(starts), tuple(ends), tuple(map("".join, groups)), tuple(gaps)))
                    starts, ends, groups, gaps = [], [], [], []
                if groups:
                    gaps.append(s[prev + 1 : p])
                starts.append(p)
                ends.append(p + 1)
                groups.append([d])
            prev = p
        if groups:
            runs.append(_Run(tuple(starts), tuple(ends), tuple(map("".join, groups)), tuple(gaps)))
        return runs

    def _read_token(self, tok: str) -> list[str | None]:
        """The digit each character of a token stands for, or None. Homoglyphs count only in a token
        that already holds a digit and no other latin letter ("l38oo" yes, "iphone" no)."""
        d = self._digits

        def real(c: str) -> bool:
            return "0" <= c <= "9" or c in d.numerals

        has_digit = any(real(c) for c in tok)
        foreign = any(
            _is_latin(c) and c not in d.anywhere and c not in d.inner and c not in d.edge for c in tok
        )
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

    def _crossable(self, s: str, a: int, b: int) -> bool:
        if b - a > self._digits.max_gap:
            return False
        return all(_is_sep(c) and c not in self._digits.breakers for c in s[a:b])

    def _numbers(self, s: str, runs: list[_Run], found: list[_Found]) -> None:
        rules = [r for r in self._rules if r.on_digits and not r.cued]
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
                        if not r.attached_letters and start > 0 and _is_latin(s[start - 1]):
                            continue  # "sf13812345678": a tracking number, not a phone
                        # Quote "+86 …" with its plus sign.
                        begin = start - 1 if i == 0 and start > 0 and s[start - 1] == "+" else start
                        found.append(_found(r, begin, end, r.value(m)))

    # -- text patterns --

    def _patterns(self, s: str, joined: str, omap: list[int], found: list[_Found]) -> None:
        for r in self._rules:
            if r.on_digits or r.cued:
                continue
            for m in r.pattern.finditer(s):
                f = self._accept_text(r, m, m.start(), s, joined, omap)
                if f is not None:
                    found.append(f)

    def _accept_text(
        self, r: _Rule, m: re.Match[str], start: int, s: str, joined: str, omap: list[int]
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

    def _cued(self, s: str, joined: str, omap: list[int], runs: list[_Run], found: list[_Found]) -> None:
        if self._cue_re is None:
            return
        run_at = {run.starts[0]: run for run in runs}
        for cm in self._cue_re.finditer(s):
            cue_start, cue_end = cm.start(1), cm.end(1)
            positions = self._gap_positions(s, cue_end)
            for ri in self._cue_rules[cm.group(1)]:
                r = self._rules[ri]
                f = (
                    self._cued_number(r, s, cue_start, positions, run_at)
                    if r.on_digits
                    else self._cued_text(r, s, cue_start, positions, joined, omap)
                )
                if f is not None:
                    found.append(f)

    def _gap_positions(self, s: str, p: int) -> list[int]:
        out = [p]
        for _ in range(self._gap_max):
            m = self._gap_step.match(s, p)
            if m is None or m.end() == p:
                break
            p = m.end()
            out.append(p)
        return out

    def _cued_number(
        self, r: _Rule, s: str, cue_start: int, positions: list[int], run_at: Mapping[int, _Run]
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
        self, r: _Rule, s: str, cue_start: int, positions: list[int], joined: str, omap: list[int]
    ) -> _Found | None:
        for p in positions:
            m = r.pattern.match(s, p)
            if m is not None and m.end() > p:
                return self._accept_text(r, m, cue_start, s, joined, omap)
        return None

    # -- words --

    def _words(self, s: str) -> list[_Found]:
        if not self._trie:
            return []
        c, where = _compact(s)
        n = len(c)
        matches: list[tuple[int, int, int, bool]] = []
        for i in range(n):
            node = self._trie
            k = i
            while k < n:
                node = node.get(c[k])
                if node is None:
                    break
                k += 1
                for li, allow in node.get(_TRIE_END, ()):
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
            wl = self._lists[li]
            out.append(_Found(start, end, PRIORITY_PLAIN, wl.category, "word", wl.severity, c[i:k], "none"))
        return out


def _found(r: _Rule, start: int, end: int, value: str) -> _Found:
    return _Found(start, end, r.priority, r.category, r.kind, r.severity, value, r.mask)


def _excluded(r: _Rule, s: str, start: int, end: int) -> bool:
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


# ---- loading ---------------------------------------------------------------------------------------


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read {what}: {_one_line(e)}") from e


def _one_of(options: Sequence[str]) -> str:
    return ", ".join(options)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def _word_lines(text: str) -> list[str]:
    out = []
    for line in text.splitlines():
        word = line.split(" #", 1)[0].strip()
        if word and not word.startswith("#"):
            out.append(word)
    return out


def _literal(text: str) -> str:
    """A regex for a literal cue or exclusion word; latin edges must not sit inside a latin word."""
    alt = re.escape(text)
    if text[0].isascii() and text[0].isalpha():
        alt = r"(?<![a-z])" + alt
    if text[-1].isascii() and text[-1].isalpha():
        alt += r"(?![a-z])"
    return alt


def _alternation(words: Iterable[str]) -> str:
    return "|".join(_literal(w) for w in sorted(set(words), key=lambda w: (-len(w), w)))


class _Builder:
    """Merges rule files in order, then validates and compiles them into a TextRules."""

    def __init__(self) -> None:
        self.gap: dict[str, Any] = {"max": 8, "words": []}
        self.digits: dict[str, Any] = {"max_gap": 4, "breakers": "", **{k: {} for k in _DIGIT_MAPS}}
        self.sets: dict[str, tuple[str, list[str]]] = {}  # name -> (source, words); a later file replaces
        self.rules: dict[str, dict[str, Any]] = {}  # name -> raw keys, plus _section and _source
        self.words: list[dict[str, Any]] = []
        self.named_words: dict[str, dict[str, Any]] = {}
        self.context_gap = ""
        self.gap_source = BUILTIN_NAME

    def add_toml(self, text: str, source: str, open_rel: Callable[[str], str]) -> None:
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{source}: invalid TOML: {_one_line(e)}") from e
        unknown = set(doc) - _TOP_KEYS
        if unknown:
            raise ConfigError(f"{source}: unknown section(s) {', '.join(sorted(unknown))}")
        if doc.get("version", 1) != 1:
            raise ConfigError(f"{source}: unsupported rule file version {doc['version']!r} (this reads 1)")
        defaults = _table(doc, "defaults", source)
        if set(defaults) - {"category", "severity"}:
            raise ConfigError(f"{source}: [defaults] takes only category and severity")
        gap = _table(doc, "gap", source)
        if set(gap) - {"max", "words"}:
            raise ConfigError(f"{source}: [gap] takes only max and words")
        self.gap.update(gap)
        if gap:
            self.gap_source = source
        digits = _table(doc, "digits", source)
        if set(digits) - {"max_gap", "breakers", *_DIGIT_MAPS}:
            raise ConfigError(f"{source}: [digits] has unknown keys")
        for key, value in digits.items():
            if key in _DIGIT_MAPS and isinstance(value, dict):
                self.digits[key] = {**self.digits[key], **value}
            else:
                self.digits[key] = value
        if digits:
            self.digits["_source"] = source
        for name, words in _table(doc, "sets", source).items():
            self.sets[name] = (source, self._str_list(words, f"set {name!r}", source))
        for section in ("number", "pattern"):
            for raw in _array(doc, section, source):
                self._add_rule(section, raw, source, defaults)
        for raw in _array(doc, "words", source):
            raw = dict(raw)
            if "file" in raw:
                if not isinstance(raw["file"], str):
                    raise ConfigError(f"{source}: words {raw.get('name', raw.get('category'))!r}: bad file")
                raw["_file_words"] = _word_lines(open_rel(raw["file"]))
                raw.setdefault("category", Path(raw["file"]).stem)
            self.add_words(raw, source)

    def _add_rule(self, section: str, raw: dict[str, Any], source: str, defaults: dict[str, Any]) -> None:
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{source}: a [[{section}]] rule has no name")
        unknown = set(raw) - _RULE_KEYS[section]
        if unknown:
            raise ConfigError(f"{source}: rule {name!r}: unknown key(s) {', '.join(sorted(unknown))}")
        old = self.rules.get(name)
        if old is not None:
            if old["_section"] != section:
                raise ConfigError(f"{source}: rule {name!r}: already defined as a [[{old['_section']}]] rule")
            old.update(raw)
            old["_source"] = source
            return
        self.rules[name] = {**defaults, **raw, "_section": section, "_source": source}

    def add_words(self, raw: dict[str, Any], source: str) -> None:
        label = raw.get("name") or raw.get("category")
        unknown = set(raw) - _RULE_KEYS["words"] - {"_file_words"}
        if unknown:
            raise ConfigError(f"{source}: words {label!r}: unknown key(s) {', '.join(sorted(unknown))}")
        name = raw.get("name")
        if name is not None and name in self.named_words:
            self.named_words[name].update(raw)
            self.named_words[name]["_source"] = source
            return
        entry = {**raw, "_source": source}
        self.words.append(entry)
        if name is not None:
            self.named_words[name] = entry

    # -- compile --

    def build(self) -> TextRules:
        gap_words = self._str_list(self.gap.get("words"), "[gap] words", self.gap_source)
        gap_max = self.gap.get("max")
        if not isinstance(gap_max, int) or isinstance(gap_max, bool) or gap_max < 0:
            raise ConfigError(f"{self.gap_source}: [gap] max must be a whole number >= 0")
        gap_alt = _alternation(w for w in map(_norm, gap_words) if w)
        # Between an exclusion word and the match: separators and gap words, not other cues.
        self.context_gap = (
            f"(?:{_SEP_RE}|{gap_alt}){{0,{gap_max}}}" if gap_alt else f"(?:{_SEP_RE}){{0,{gap_max}}}"
        )
        rules: list[_Rule] = []
        cue_rules: dict[str, list[int]] = {}
        for raw in self.rules.values():
            if raw.get("enabled", True) is False:
                continue
            rule, cues = self._rule(raw)
            for cue in cues:
                cue_rules.setdefault(cue, []).append(len(rules))
            rules.append(rule)
        cue_re = None
        if cue_rules:
            cue_re = re.compile(f"(?=({_alternation(cue_rules)}))")
        step_alt = _alternation([w for w in map(_norm, gap_words) if w] + list(cue_rules))
        gap_step = re.compile(f"(?:{_SEP_RE}|{step_alt})" if step_alt else f"(?:{_SEP_RE})")
        lists, trie = self._word_lists()
        return TextRules(
            tuple(rules),
            cue_re,
            MappingProxyType({k: tuple(v) for k, v in cue_rules.items()}),
            gap_step,
            gap_max,
            self._digit_settings(),
            lists,
            MappingProxyType(trie),
        )

    def _rule(self, raw: dict[str, Any]) -> tuple[_Rule, list[str]]:
        source, name, section = raw["_source"], raw["name"], raw["_section"]

        def fail(problem: str) -> ConfigError:
            return ConfigError(f"{source}: rule {name!r}: {problem}")

        def text(key: str, default: str | None = None) -> str:
            value = raw.get(key, default)
            if not isinstance(value, str) or not value:
                raise fail(f"{key} must be a non-empty string")
            return value

        def regex(key: str, required: bool = False) -> re.Pattern[str] | None:
            if key not in raw and not required:
                return None
            try:
                return re.compile(text(key))
            except re.error as e:
                raise fail(f"{key} is not a valid regular expression: {_one_line(e)}") from e

        kind, category, severity = text("kind"), text("category", CONTACT_INFO), text("severity", "violate")
        if severity not in SEVERITIES:
            raise fail(f"severity must be one of {_one_of(SEVERITIES)}, not {severity!r}")
        pattern = regex("pattern", required=True)
        assert pattern is not None
        cues = self._expand(raw.get("cues", []), "cues", fail)
        before = self._expand(raw.get("exclude_before", []), "exclude_before", fail)
        after = self._expand(raw.get("exclude_after", []), "exclude_after", fail)
        priority = raw.get("priority", PRIORITY_CUED if cues else PRIORITY_PLAIN)
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise fail("priority must be a whole number")
        mask = text("mask", "number" if section == "number" else "id")
        if mask not in MASKS:
            raise fail(f"mask must be one of {_one_of(MASKS)}, not {mask!r}")
        attached = raw.get("attached_letters", True)
        if not isinstance(attached, bool) or not isinstance(raw.get("enabled", True), bool):
            raise fail("attached_letters and enabled must be true or false")
        canon = raw.get("canon", [])
        if not isinstance(canon, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in canon
        ):
            raise fail("canon must be a list of [regex, replacement] pairs")
        try:
            canon_c = tuple((re.compile(a), b) for a, b in canon)
        except re.error as e:
            raise fail(f"canon holds an invalid regular expression: {_one_line(e)}") from e
        rule = _Rule(
            name=name,
            on_digits=section == "number",
            kind=kind,
            category=category,
            severity=severity,
            pattern=pattern,
            cued=bool(cues),
            priority=priority,
            mask=mask,
            exclude_before=re.compile(f"(?:{_alternation(before)}){self.context_gap}\\Z") if before else None,
            exclude_after=re.compile(f"{self.context_gap}(?:{_alternation(after)})") if after else None,
            attached_letters=attached,
            require=regex("require"),
            exclude_value=regex("exclude_value"),
            exclude_original=regex("exclude_original"),
            canon=canon_c,
        )
        return rule, cues

    def _expand(self, items: Any, key: str, fail: Callable[[str], ConfigError]) -> list[str]:
        """Literal words normalised like the text, "@set" replaced by the named set's words."""
        if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
            raise fail(f"{key} must be a list of strings")
        out: list[str] = []
        for item in items:
            if item.startswith("@") and len(item) > 1:
                if item[1:] not in self.sets:
                    raise fail(f"{key} names an unknown set {item!r}")
                out += self.sets[item[1:]][1]
            else:
                out.append(item)
        return [w for w in (_norm(x) for x in out) if w]

    @staticmethod
    def _str_list(value: Any, what: str, source: str) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            raise ConfigError(f"{source}: {what} must be a list of strings")
        return value

    def _digit_settings(self) -> _Digits:
        d, source = self.digits, self.digits.get("_source", BUILTIN_NAME)
        maps: dict[str, dict[str, str]] = {}
        for key in _DIGIT_MAPS:
            table = d[key]
            if not isinstance(table, dict) or not all(
                isinstance(k, str) and len(_norm(k)) == 1 and v in _DIGIT_CHARS for k, v in table.items()
            ):
                raise ConfigError(f"{source}: [digits] {key} must map single characters to single digits")
            maps[key] = {_norm(k): v for k, v in table.items()}
        max_gap, breakers = d["max_gap"], d["breakers"]
        if not isinstance(max_gap, int) or isinstance(max_gap, bool) or max_gap < 0:
            raise ConfigError(f"{source}: [digits] max_gap must be a whole number >= 0")
        if not isinstance(breakers, str):
            raise ConfigError(f"{source}: [digits] breakers must be a string")
        extra = "".join(sorted({c for m in maps.values() for c in m}))
        token = re.compile(f"[a-z0-9{re.escape(extra)}]+")
        digit = re.compile(f"[0-9{re.escape(''.join(maps['numerals']))}]")
        return _Digits(
            token,
            digit,
            MappingProxyType(maps["numerals"]),
            MappingProxyType(maps["homoglyphs"]),
            MappingProxyType(maps["inner_homoglyphs"]),
            MappingProxyType(maps["edge_homoglyphs"]),
            max_gap,
            frozenset(_norm(breakers)),
        )

    def _word_lists(self) -> tuple[tuple[_WordList, ...], dict[str, Any]]:
        lists: list[_WordList] = []
        trie: dict[str, Any] = {}
        for raw in self.words:
            if raw.get("enabled", True) is False:
                continue
            source, label = raw["_source"], raw.get("name") or raw.get("category")
            category, severity = raw.get("category"), raw.get("severity", "violate")
            if not isinstance(category, str) or not category:
                raise ConfigError(f"{source}: words {label!r}: category must be a non-empty string")
            if severity not in SEVERITIES:
                raise ConfigError(f"{source}: words {label!r}: severity must be one of {_one_of(SEVERITIES)}")
            words = self._str_list(raw.get("words", []), f"words {label!r}: words", source)
            allow = self._str_list(raw.get("allow", []), f"words {label!r}: allow", source)
            li = len(lists)
            lists.append(_WordList(category, severity))
            for phrase, is_allow in [(w, False) for w in words + raw.get("_file_words", [])] + [
                (a, True) for a in allow
            ]:
                key = _compact(_norm(phrase))[0]
                if not key:
                    continue
                node = trie
                for ch in key:
                    node = node.setdefault(ch, {})
                node.setdefault(_TRIE_END, []).append((li, is_allow))
        return tuple(lists), trie


def _norm(text: str) -> str:
    return normalise(text.strip())[0]


def _table(doc: dict[str, Any], key: str, source: str) -> dict[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: {key} must be a table ([{key}])")
    return value


def _array(doc: dict[str, Any], key: str, source: str) -> list[dict[str, Any]]:
    value = doc.get(key, [])
    if not isinstance(value, list) or not all(isinstance(x, dict) for x in value):
        raise ConfigError(f"{source}: {key} must be an array of tables ([[{key}]])")
    return value
