"""What a store writes for an item when it is enqueued, finished or failed: the row's new values and the
event recorded with them. Kept apart from SQL so that every store implementation records the same.

Rows are plain dicts keyed by the images table's columns, events by the events table's."""

from __future__ import annotations

from datetime import datetime, timedelta

from imgaudit.signals.hashes import to_signed
from imgaudit.store.encoding import (
    finite,
    json_safe,
    pack_embedding,
    printable,
    storable,
    stored_uri,
    uri_hash,
)
from imgaudit.types import (
    Completion,
    Failure,
    ImageRef,
    Status,
    moderation_signals_json,
    reasons_json,
)

RETRY_BACKOFF_SECONDS = 30.0  # doubled after each further failed attempt
KEY_MAX = 255  # images.external_key is VARCHAR(255)
MESSAGE_MAX = 2000  # characters of an error message kept


def identity(ref: ImageRef, source: str) -> str:
    """What makes two entries the same item: external rows by their key (two rows may share an image
    URL), everything else by its URI."""
    return f"key:{source}:{ref.external_key}" if ref.kind == "key" else ref.uri


def enqueue_row(r: ImageRef, source: str, now: datetime) -> dict[str, object]:
    """The images row of a new entry: queued, or failed at once when refused or not storable."""
    uri = stored_uri(r.uri, r.kind)
    reason, message = r.error_reason, r.error_message
    # A key not stored exactly (cut, escaped) would name another business row, or none.
    key_exact = r.external_key is None or (storable(r.external_key) and len(r.external_key) <= KEY_MAX)
    if reason is None and not storable(uri):
        reason, message = "bad_uri", f"cannot be stored as text (NUL or invalid Unicode): {r.uri!r}"
    elif reason is None and not key_exact:
        reason, message = "bad_key", f"external key longer than {KEY_MAX} or not text: {r.external_key!r}"
    return dict(
        source=source,
        kind=r.kind,
        uri=uri if storable(uri) else printable(uri),
        uri_hash=uri_hash(identity(r, source)),
        external_key=printable(r.external_key)[:KEY_MAX] if r.external_key is not None else None,
        status=Status.QUEUED if reason is None else Status.FAILED_PERMANENT,
        attempts=0,
        error_reason=reason[:64] if reason else None,
        last_error=printable(message or reason or "")[:MESSAGE_MAX] if reason else None,
        available_at=now,
        created_at=now,
        updated_at=now,
        processed_at=now if reason else None,
        writeback="pending" if reason and r.kind == "key" and key_exact else None,  # its on_failure
        indexed=0,
        caption=printable(r.caption)[:20_000] if r.caption else None,
        meta=json_safe(r.meta) if r.meta else None,
    )


def refused_event(image_id: int, reason: str, message: str | None, now: datetime) -> dict[str, object]:
    """The event of an entry recorded as failed at enqueue."""
    return {
        "image_id": image_id,
        "at": now,
        "event": Status.FAILED_PERMANENT.value,
        "detail": f"refused at enqueue: {reason}: {message}",
    }


def done_values(c: Completion, kind: str, worker: str | None, now: datetime) -> dict[str, object]:
    """The new values of a processed item's row (``kind``: the row's, which decides write-back)."""
    return {
        "id": c.id,
        "status": Status.DONE,
        **_signal_values(c),
        **_verdict_values(c),
        **_search_values(c),
        "indexed": int(c.indexed),
        "error_reason": None,
        "last_error": None,
        "claimed_by": None,
        "lease_until": None,
        "processed_at": now,
        "processed_by": worker,
        "updated_at": now,
        "writeback": "pending" if kind == "key" else None,
    }


def _signal_values(c: Completion) -> dict[str, object]:
    return {
        "sha256": c.signals.sha256,
        "pixel_sha256": c.signals.pixel_sha256,
        "phash": to_signed(c.signals.phash),
        "embedding": pack_embedding(c.signals.embedding),
        "format": c.format,
        "width": c.width,
        "height": c.height,
    }


def _verdict_values(c: Completion) -> dict[str, object]:
    v, m, ms = c.verdict, c.moderation, c.moderation_signals
    return {
        "decision": v.decision.value,
        "duplicate_of": v.duplicate_of,
        "score": v.score,
        "stage": v.stage.value,
        "evidence": finite(v.detail),
        "moderation": m.decision.value if m else None,
        "reasons": json_safe(reasons_json(m)) if m else None,
        "signals": json_safe(moderation_signals_json(ms)) if ms else None,
    }


def _search_values(c: Completion) -> dict[str, object]:
    ms = c.moderation_signals
    return {
        "ocr_text": "\n".join(ln.text for ln in ms.ocr) if ms and ms.ocr else None,
        "labels": c.labels,
        "colours": [list(x) for x in c.colours] if c.colours else None,
        "clip_embedding": pack_embedding(c.clip_embedding) if c.clip_embedding is not None else None,
        "ai_caption": printable(c.ai_caption) if c.ai_caption else None,
    }


def done_event(c: Completion, worker: str | None, now: datetime) -> dict[str, object]:
    v = c.verdict
    detail = f"{v.decision.value} ({v.stage.value})"
    if v.duplicate_of:
        detail += f" of #{v.duplicate_of}"
    if c.moderation is not None:
        detail += f"; moderation {c.moderation.decision.value}"
        if c.moderation.reasons:
            detail += ": " + "; ".join(f"{r.category}: {r.message}" for r in c.moderation.reasons[:5])
    return {"image_id": c.id, "at": now, "event": "done", "worker": worker, "detail": detail}


def failed_values(
    f: Failure, attempts: int, kind: str, max_attempts: int, worker: str | None, now: datetime
) -> dict[str, object]:
    """The new values of a failed item's row: retried after a back-off that doubles with each attempt,
    unless the error is permanent or ``attempts`` (so far, this one included) reached ``max_attempts``."""
    permanent = not f.error.retryable or attempts >= max_attempts
    return {
        "id": f.id,
        "status": Status.FAILED_PERMANENT if permanent else Status.FAILED_RETRYABLE,
        "error_reason": f.error.reason,
        "last_error": printable(f.error.message)[:MESSAGE_MAX],
        "claimed_by": None,
        "lease_until": None,
        "available_at": now + timedelta(seconds=RETRY_BACKOFF_SECONDS * 2 ** max(attempts - 1, 0)),
        "processed_at": now,
        "processed_by": worker,
        "updated_at": now,
        # Only a final verdict goes back to a business table; retryable failures are retried.
        "writeback": "pending" if kind == "key" and permanent else None,
    }


def failed_event(
    values: dict[str, object], f: Failure, worker: str | None, now: datetime
) -> dict[str, object]:
    """The event of a failure whose row got ``values`` (from ``failed_values``)."""
    return {
        "image_id": f.id,
        "at": now,
        "event": str(values["status"]),  # a Status: its str() is its value
        "worker": worker,
        "detail": f"{f.error.reason}: {values['last_error']}",
    }
