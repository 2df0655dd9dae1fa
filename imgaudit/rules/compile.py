"""Rule files merged in order, validated and compiled into a :class:`RuleSet` for the matcher.

The built-in ``data/contact.toml`` is always read first (it documents the format at its top); each rule
file given to :func:`compile_rules` applies on top of it, then each word file as a list of its own. A
mistake raises :class:`~imgaudit.errors.ConfigError` naming the file and the rule.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

from imgaudit.errors import ConfigError
from imgaudit.rules.normalise import SEP_RE, compact, normalise_word
from imgaudit.rules.numbers import DigitReading

CONTACT_INFO = "contact_info"  # the category of rules that set none
SEVERITIES = ("violate", "review")
MASKS = ("number", "email", "id", "none")
BUILTIN_NAME = "contact.toml (built-in)"
# Default rule priorities: a cue makes a hit more specific than the bare number it contains.
PRIORITY_PLAIN = 0
PRIORITY_CUED = 10
# Marks the end of a phrase in the word-list trie (never a character of normalised text).
TRIE_END = "\0"
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
class Rule:
    """One [[number]] or [[pattern]] rule, compiled."""

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
class WordList:
    """What a hit from one [[words]] list (or word file) reports; its phrases live in the trie."""

    category: str
    severity: str


@dataclass(frozen=True, slots=True)
class RuleSet:
    """Every rule compiled: what :class:`~imgaudit.rules.matcher.TextRules` scans text with."""

    rules: tuple[Rule, ...]
    cue_re: re.Pattern[str] | None  # finds any rule's cue (lookahead, so overlapping cues all show)
    cue_rules: Mapping[str, tuple[int, ...]]  # cue -> indexes into rules
    gap_step: re.Pattern[str]  # one step of the gap between a cue and its value
    gap_max: int
    digits: DigitReading
    lists: tuple[WordList, ...]
    trie: Mapping[str, Any]  # word-list phrases, char by char; TRIE_END -> [(list index, is_allow)]


def compile_rules(rule_files: Sequence[Path] = (), word_files: Sequence[Path] = ()) -> RuleSet:
    """The built-in rules, then each rule file on top, then each word file as a list of its own."""
    builder = _Builder()
    builtin = resources.files("imgaudit.rules").joinpath("data")

    def read_builtin(rel: str) -> str:
        return builtin.joinpath(rel).read_text(encoding="utf-8")

    builder.add_toml(read_builtin("contact.toml"), BUILTIN_NAME, read_builtin)
    for path in map(Path, rule_files):
        builder.add_toml(_read(path, "rule file"), str(path), _word_file_reader(path.parent))
    for path in map(Path, word_files):
        builder.add_words({"category": path.stem, "words": _word_lines(_read(path, "word file"))}, str(path))
    return builder.build()


def _word_file_reader(base: Path) -> Callable[[str], str]:
    """Reads the word files a rule file names, relative to that rule file."""
    return lambda rel: _read(base / rel, "word file")


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
    """Merges rule files in order, then validates and compiles them into a RuleSet."""

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

    def build(self) -> RuleSet:
        gap_words = self._str_list(self.gap.get("words"), "[gap] words", self.gap_source)
        gap_max = self.gap.get("max")
        if not isinstance(gap_max, int) or isinstance(gap_max, bool) or gap_max < 0:
            raise ConfigError(f"{self.gap_source}: [gap] max must be a whole number >= 0")
        gap_alt = _alternation(w for w in map(normalise_word, gap_words) if w)
        # Between an exclusion word and the match: separators and gap words, not other cues.
        self.context_gap = (
            f"(?:{SEP_RE}|{gap_alt}){{0,{gap_max}}}" if gap_alt else f"(?:{SEP_RE}){{0,{gap_max}}}"
        )
        rules: list[Rule] = []
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
        step_alt = _alternation([w for w in map(normalise_word, gap_words) if w] + list(cue_rules))
        gap_step = re.compile(f"(?:{SEP_RE}|{step_alt})" if step_alt else f"(?:{SEP_RE})")
        lists, trie = self._word_lists()
        return RuleSet(
            rules=tuple(rules),
            cue_re=cue_re,
            cue_rules=MappingProxyType({k: tuple(v) for k, v in cue_rules.items()}),
            gap_step=gap_step,
            gap_max=gap_max,
            digits=self._digit_settings(),
            lists=lists,
            trie=MappingProxyType(trie),
        )

    def _rule(self, raw: dict[str, Any]) -> tuple[Rule, list[str]]:
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
        rule = Rule(
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
        return [w for w in (normalise_word(x) for x in out) if w]

    @staticmethod
    def _str_list(value: Any, what: str, source: str) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            raise ConfigError(f"{source}: {what} must be a list of strings")
        return value

    def _digit_settings(self) -> DigitReading:
        d, source = self.digits, self.digits.get("_source", BUILTIN_NAME)
        maps: dict[str, dict[str, str]] = {}
        for key in _DIGIT_MAPS:
            table = d[key]
            if not isinstance(table, dict) or not all(
                isinstance(k, str) and len(normalise_word(k)) == 1 and v in _DIGIT_CHARS
                for k, v in table.items()
            ):
                raise ConfigError(f"{source}: [digits] {key} must map single characters to single digits")
            maps[key] = {normalise_word(k): v for k, v in table.items()}
        max_gap, breakers = d["max_gap"], d["breakers"]
        if not isinstance(max_gap, int) or isinstance(max_gap, bool) or max_gap < 0:
            raise ConfigError(f"{source}: [digits] max_gap must be a whole number >= 0")
        if not isinstance(breakers, str):
            raise ConfigError(f"{source}: [digits] breakers must be a string")
        extra = "".join(sorted({c for m in maps.values() for c in m}))
        token = re.compile(f"[a-z0-9{re.escape(extra)}]+")
        digit = re.compile(f"[0-9{re.escape(''.join(maps['numerals']))}]")
        return DigitReading(
            token,
            digit,
            MappingProxyType(maps["numerals"]),
            MappingProxyType(maps["homoglyphs"]),
            MappingProxyType(maps["inner_homoglyphs"]),
            MappingProxyType(maps["edge_homoglyphs"]),
            max_gap,
            frozenset(normalise_word(breakers)),
        )

    def _word_lists(self) -> tuple[tuple[WordList, ...], dict[str, Any]]:
        lists: list[WordList] = []
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
            lists.append(WordList(category, severity))
            for phrase, is_allow in [(w, False) for w in words + raw.get("_file_words", [])] + [
                (a, True) for a in allow
            ]:
                key = compact(normalise_word(phrase))[0]
                if not key:
                    continue
                node = trie
                for ch in key:
                    node = node.setdefault(ch, {})
                node.setdefault(TRIE_END, []).append((li, is_allow))
        return tuple(lists), trie


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
