"""An existing business table used as the work queue (the legacy MySQL contract).

Rows matching the operator's ``select_where`` are read in key order after a cursor (one short read per
poll, no transaction left open, so the business application never waits on us), and verdicts are written
back into configured columns in one transaction per batch. Everything the operator names (table, columns)
is checked against the reflected table on first use and quoted by SQLAlchemy, so a typo is a ConfigError,
never a broken or injected statement; ``select_where`` is the one trusted SQL fragment.

Every error the database or its driver reports on the way (connection refused or lost, a server error, a
statement refused, an exhausted pool) becomes ``ExternalUnavailable``: the worker carries on with what is
already queued and tries again at its next step, and verdicts not yet written stay pending in the store
meanwhile. SQLAlchemy's own usage errors are bugs and pass unchanged.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import (
    Column,
    Date,
    DateTime,
    Float,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    TextClause,
    Update,
    bindparam,
    create_engine,
    select,
    text,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    NoSuchModuleError,
    NoSuchTableError,
    PendingRollbackError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout

from imgaudit.config import ExternalTableSettings
from imgaudit.errors import ConfigError, ExternalUnavailable, MediaError
from imgaudit.media.fetch import join_url
from imgaudit.types import ImageRef, Status

log = logging.getLogger(__name__)

NAME_MAX = 64
"""Longest source name: the store keeps it in ``images.source`` (VARCHAR(64))."""

# Bound-parameter names of the write-back UPDATEs. They must differ from the names of the columns set
# (SQLAlchemy reserves those), hence the prefix.
_KEY, _SCORE, _ORIGINAL, _ERROR = "imgaudit_key", "imgaudit_score", "imgaudit_original", "imgaudit_error"
_MODERATION, _REASONS = "imgaudit_moderation", "imgaudit_reasons"


class FinishedItem(Protocol):
    """What ``write_back`` reads of a store item. ``imgaudit.types.ItemRecord`` fits; it is described
    here, not imported, because sources and the store are independent layers."""

    @property
    def id(self) -> int: ...
    @property
    def external_key(self) -> str | None: ...
    @property
    def status(self) -> str: ...
    @property
    def decision(self) -> str | None: ...
    @property
    def score(self) -> float | None: ...
    @property
    def error_reason(self) -> str | None: ...
    @property
    def moderation(self) -> str | None: ...
    @property
    def reasons(self) -> list[dict[str, object]] | None: ...


@dataclass(frozen=True, slots=True)
class _Prepared:
    """What first use learns from the database: the reflected table and the checked statements' parts."""

    table: Table
    key: Column[Any]
    image: Column[Any]
    where: TextClause
    parse_key: Callable[[str], Any]


