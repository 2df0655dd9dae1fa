"""Counts by state and outcome, and throughput, straight from the images table."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from imgaudit.store.schema import ImageRow, utcnow
from imgaudit.store.sql.base import SqlBase
from imgaudit.types import Status

ACTIVITY_WINDOWS = {"last_minute": 60, "last_hour": 3600, "last_day": 86400}  # name -> seconds
_FINISHED = (Status.DONE, Status.FAILED_PERMANENT, Status.FAILED_RETRYABLE)


class SqlStats(SqlBase):
    def counts(self, since: datetime | None = None) -> dict[str, dict[str, int]]:
        """Current queue states, and decisions / deciding stages / failure reasons (of items processed
        since ``since`` when given)."""
        recent = ImageRow.processed_at >= since if since is not None else True
        return {
            "status": self._grouped(ImageRow.status),
            "decision": self._grouped(ImageRow.decision, ImageRow.decision.is_not(None), recent),
            "duplicate_stage": self._grouped(ImageRow.stage, ImageRow.decision == "duplicate", recent),
            "moderation": self._grouped(ImageRow.moderation, ImageRow.moderation.is_not(None), recent),
            "error": self._grouped(ImageRow.error_reason, ImageRow.error_reason.is_not(None), recent),
        }

    def _grouped(self, column: Any, *where: Any) -> dict[str, int]:
        q = select(column, func.count()).where(*where).group_by(column).order_by(func.count().desc())
        with self._reading() as s:
            return {k: int(v) for k, v in s.execute(q).all()}

    def activity(self, since: datetime | None = None) -> dict[str, object]:
        """Throughput over the last minute / hour / day, and per-worker totals (since ``since``)."""
        now = utcnow()
        out: dict[str, object] = {}
        with self._reading() as s:
            for name, seconds in ACTIVITY_WINDOWS.items():
                n = s.scalar(
                    select(func.count()).where(
                        ImageRow.status.in_(_FINISHED),
                        ImageRow.processed_at >= now - timedelta(seconds=seconds),
                    )
                )
                out[name] = {"processed": int(n or 0), "per_minute": round(int(n or 0) / (seconds / 60), 2)}
            q = (
                select(ImageRow.processed_by, func.count(), func.max(ImageRow.processed_at))
                .where(ImageRow.processed_by.is_not(None))
                .group_by(ImageRow.processed_by)
                .order_by(func.count().desc())
            )
            if since is not None:
                q = q.where(ImageRow.processed_at >= since)
            out["workers"] = [
                {"worker": w, "processed": int(n), "last_at": at.isoformat() if at else None}
                for w, n, at in s.execute(q).all()
            ]
            claimed = s.execute(
                select(ImageRow.claimed_by, func.count())
                .where(ImageRow.status == Status.PROCESSING)
                .group_by(ImageRow.claimed_by)
            ).all()
            out["in_flight"] = {w: int(n) for w, n in claimed}
        return out
