"""Full-text (BM25) search over what an image says and what is said about it, on tantivy.

Each image is one document with three searchable fields — ``ocr`` (text read from the pixels),
``caption`` (title, caption and metadata from the source) and ``tags`` (label names in English and
Chinese, colours, attributes such as 有文字 / has text, 二维码 / qr) — plus filter fields (source,
decision, moderation, has_text, created) that are indexed, so filters run inside tantivy.

Analysis happens here, in Python, and tantivy receives pre-tokenized text. One analyzer serves
documents, queries, highlighting and the exact reference index, so they cannot drift apart:

* Normalisation is moderation's (:func:`imgaudit.signals.text_risk.normalise`): NFKC (full-width to
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

Changes become visible on :meth:`commit`, as in tantivy. Scores are tantivy's BM25 (k1 1.2, b 0.75),
summed over the fields and clauses that match.
"""

from __future__ import annotations

import bisect
import html
import json
import logging
import math
import re
import threading
import unicodedata
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path
from typing import Literal, Protocol

import jieba
import tantivy
from tantivy import Occur, Query

from imgaudit.errors import StoreError
from imgaudit.signals.text_risk import normalise

log = logging.getLogger(__name__)

FIELDS = ("ocr", "caption", "tags")
ANALYZER_VERSION = 2  # bump when the analyzer changes: indexes built before must be rebuilt
META_FILE = "imgaudit-text.json"
MAX_TERM_CHARS = 40
MAX_QUERY_CHARS = 1_000
MAX_QUERY_CLAUSES = 64
SNIPPET_CHARS = 80
K1, B = 1.2, 0.75

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
_OCCUR = {"should": Occur.Should, "must": Occur.Must, "must_not": Occur.MustNot}


# ---- documents and results -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TextDoc:
    image_id: int
    ocr: str
    caption: str
    tags: str  # comma-, semicolon- or newline-separated
    source: str
    decision: str | None
    moderation: str | None
    has_text: bool
    created: int  # unix seconds


@dataclass(frozen=True, slots=True)
class TextFilters:
    """Restrictions that do not score. ``None`` means no restriction; a sequence means any of its values
    (an empty one matches nothing). ``created`` is the half-open range [created_from, created_to)."""

    source: str | Sequence[str] | None = None
    decision: str | Sequence[str] | None = None
    moderation: str | Sequence[str] | None = None
    has_text: bool | None = None
    created_from: int | None = None
    created_to: int | None = None

    def values(self, name: str) -> list[str] | None:
        """The allowed values of the ``source``, ``decision`` or ``moderation`` filter."""
        v = getattr(self, name)
        return None if v is None else [v] if isinstance(v, str) else list(v)

    def matches(self, doc: TextDoc) -> bool:
        for name in ("source", "decision", "moderation"):
            allowed = self.values(name)
            if allowed is not None and getattr(doc, name) not in allowed:
                return False
        return (
            (self.has_text is None or doc.has_text == self.has_text)
            and (self.created_from is None or doc.created >= self.created_from)
            and (self.created_to is None or doc.created < self.created_to)
        )


@dataclass(frozen=True, slots=True)
class TextHit:
    image_id: int
    score: float
    field_hits: dict[str, str] = field(default_factory=dict)  # field -> snippet with the matches marked


# ---- analysis --------------------------------------------------------------------------------------


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


def _check_fields(fields: Sequence[str] | None) -> Sequence[str]:
    if fields is None:
        return FIELDS
    unknown = set(fields) - set(FIELDS)
    if unknown or not fields:
        raise ValueError(f"unknown text fields {sorted(unknown)} (expected some of {FIELDS})")
    return fields


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


# ---- the interface ---------------------------------------------------------------------------------


class TextIndex(Protocol):
    """BM25 search over the text of images, keyed by the store's image ids."""

    def add(self, docs: Sequence[TextDoc]) -> None:
        """Add or replace (same image id) documents; visible after :meth:`commit`."""
        ...

    def remove(self, ids: Iterable[int]) -> None: ...

    def clear(self) -> None: ...

    def commit(self) -> None: ...

    def search(
        self,
        query: str,
        k: int,
        *,
        fields: Sequence[str] | None = None,
        filters: TextFilters | None = None,
        snippets: int | None = None,
    ) -> list[TextHit]:
        """Best first (ties by id); never raises for any ``query``; unknown ``fields`` raise ValueError;
        snippets for the best ``snippets`` hits only (all when None)."""
        ...

    def __len__(self) -> int: ...

    def ids(self) -> list[int]: ...


