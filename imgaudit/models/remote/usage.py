"""What a remote endpoint has cost so far: request, retry and failure counts, inputs, tokens and price."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Prices:
    """Per-unit prices for the estimated cost, in whatever currency the provider bills."""

    per_1k_input_tokens: float = 0.0
    per_1k_output_tokens: float = 0.0
    per_image: float = 0.0


class UsageCounters:
    """What an endpoint has cost so far; thread-safe. ``as_dict`` is what reports and the CLI show.

    ``requests`` counts HTTP requests sent (retries included, as providers count them), ``retries`` the
    extra attempts, ``failures`` the calls that failed for good, ``images`` / ``texts`` the inputs of
    successful calls. Tokens come from the server's ``usage`` when it reports them.
    """

    _FIELDS = ("requests", "retries", "failures", "images", "texts", "input_tokens", "output_tokens")

    def __init__(self, prices: Prices | None = None) -> None:
        self.prices = prices or Prices()
        self._counts = dict.fromkeys(self._FIELDS, 0)
        self._lock = threading.Lock()

    def add(self, **counts: int) -> None:
        with self._lock:
            for key, value in counts.items():
                self._counts[key] += int(value)

    def as_dict(self) -> dict[str, float]:
        with self._lock:
            out: dict[str, float] = dict(self._counts)
        p = self.prices
        cost = (
            out["input_tokens"] / 1000 * p.per_1k_input_tokens
            + out["output_tokens"] / 1000 * p.per_1k_output_tokens
            + out["images"] * p.per_image
        )
        out["estimated_cost"] = round(cost, 6)
        return out

    def record(self, data: dict[str, Any], **counts: int) -> None:
        """Add a successful call's inputs and the tokens the server reports in ``usage`` (OpenAI's
        prompt/completion_tokens or DashScope's input/output_tokens; image_tokens count as input)."""
        usage = data.get("usage")
        if isinstance(usage, dict):

            def number(*keys: str) -> int:
                for key in keys:
                    value = usage.get(key)
                    if isinstance(value, int | float) and not isinstance(value, bool):
                        return int(value)
                return 0

            counts["input_tokens"] = number("input_tokens", "prompt_tokens") + number("image_tokens")
            counts["output_tokens"] = number("output_tokens", "completion_tokens")
        self.add(**counts)
