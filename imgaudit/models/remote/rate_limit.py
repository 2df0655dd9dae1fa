"""Client-side rate limit for a remote endpoint: pyrate-limiter's token bucket behind one blocking call.

The endpoints are called from worker threads (``RemoteEndpoint.map``), so the limiter must block a thread,
not an event loop; pyrate-limiter's blocking ``try_acquire`` sleeps without holding its lock, so callers
waiting for a slot do not serialise each other beyond the rate itself.
"""

from __future__ import annotations

from pyrate_limiter import Limiter, Rate, SingleBucketFactory, StateBucket, TokenBucket

from imgaudit.errors import ModelError

_UNITS = 1000
"""Requests are counted in thousandths per rate window so any float rate maps to whole milliseconds with
microsecond precision (pyrate-limiter rates are integers per integer milliseconds)."""


class RateLimit:
    """``rate`` requests per second on average, up to ``burst`` at once; ``rate`` 0 means unlimited.

    Thread-safe: once the burst is spent, concurrent callers go about ``1 / rate`` seconds apart (waiting
    callers are not served strictly in arrival order).
    """

    def __init__(self, rate: float, burst: int = 1) -> None:
        self.rate = float(rate)
        self.burst = max(1, int(burst))
        self._limiter: Limiter | None = None
        if self.rate > 0:
            window_ms = max(1, round(_UNITS * 1000 / self.rate))
            bucket = StateBucket([Rate(_UNITS, window_ms, burst=self.burst)], algorithm=TokenBucket())
            # A token bucket keeps constant state: nothing to leak, so no background leaker thread.
            self._limiter = Limiter(SingleBucketFactory(bucket, schedule_leak=False), buffer_ms=0)

    def acquire(self) -> None:
        """Block until the next request may go."""
        if self._limiter is not None and not self._limiter.try_acquire("requests"):
            # Blocking without a timeout returns only once a slot is taken; False would mean a request
            # heavier than the bucket, which would otherwise go out unthrottled.
            raise ModelError("the client-side rate limiter refused a request")

    def close(self) -> None:
        if self._limiter is not None:
            self._limiter.close()