# ---- tantivy ---------------------------------------------------------------------------------------


def _schema() -> tantivy.Schema:
    sb = tantivy.SchemaBuilder()
    sb.add_integer_field("image_id", stored=True, indexed=True, fast=True)
    for name in FIELDS:
        # Pre-tokenized on add; the tokenizer named here is never run on these fields.
        sb.add_text_field(name, tokenizer_name="whitespace", index_option="position")
    sb.add_bytes_field("raw", stored=True)  # the original texts, for snippets
    for name in ("source", "decision", "moderation"):
        sb.add_text_field(name, tokenizer_name="raw", index_option="basic", fast=True)
    sb.add_boolean_field("has_text", indexed=True, fast=True)
    sb.add_integer_field("created", indexed=True, fast=True)
    return sb.build()


class TantivyTextIndex:
    """The BM25 index: on disk under ``path`` (a directory of its own), or in memory when None.

    One process at a time may write to an on-disk index (tantivy holds a lock while a writer is open; one
    is opened on the first change and released by :meth:`close`); any number may read.
    """

    def __init__(
        self, path: Path | str | None = None, *, html_snippets: bool = True, writer_heap: int = 32_000_000
    ) -> None:
        self.path = None if path is None else Path(path)
        self.html_snippets = html_snippets
        self._writer_heap = writer_heap
        self._schema = _schema()
        self._lock = threading.Lock()
        self._writer: tantivy.IndexWriter | None = None
        self._pending = False
        if self.path is None:
            self._index = tantivy.Index(self._schema)
        else:
            self._index = self._open(self.path)

    def _open(self, path: Path) -> tantivy.Index:
        path.mkdir(parents=True, exist_ok=True)
        meta = path / META_FILE
        if tantivy.Index.exists(str(path)):
            version = json.loads(meta.read_text()).get("analyzer") if meta.exists() else None
            if version != ANALYZER_VERSION:
                raise StoreError(
                    f"the text index at {path} was built by analyzer {version}, this is {ANALYZER_VERSION}: "
                    "rebuild it"
                )
            return tantivy.Index(self._schema, str(path), reuse=True)
        index = tantivy.Index(self._schema, str(path), reuse=False)
        meta.write_text(json.dumps({"analyzer": ANALYZER_VERSION}))
        return index

    def _w(self) -> tantivy.IndexWriter:
        if self._writer is None:
            self._writer = self._index.writer(self._writer_heap, 1)
        return self._writer

    def _document(self, d: TextDoc) -> tantivy.Document:
        doc = tantivy.Document()
        doc.add_integer("image_id", d.image_id)
        raw = {}
        for name in FIELDS:
            text = getattr(d, name) or ""
            raw[name] = text
            tokens = [
                tantivy.Token(
                    text=t.term, position=t.position, char_offset_from=t.start, char_offset_to=t.end
                )
                for t in analyze_field(name, text)
            ]
            doc.add_pre_tokenized_text(name, tantivy.PreTokenizedString("", tokens))
        doc.add_bytes("raw", json.dumps(raw, ensure_ascii=False).encode())
        for name in ("source", "decision", "moderation"):
            if (value := getattr(d, name)) is not None:
                doc.add_text(name, value)
        doc.add_boolean("has_text", bool(d.has_text))
        doc.add_integer("created", int(d.created))
        return doc

    def add(self, docs: Sequence[TextDoc]) -> None:
        latest = {d.image_id: d for d in docs}  # the last of repeated ids wins
        prepared = [(i, self._document(d)) for i, d in latest.items()]  # analyse outside the lock
        with self._lock:
            w = self._w()
            for i, doc in prepared:
                w.delete_documents_by_term("image_id", int(i))
                w.add_document(doc)
            self._pending = self._pending or bool(prepared)

    def remove(self, ids: Iterable[int]) -> None:
        with self._lock:
            w = self._w()
            for i in ids:
                w.delete_documents_by_term("image_id", int(i))
                self._pending = True

    def clear(self) -> None:
        with self._lock:
            self._w().delete_all_documents()
            self._pending = True

    def commit(self) -> None:
        with self._lock:
            if self._writer is not None and self._pending:
                self._writer.commit()
                self._pending = False
                self._index.reload()

    def close(self) -> None:
        """Commit what is pending and release the writer (and its lock on the directory)."""
        self.commit()
        with self._lock:
            if self._writer is not None:
                self._writer.wait_merging_threads()
                self._writer = None

    def __enter__(self) -> TantivyTextIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return int(self._index.searcher().num_docs)

    def ids(self) -> list[int]:
        searcher = self._index.searcher()
        n = searcher.num_docs
        if not n:
            return []
        hits = searcher.search(Query.all_query(), n, count=False).hits
        return sorted(int(i) for i in searcher.fast_field_values("image_id", [a for _, a in hits]))

    def _filters(self, f: TextFilters) -> list[Query]:
        out: list[Query] = []
        for name in ("source", "decision", "moderation"):
            values = f.values(name)
            if values is not None:
                out.append(Query.term_set_query(self._schema, name, values))
        if f.has_text is not None:
            out.append(Query.term_query(self._schema, "has_text", f.has_text))
        if f.created_from is not None or f.created_to is not None:
            out.append(
                Query.range_query(
                    self._schema, "created", tantivy.FieldType.Integer, f.created_from, f.created_to,
                    include_upper=f.created_to is None,
                )
            )  # fmt: skip
        return out

    def _clause_query(self, c: Clause, name: str) -> Query:
        if c.phrase:
            return Query.phrase_query(self._schema, name, list(zip(c.offsets, c.terms, strict=True)))
        return Query.term_query(self._schema, name, c.terms[0])

    def _query(self, clauses: Sequence[Clause], filters: TextFilters | None) -> Query:
        parts: list[tuple[Occur, Query]] = []
        for c in clauses:
            per_field = [self._clause_query(c, f) for f in c.fields]
            if len(per_field) > 1:  # any of the fields; their scores add up
                per_field = [Query.boolean_query([(Occur.Should, q) for q in per_field])]
            parts.append((_OCCUR[c.occur], per_field[0]))
        # The text must match (beside a required filter, optional clauses would turn into mere boosts);
        # filters only select: a constant score of 0 leaves the BM25 ranking as it is.
        musts = [(Occur.Must, Query.boolean_query(parts))]
        for q in self._filters(filters or TextFilters()):
            musts.append((Occur.Must, Query.const_score_query(q, 0.0)))
        return Query.boolean_query(musts)

    def search(
        self,
        query: str,
        k: int,
        *,
        fields: Sequence[str] | None = None,
        filters: TextFilters | None = None,
        snippets: int | None = None,
    ) -> list[TextHit]:
        """``snippets``: only the best that many hits get snippets (they cost ~0.5-1 ms each)."""
        clauses = parse_query(query, _check_fields(fields))
        if k <= 0 or all(c.occur == "must_not" for c in clauses):
            return []
        searcher = self._index.searcher()
        try:
            hits = searcher.search(self._query(clauses, filters), k, count=False).hits
            docs = [(float(score), searcher.doc(addr)) for score, addr in hits]
        except ValueError as e:  # defensive: the clauses are built, not parsed, so this should not happen
            log.warning("text search failed for %r: %s", query, e)
            return []
        docs.sort(key=lambda sd: (-sd[0], int(sd[1]["image_id"][0])))
        out = [
            TextHit(
                int(doc["image_id"][0]),
                score,
                field_hits(json.loads(doc["raw"][0]), clauses, html_marks=self.html_snippets)
                if snippets is None or n < snippets
                else {},
            )
            for n, (score, doc) in enumerate(docs)
        ]
        return sorted(out, key=lambda h: (-h.score, h.image_id))