class ExternalTable:
    """The ``ExternalSource`` of ``WorkerService`` for a table in any SQLAlchemy database.

    Nothing touches the database before the first ``poll``/``write_back``, so building one (at start-up,
    in ``bootstrap.worker_service``) never fails because the business database is briefly down.
    """

    def __init__(self, settings: ExternalTableSettings, *, cdn_base: str = "") -> None:
        if not settings.url.strip():
            raise ConfigError("external.url is empty: no business table is configured")
        if not settings.table.strip():
            raise ConfigError("external.table is required when external.url is set")
        if not settings.select_where.strip():
            # An empty condition would feed the whole table, finished rows included.
            raise ConfigError("external.select_where is empty; write '1 = 1' to really take every row")
        self.settings = settings
        self.cdn_base = cdn_base
        url = _with_default_driver(_parse_url(settings.url))
        self.name = settings.name or source_name(url, settings.table)
        try:
            self.engine = create_engine(url, pool_pre_ping=True, **_engine_options(url))
        except (ArgumentError, NoSuchModuleError, ImportError) as exc:
            raise ConfigError(f"external.url: cannot use {url.render_as_string()}: {exc}") from exc
        self._prepared: _Prepared | None = None

    def close(self) -> None:
        """Close the pooled connections (the engine reconnects if used again)."""
        self.engine.dispose()

    # -- reading ---------------------------------------------------------------------------------------

    def poll(self, after_key: str | None, limit: int) -> list[ImageRef]:
        with self._unavailable():
            return self._poll(after_key, limit)

    def write_back(self, items: Sequence[tuple[FinishedItem, str | None]]) -> None:
        with self._unavailable():
            self._write_back(items)

    @contextmanager
    def _unavailable(self) -> Iterator[None]:
        """The driver's errors as ``ExternalUnavailable``, naming this source (never its password)."""
        try:
            yield
        except DBAPIError as exc:
            raise ExternalUnavailable(f"{self.name}: {type(exc.orig).__name__}: {exc.orig}") from exc
        except (PoolTimeout, PendingRollbackError) as exc:
            raise ExternalUnavailable(f"{self.name}: {exc}") from exc

    def _poll(self, after_key: str | None, limit: int) -> list[ImageRef]:
        """Up to ``limit`` waiting rows with a key above ``after_key``, in key order.

        The cursor is stored as a string; it is converted to the key column's type so that integer keys
        compare as numbers (10 > 9), not as text. Rows without an image value still come back, with an
        empty (or unresolvable) URI: the fetcher then fails them permanently with a clear reason and the
        row gets the ``on_failure`` values, instead of staying silently in the waiting state.
        """
        p = self._prepare()
        captions = [p.table.c[c] for c in self.settings.caption_columns]
        query = select(p.key, p.image, *captions).where(p.where, p.key.is_not(None))
        if after_key is not None:
            query = query.where(p.key > self._cursor_value(p, after_key))
        query = query.order_by(p.key).limit(limit)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
            conn.rollback()  # end the read now: no snapshot or metadata lock held between polls
        return [
            ImageRef(self._image_uri(row[1]), "key", str(row[0]), caption=_caption(row[2:])) for row in rows
        ]

    def _image_uri(self, value: object) -> str:
        """The full image URL (``cdn_base`` + relative path); a value that cannot become one is kept as
        it is, so that the fetcher reports why (empty URL, relative URL without ``fetch.cdn_base``)."""
        if value is None:
            return ""
        raw = value.decode("utf-8", "replace") if isinstance(value, bytes | bytearray) else str(value)
        try:
            return join_url(self.cdn_base, raw)
        except MediaError:
            return raw.strip()

    def _cursor_value(self, p: _Prepared, after_key: str) -> Any:
        try:
            return p.parse_key(after_key)
        except (ValueError, TypeError, InvalidOperation) as exc:
            raise ConfigError(
                f"the stored cursor {after_key!r} of source {self.name!r} is not a valid value of "
                f"{self.settings.table}.{p.key.name} ({p.key.type}); was external.key_column changed? "
                f"The cursor is the row 'external:{self.name}' of the store's source_state table."
            ) from exc

    # -- writing ---------------------------------------------------------------------------------------

    def _write_back(self, items: Sequence[tuple[FinishedItem, str | None]]) -> None:
        """Write the verdicts of finished items into their rows, all in ONE transaction: either every
        row of the batch gets its verdict or none does (and the store keeps them all pending).

        done + unique -> ``on_unique``; done + duplicate -> ``on_duplicate`` plus ``score_column`` and
        ``original_column`` (the original's key, NULL when the original did not come from a table);
        failed_permanent -> ``on_failure`` plus ``error_column`` (the short error reason). Anything else
        (a retryable failure, an item not finished) is skipped: it is not a verdict yet. A done item's
        moderation verdict then adds ``on_review`` / ``on_violate`` (these win over the dedup columns),
        ``moderation_column`` (pass / review / violate) and ``reasons_column`` (the reasons, one line).
        """
        p = self._prepare()
        s = self.settings
        unique: list[dict[str, Any]] = []
        duplicate: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        review: list[dict[str, Any]] = []
        violate: list[dict[str, Any]] = []
        moderated: list[dict[str, Any]] = []  # passed: only the moderation columns
        for rec, original_key in items:
            if rec.external_key is None:
                log.warning("item %d has no external key; nothing to write back", rec.id)
                continue
            key = {_KEY: self._row_key(p, rec.external_key)}
            if rec.status == Status.DONE and rec.decision == "unique":
                unique.append(key)
            elif rec.status == Status.DONE and rec.decision == "duplicate":
                duplicate.append(
                    key
                    | {
                        _SCORE: float(rec.score) if rec.score is not None else None,
                        _ORIGINAL: _coerce(p.table, s.original_column, original_key),
                    }
                )
            elif rec.status == Status.FAILED_PERMANENT:
                failed.append(key | {_ERROR: _fit(p.table, s.error_column, rec.error_reason)})
            else:
                log.debug("item %d (%s) has no verdict to write back yet", rec.id, rec.status)
            if rec.status == Status.DONE and rec.moderation is not None:
                why = "; ".join(f"{r.get('category')}: {r.get('message')}" for r in rec.reasons or [])
                row = key | {
                    _MODERATION: rec.moderation,
                    _REASONS: _fit(p.table, s.reasons_column, why) if s.reasons_column else why,
                }
                {"review": review, "violate": violate}.get(rec.moderation, moderated).append(row)
        batches = [
            (self._update(p, s.on_unique, {}), unique),
            (
                self._update(p, s.on_duplicate, {s.score_column: _SCORE, s.original_column: _ORIGINAL}),
                duplicate,
            ),
            (self._update(p, s.on_failure, {s.error_column: _ERROR}), failed),
        ]
        verdict_columns = {s.moderation_column: _MODERATION, s.reasons_column: _REASONS}
        batches += [
            (self._update(p, {}, verdict_columns), moderated),
            (self._update(p, s.on_review, verdict_columns), review),
            (self._update(p, s.on_violate, verdict_columns), violate),
        ]
        to_run = [(stmt, rows) for stmt, rows in batches if stmt is not None and rows]
        if not to_run:
            return
        with self.engine.begin() as conn:
            for stmt, rows in to_run:
                result = conn.execute(stmt, rows)  # executemany: one prepared UPDATE per outcome
                if conn.dialect.supports_sane_multi_rowcount and 0 <= result.rowcount < len(rows):
                    log.warning(
                        "%s: %d of %d rows to update no longer exist",
                        self.name,
                        len(rows) - result.rowcount,
                        len(rows),
                    )

    def _row_key(self, p: _Prepared, external_key: str) -> Any:
        try:
            return p.parse_key(external_key)
        except (ValueError, TypeError, InvalidOperation) as exc:
            # Cannot come from this table's poll; refuse rather than update the wrong row.
            raise ConfigError(
                f"external key {external_key!r} is not a valid value of {self.settings.table}.{p.key.name}"
            ) from exc

    @staticmethod
    def _update(p: _Prepared, constants: Mapping[str, str], bound: Mapping[str, str]) -> Update | None:
        """``UPDATE t SET <constants>, <column = :param ...> WHERE key = :imgaudit_key``; None when the
        outcome writes nothing. Constants are bound parameters too, never spliced into the SQL."""
        values: dict[Column[Any], Any] = {p.table.c[col]: value for col, value in constants.items()}
        values.update({p.table.c[col]: bindparam(param) for col, param in bound.items() if col})
        if not values:
            return None
        return p.table.update().where(p.key == bindparam(_KEY)).values(values)

    # -- first use -------------------------------------------------------------------------------------

    def _prepare(self) -> _Prepared:
        """Reflect the table and check the configuration against it, once. A failure to reach the
        database propagates (and is tried again next time); a configuration mistake is a ConfigError."""
        if self._prepared is not None:
            return self._prepared
        s = self.settings
        schema, _, table_name = s.table.strip().rpartition(".")
        try:
            table = Table(table_name, MetaData(), schema=schema or None, autoload_with=self.engine)
        except NoSuchTableError as exc:
            raise ConfigError(f"external.table: there is no table {s.table!r} in {self.name}") from exc
        self._check_columns(table)
        key, image = table.c[s.key_column], table.c[s.image_column]
        # The fragment is literal SQL: escape colons so that text() binds nothing (':x' in a string literal).
        where = text("(" + s.select_where.replace(":", "\\:") + ")")
        try:
            with self.engine.connect() as conn:
                conn.execute(select(key).where(where).limit(0)).all()
                conn.rollback()
        except DBAPIError as exc:
            if self._database_answers():  # the server is fine, so the condition itself is wrong
                raise ConfigError(f"external.select_where is not valid for {s.table!r}: {exc.orig}") from exc
            raise
        self._prepared = _Prepared(table, key, image, where, _key_parser(key))
        return self._prepared

    def _check_columns(self, table: Table) -> None:
        s = self.settings
        named: list[tuple[str, str]] = [("key_column", s.key_column), ("image_column", s.image_column)]
        for group in ("on_unique", "on_duplicate", "on_failure", "on_review", "on_violate"):
            named += [(group, col) for col in getattr(s, group)]
        named += [("caption_columns", col) for col in s.caption_columns]
        named += [
            (opt, getattr(s, opt))
            for opt in (
                "score_column",
                "original_column",
                "error_column",
                "moderation_column",
                "reasons_column",
            )
        ]
        unknown = [f"external.{opt}: {col!r}" for opt, col in named if col and col not in table.c]
        if unknown:
            raise ConfigError(
                f"unknown columns in table {s.table!r}: {'; '.join(unknown)} "
                f"(the table has: {', '.join(c.name for c in table.c)})"
            )
        problems = []
        for group, extra in (
            ("on_unique", []),
            ("on_duplicate", [s.score_column, s.original_column]),
            ("on_failure", [s.error_column]),
            ("on_review", [s.moderation_column, s.reasons_column]),
            ("on_violate", [s.moderation_column, s.reasons_column]),
        ):
            written = [*getattr(s, group), *(c for c in extra if c)]
            if s.key_column in written:
                problems.append(f"external.{group} would change the key column {s.key_column!r}")
            twice = sorted({c for c in written if written.count(c) > 1})
            if twice:
                problems.append(f"external.{group} sets {', '.join(twice)} twice")
        if problems:
            raise ConfigError("; ".join(problems))

    def _database_answers(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1")).all()
        except DBAPIError:
            return False
        return True


# -- helpers -----------------------------------------------------------------------------------------------


def source_name(url: URL, table: str) -> str:
    """``table@host/database`` (``table@file`` for SQLite): short, stable across restarts and password
    changes, because the store keys the cursor and the queued items by it. At most NAME_MAX characters."""
    if url.get_backend_name() == "sqlite":
        where = Path(url.database).name if url.database and url.database != ":memory:" else "memory"
    else:
        where = f"{url.host or 'localhost'}/{url.database or ''}"
    name = f"{table.strip()}@{where}"
    if len(name) > NAME_MAX:
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        name = f"{name[: NAME_MAX - 9]}~{digest}"
    return name


def _parse_url(raw: str) -> URL:
    try:
        return make_url(raw.strip())
    except ArgumentError as exc:  # the message would repeat the URL, password included
        raise ConfigError(
            "external.url is not a valid SQLAlchemy URL (dialect+driver://user:pass@host/db)"
        ) from exc


def _with_default_driver(url: URL) -> URL:
    """``mysql://`` and ``mariadb://`` mean the pure-Python PyMySQL driver (installed with imgaudit),
    not SQLAlchemy's default mysqlclient, which needs a C library."""
    if url.drivername in ("mysql", "mariadb"):
        return url.set(drivername=f"{url.drivername}+pymysql")
    return url


def _engine_options(url: URL) -> dict[str, Any]:
    if url.get_backend_name() == "sqlite":
        return {"connect_args": {"timeout": 30}}  # wait for the application's write locks, do not fail
    # Servers close idle connections (MySQL wait_timeout); pre-ping catches most, recycling the rest.
    return {"pool_recycle": 3600}


def _key_parser(column: Column[Any]) -> Callable[[str], Any]:
    """From the string form of a key (``str(value)``) back to the column's Python type."""
    t = column.type
    if isinstance(t, Integer):
        return int
    if isinstance(t, Float):
        return float
    if isinstance(t, Numeric):
        return Decimal
    if isinstance(t, DateTime):
        return datetime.fromisoformat
    if isinstance(t, Date):
        return date.fromisoformat
    return str


def _coerce(table: Table, column: str, key: str | None) -> Any:
    """An original's key as the target column wants it (an integer column gets an integer). A key that
    does not fit the column becomes NULL: a cut-off key would name the wrong row, and a failing value
    would fail the whole batch at every retry."""
    if not column or key is None:
        return key
    t = table.c[column].type
    if isinstance(t, Integer):
        try:
            return int(key)
        except ValueError:
            return None
    length = t.length if isinstance(t, String) else None
    return key if not length or len(key) <= length else None


def _caption(values: Sequence[object]) -> str | None:
    """The caption columns of a row (title, description...), joined; None when all are empty."""
    parts = []
    for v in values:
        if isinstance(v, bytes | bytearray):
            v = v.decode("utf-8", "replace")
        if v is not None and str(v).strip():
            parts.append(str(v).strip())
    return "\n".join(parts) or None


def _fit(table: Table, column: str, value: str | None) -> str | None:
    """Cut a string to the column's declared length: in strict SQL modes one over-long value would fail
    the whole batch, and again at every retry."""
    if not column or value is None:
        return value
    t = table.c[column].type
    length = t.length if isinstance(t, String) else None
    return value[:length] if length else value
