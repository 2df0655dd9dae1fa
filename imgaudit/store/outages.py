"""Telling the database failing from a value it refuses, so that callers above the store never import
SQLAlchemy: the store raises ``StoreUnavailable`` for the first and lets the second through.

An outage is what the driver reports (``DBAPIError``: gone, locked, timed out, refused, even a statement
the server rejects), an exhausted connection pool, a transaction whose connection was lost, or a lost
socket: no item's fault, so the batch goes
back to the queue and the worker asks again later. A value the database refuses (``DataError``,
``IntegrityError``) is some item's doing, and the pipeline isolates it. SQLAlchemy's own usage errors
(``InvalidRequestError`` and the like) are bugs, not outages: they pass unchanged, so a worker fails
loudly under its supervisor instead of retrying a bug forever.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, PendingRollbackError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from imgaudit.errors import StoreUnavailable

_REFUSED_VALUE = (DataError, IntegrityError)
# PendingRollbackError: the connection was lost inside this transaction, and the session says so on the
# next statement.
_OUTAGE = (DBAPIError, PoolTimeout, PendingRollbackError, ConnectionError)


def _is_outage(exc: BaseException) -> bool:
    return isinstance(exc, _OUTAGE) and not isinstance(exc, _REFUSED_VALUE)


def is_store_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is the store failing rather than the data in hand, so a batch is released rather
    than split: ``StoreUnavailable``, or any database error but a refused value (a bug in our SQL is no
    item's fault either)."""
    if isinstance(exc, StoreUnavailable):
        return True
    return isinstance(exc, SQLAlchemyError | ConnectionError) and not isinstance(exc, _REFUSED_VALUE)


@contextmanager
def unavailable_on_outage() -> Iterator[None]:
    """Raise ``StoreUnavailable`` (from the driver's error) for an outage inside the block; a refused
    value and every other error pass unchanged. Also usable as a decorator."""
    try:
        yield
    except (SQLAlchemyError, ConnectionError) as exc:
        if not _is_outage(exc):
            raise
        cause = getattr(exc, "orig", None) or exc  # the driver's own error says what happened
        raise StoreUnavailable(f"the database is unavailable: {type(cause).__name__}: {cause}") from exc
