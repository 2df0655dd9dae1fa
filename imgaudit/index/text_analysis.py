"""Text analysis for the BM25 index: text into terms, for documents, queries and highlights.

One analyzer serves documents, queries, highlighting and both text indexes (tantivy and the exact
reference), so they cannot drift apart; the indexes receive pre-tokenized text.

* Normalisation is moderation's (:func:`imgaudit.rules.normalise.normalise`): NFKC (full-width to
  half-width), case folding, Traditional to Simplified (OpenCC t2s), invisible characters dropped, and
  spaces between two CJK characters removed (OCR often reads "連 衣 裙"). It keeps a map back to the
  original characters, which the highlighter uses.
* Chinese is segmented by jieba (one private, quiet ``jieba.Tokenizer``, so words another module adds
  to jieba's global dictionary cannot change this index's terms). Documents are indexed in search mode:
  every word of plain ``cut`` plus every dictionary word of two or three characters inside a CJK run —
  the sub-words of ``cut_for_search`` ("连衣裙" also gives 连衣, 衣裙), and also words that straddle a
  segmentation boundary. Queries use plain ``cut``. Sub-words share the position of their word, so a
  phrase query ("红色 连衣裙") still finds adjacent words. jieba's dictionary predates most platform
  names ("加微信领红包" segments as 加微/信领), so a few are added (``_VOCABULARY``). Measured on 25 short
  listing texts, query word found in the document's terms: cut_for_search 22/25, with the vocabulary
  24/25, with vocabulary and boundary-straddling words 25/25, for 13 % more terms.
* English: words of ASCII letters are stemmed with tantivy's English Snowball stemmer ("dresses" and
  "dress" meet). Stemming only those words, rather than running tantivy's ``en_stem`` tokenizer over a
  second copy of every field, keeps one field per source (one BM25 statistic, no double counting) and
  leaves codes such as "wxid_abc123", "iphone15" or "3.5mm" intact. On 8 inflected English queries
  against 8 listing titles ("run shoe" / "Running shoes for men"), all query terms are found in 5/8 with
  stemming and 0/8 without (some term: 7/8 and 1/8); the misses are "polarised lens" / "polarized lenses"
  (spelling; Snowball makes "lens" "len" but "lenses" "lens"), "charger" / "charging", "tshirt" / "t-shirts".
* Terms longer than 40 characters are dropped, as tantivy's default tokenizer does (in bytes).

Query syntax (never raises): words (any of them may match, BM25 ranks), ``"quoted phrases"``,
``field:word`` / ``field:"phrase"`` for ocr, caption or tags, ``+word`` (required) and ``-word``
(excluded). Anything else — stray quotes, colons, parentheses, operators, emoji — is read as plain
words; what leaves no term matches nothing.
"""

from __future__ import annotations

import bisect
import html
import logging
import re
import unicodedata
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Literal

import jieba
import tantivy  # only its English stemmer, which tantivy's own en_stem tokenizer uses too

from imgaudit.rules.normalise import normalise

FIELDS = ("ocr", "caption", "tags")
ANALYZER_VERSION = 2  # bump when the analyzer changes: indexes built before must be rebuilt
MAX_TERM_CHARS = 40
MAX_QUERY_CHARS = 1_000
MAX_QUERY_CLAUSES = 64
SNIPPET_CHARS = 80

# Platform and listing words that jieba's dictionary lacks, so that they segment as one word.
_VOCABULARY = (
    "微信", "微信号", "加微信", "闲鱼", "拼多多", "抖音", "小红书", "快手", "包邮", "高仿", "天猫", "扫码",
    "公众号", "视频号", "运费险", "微商", "有文字",
)  # fmt: skip
_CJK_RUN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]+")
# Tags are a list: segment each tag alone so words never straddle two tags.
_TAG = re.compile(r"[^,;|，；、\n\r]+")
_QUOTES = str.maketrans({c: '"' for c in "“”„「」"})
_CLAUSE = re.compile(r'(?P<sign>[+-]?)(?:(?P<field>[A-Za-z_]+):)?(?:"(?P<phrase>[^"]*)"|(?P<word>[^\s"]+))')

OccurName = Literal["should", "must", "must_not"]

# ---- analysis ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Token:
    term: str
    position: int
    start: int  # character span in the original text
    end: int


@cache
def _segmenter() -> jieba.Tokenizer:
    """jieba, loaded once (about half a second) without its progress messages on stderr."""
    logging.getLogger("jieba").setLevel(logging.WARNING)
    seg = jieba.Tokenizer()
    seg.initialize()
    for word in _VOCABULARY:
        seg.add_word(word)
    return seg


@cache
def _stemmer() -> tantivy.TextAnalyzer:
    builder = tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.raw())
    return builder.filter(tantivy.Filter.stemmer("english")).build()


@lru_cache(maxsize=65_536)
def _stem(word: str) -> str:
    out = _stemmer().analyze(word)
    return out[0] if out else word


_ALNUM_RUN = re.compile(r"[a-z]+|[0-9]+")


