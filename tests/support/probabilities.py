"""Class-probability vectors for the label-space tests (fast and real-model tiers)."""

from __future__ import annotations

import numpy as np

from imgaudit.signals.labels import N_CLASSES


def peaked(index: int, mass: float = 0.9) -> np.ndarray:
    """A probability vector with ``mass`` on one class and the rest spread evenly."""
    p = np.full(N_CLASSES, (1.0 - mass) / (N_CLASSES - 1), np.float32)
    p[index] = mass
    return p
