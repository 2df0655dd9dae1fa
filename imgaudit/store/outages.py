"""Telling the database failing from a value it refuses, so that callers above the store never import
SQLAlchemy: the store raises ``StoreUnavailable`` for the first and lets the second through.

Everything but a refused value counts as the database failing (gone, locked, timed out, a pool exhausted,
even a bug in our SQL): such a failure is no item's fault, so the batch goes back to the queue and the
worker asks again later, which heals an outage and at worst repeats a bug's error in the log. A value the
database refuses (``DataError``, ``IntegrityError``) is some item's doing, and the pipeline isolates it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError

from imgaudit.errors import StoreUnavailable

_REFUSED_VALUE = (DataError, IntegrityError)


def _is_outage(exc: BaseException) -> bool:
    return isinstance(exc, SQLAlchemyError | ConnectionError) and not isinstance(exc, _REFUSED_VALUE)


def is_store_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is the store failing rather than the data in hand: ``StoreUnavailable``, or a
    driver error that has not been through the store yet."""
    return isinstance(exc, StoreUnavailable) or _is_outage(exc)


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