# ---- the reference ---------------------------------------------------------------------------------


class MemoryTextIndex:
    """Exact BM25 in pure Python over the same analysis: the specification the tantivy index is tested
    against, not for use at scale. It differs from tantivy only where tantivy approximates: tantivy
    quantises field lengths above ~40 terms and counts deleted documents in its statistics until a merge.
    """

    def __init__(self, *, html_snippets: bool = True) -> None:
        self.html_snippets = html_snippets
        self._docs: dict[int, tuple[TextDoc, dict[str, list[Token]]]] = {}
        self._pending: list[Callable[[], None]] = []

    def add(self, docs: Sequence[TextDoc]) -> None:
        for d in docs:
            tokens = {name: analyze_field(name, getattr(d, name) or "") for name in FIELDS}
            self._pending.append(lambda d=d, t=tokens: self._docs.__setitem__(d.image_id, (d, t)))

    def remove(self, ids: Iterable[int]) -> None:
        for i in list(ids):
            self._pending.append(lambda i=i: self._docs.pop(int(i), None))

    def clear(self) -> None:
        self._pending.append(self._docs.clear)

    def commit(self) -> None:
        for op in self._pending:
            op()
        self._pending.clear()

    def __len__(self) -> int:
        return len(self._docs)

    def ids(self) -> list[int]:
        return sorted(self._docs)

    def _clause_score(self, c: Clause, tokens: Mapping[str, list[Token]], stats: _Stats) -> float | None:
        total, matched = 0.0, False
        for name in c.fields:
            positions: dict[str, set[int]] = {}
            for t in tokens[name]:
                positions.setdefault(t.term, set()).add(t.position)
            if not all(term in positions for term in c.terms):
                continue
            pairs = zip(c.offsets, c.terms, strict=True)
            starts = set.intersection(*({p - o for p in positions[t]} for o, t in pairs))
            if tf := len(starts):
                idf = sum(stats.idf(name, t) for t in c.terms)
                norm = K1 * (1 - B + B * len(tokens[name]) / stats.avgdl(name))
                total += idf * (K1 + 1) * tf / (tf + norm)
                matched = True
        return total if matched else None

    def search(
        self,
        query: str,
        k: int,
        *,
        fields: Sequence[str] | None = None,
        filters: TextFilters | None = None,
        snippets: int | None = None,
    ) -> list[TextHit]:
        """``snippets``: only the best that many hits get snippets (they cost ~0.5-1 ms each)."""
        clauses = parse_query(query, _check_fields(fields))
        if k <= 0 or all(c.occur == "must_not" for c in clauses):
            return []
        stats = _Stats(self._docs.values())
        has_must = any(c.occur == "must" for c in clauses)
        scored: list[tuple[float, int]] = []
        for i, (doc, tokens) in self._docs.items():
            if filters is not None and not filters.matches(doc):
                continue
            scores = {c: self._clause_score(c, tokens, stats) for c in clauses}
            if any(scores[c] is not None for c in clauses if c.occur == "must_not"):
                continue
            if has_must and any(scores[c] is None for c in clauses if c.occur == "must"):
                continue
            positive = [s for c, s in scores.items() if c.occur != "must_not" and s is not None]
            if positive:
                scored.append((sum(positive), i))
        scored.sort(key=lambda x: (-x[0], x[1]))
        return [
            TextHit(
                i,
                s,
                field_hits(
                    {n: getattr(self._docs[i][0], n) for n in FIELDS}, clauses, html_marks=self.html_snippets
                ),
            )
            for s, i in scored[:k]
        ]


class _Stats:
    """Collection statistics as tantivy computes them (idf over all documents, average field length)."""

    def __init__(self, docs: Iterable[tuple[TextDoc, dict[str, list[Token]]]]) -> None:
        self.n = 0
        self.df: dict[str, Counter[str]] = {name: Counter() for name in FIELDS}
        self.length: Counter[str] = Counter()
        for _, tokens in docs:
            self.n += 1
            for name in FIELDS:
                self.df[name].update({t.term for t in tokens[name]})
                self.length[name] += len(tokens[name])

    def idf(self, name: str, term: str) -> float:
        df = self.df[name][term]
        return math.log(1 + (self.n - df + 0.5) / (df + 0.5))

    def avgdl(self, name: str) -> float:
        return self.length[name] / self.n if self.n else 1.0
