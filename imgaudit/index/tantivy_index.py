"""Full-text (BM25) search over what an image says and what is said about it, on tantivy.

Documents are analysed in Python (:mod:`imgaudit.index.text_analysis`) and handed to tantivy
pre-tokenized; the filter fields are indexed too, so filters run inside tantivy.

Changes become visible on :meth:`commit`, as in tantivy. Scores are tantivy's BM25 (k1 1.2, b 0.75),
summed over the fields and clauses that match.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import cast

import tantivy
from tantivy import Occur, Query

from imgaudit.errors import StoreError
from imgaudit.index.text_analysis import (
    ANALYZER_VERSION,
    FIELDS,
    Clause,
    OccurName,
    analyze_field,
    field_hits,
    parse_query,
)
from imgaudit.index.text_base import TextDoc, TextFilters, TextHit, check_fields

log = logging.getLogger(__name__)

META_FILE = "imgaudit-text.json"
_OCCUR: dict[OccurName, Occur] = {"should": Occur.Should, "must": Occur.Must, "must_not": Occur.MustNot}


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
        return sorted(int(cast(int, i)) for i in searcher.fast_field_values("image_id", [a for _, a in hits]))

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
        clauses = parse_query(query, check_fields(fields))
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