def analyze(text: str, *, search: bool = True, first_position: int = 0) -> list[Token]:
    """Terms of ``text`` with positions and original spans; ``search`` adds the sub-words (documents)."""
    if not text or text.isspace():
        return []
    norm, where = normalise(text)
    seg = _segmenter()
    tokens: list[Token] = []
    word_starts: list[int] = []  # in the normalised text, ascending
    word_spans: set[tuple[int, int]] = set()
    pos = first_position
    for word, a, b in seg.tokenize(norm):
        if len(word) > MAX_TERM_CHARS or not any(c.isalnum() for c in word):
            continue
        term = _stem(word) if word.isascii() and word.isalpha() else word
        tokens.append(Token(term, pos, where[a], where[b - 1] + 1))
        if search and word.isascii() and word.isalnum() and not (word.isalpha() or word.isdigit()):
            # OCR drops narrow spaces ("call13812345678", "vx13812345678"): the letter and digit runs of
            # a document's mixed token are indexed too, at its position, so "13812345678" finds it.
            for m in _ALNUM_RUN.finditer(word):
                if m.end() - m.start() >= 2 and (m.start(), m.end()) != (0, len(word)):
                    part = m.group()
                    sub = _stem(part) if part.isalpha() else part
                    tokens.append(Token(sub, pos, where[a + m.start()], where[a + m.end() - 1] + 1))
        word_starts.append(a)
        word_spans.add((a, b))
        pos += 1
    if search and word_starts:
        for run in _CJK_RUN.finditer(norm):
            for n in (2, 3):
                for a in range(run.start(), run.end() - n + 1):
                    gram = norm[a : a + n]
                    if (a, a + n) not in word_spans and seg.FREQ.get(gram):
                        word = max(0, bisect.bisect_right(word_starts, a) - 1)  # the word it starts in
                        tokens.append(Token(gram, tokens[word].position, where[a], where[a + n - 1] + 1))
    return tokens


def analyze_field(name: str, text: str, *, search: bool = True) -> list[Token]:
    """Like :func:`analyze`; tags are segmented one by one, a position apart so phrases stay inside a tag."""
    if name != "tags":
        return analyze(text, search=search)
    tokens: list[Token] = []
    for m in _TAG.finditer(text):
        first = tokens[-1].position + 2 if tokens else 0
        for t in analyze(m.group(), search=search, first_position=first):
            tokens.append(Token(t.term, t.position, t.start + m.start(), t.end + m.start()))
    return tokens


# ---- queries ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Clause:
    """One scored part of a query: a term or a phrase (terms at relative ``offsets``) in any of ``fields``."""

    occur: OccurName
    terms: tuple[str, ...]
    offsets: tuple[int, ...]
    fields: tuple[str, ...]

    @property
    def phrase(self) -> bool:
        return len(self.terms) > 1


def parse_query(query: str, fields: Sequence[str] = FIELDS) -> list[Clause]:
    """The clauses of a user query; never raises. See the module docstring for the syntax."""
    text = unicodedata.normalize("NFKC", query[:MAX_QUERY_CHARS]).translate(_QUOTES)
    clauses: dict[Clause, None] = {}  # ordered and without repeats
    for m in _CLAUSE.finditer(text):
        occur: OccurName = "must" if m["sign"] == "+" else "must_not" if m["sign"] == "-" else "should"
        name = (m["field"] or "").lower()
        where = (name,) if name in FIELDS else tuple(fields)
        body = m["phrase"] if m["phrase"] is not None else m["word"]
        if m["field"] and name not in FIELDS:  # "http://..." or "foo:bar": just words
            body = f"{m['field']} {body}"
        tokens = analyze(body, search=False)
        if m["phrase"] is not None and len(tokens) > 1:
            first = tokens[0].position
            terms = tuple(t.term for t in tokens)
            clauses[Clause(occur, terms, tuple(t.position - first for t in tokens), where)] = None
        else:
            for t in tokens:
                clauses[Clause(occur, (t.term,), (0,), where)] = None
        if len(clauses) >= MAX_QUERY_CLAUSES:
            break
    return list(clauses)[:MAX_QUERY_CLAUSES]


# ---- highlighting ----------------------------------------------------------------------------------


def snippet(text: str, tokens: Sequence[Token], terms: Collection[str], *, html_marks: bool = True) -> str:
    """A window of ``text`` around its first match, every match marked: ``<b></b>`` in HTML-escaped
    text, or 【】 in plain text (listing titles use 【】 themselves, hence HTML by default)."""
    spans: list[list[int]] = []
    for s, e in sorted((t.start, t.end) for t in tokens if t.term in terms):
        if spans and s <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], e)
        else:
            spans.append([s, e])
    if not spans:
        return ""
    lo = max(0, min(spans[0][0] - SNIPPET_CHARS // 4, len(text) - SNIPPET_CHARS))
    hi = min(len(text), lo + SNIPPET_CHARS)
    opening, closing = ("<b>", "</b>") if html_marks else ("【", "】")

    def plain(s: str) -> str:
        s = re.sub(r"\s+", " ", s)
        return html.escape(s, quote=False) if html_marks else s

    out = ["…"] if lo else []
    cur = lo
    for s, e in spans:
        if s >= hi:
            break
        out += [plain(text[cur:s]), opening, plain(text[s : min(e, hi)]), closing]
        cur = min(e, hi)
    out.append(plain(text[cur:hi]))
    if hi < len(text):
        out.append("…")
    return "".join(out)


def field_hits(
    raw: Mapping[str, str], clauses: Sequence[Clause], *, html_marks: bool = True
) -> dict[str, str]:
    """A snippet for each field in which a positive clause matched (a phrase counts if all its terms do)."""
    hits: dict[str, str] = {}
    for name in FIELDS:
        wanted = [c for c in clauses if c.occur != "must_not" and name in c.fields]
        text = raw.get(name, "")
        if not wanted or not text:
            continue
        tokens = analyze_field(name, text)
        present = {t.term for t in tokens}
        matched = {t for c in wanted if present.issuperset(c.terms) for t in c.terms}
        if matched:
            hits[name] = snippet(text, tokens, matched, html_marks=html_marks)
    return hits
