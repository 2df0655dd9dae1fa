"""Classifier heads on this machine, behind ``ports.HeadModels``: linear heads from fitted weights, saved
heads loaded as workers load them, EfficientNet-Lite0 fine-tuned with torch. ``imgaudit.bootstrap`` hands
one to training, so the training services never import a concrete model."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from imgaudit.models import finetune
from imgaudit.models.classifier import Head, LinearHead, load_head
from imgaudit.models.ports import FinetuneReport


class LocalHeads:
    def __init__(self, threads: int = 0) -> None:
        self.threads = threads

    def linear(self, meta: dict[str, Any], weights: np.ndarray, bias: np.ndarray) -> Head:
        return LinearHead(meta, weights, bias)

    def load(self, vdir: Path, *, encoder_id: str | None) -> Head:
        return load_head(vdir, encoder_id=encoder_id, threads=self.threads)

    def training_image(self, image: np.ndarray, input_size: int) -> np.ndarray:
        return finetune.shrink_for_training(image, input_size)

    def finetune(
        self,
        images: Sequence[np.ndarray],
        labels: np.ndarray,
        n_classes: int,
        dest: Path,
        *,
        input_size: int,
        epochs: int,
        batch_size: int,
        class_weights: np.ndarray,
        seed: int,
        progress: Callable[[int], None] | None,
    ) -> FinetuneReport:
        return finetune.finetune_and_export(
            images,
            labels,
            n_classes,
            dest,
            input_size=input_size,
            epochs=epochs,
            batch_size=batch_size,
            class_weights=class_weights,
            seed=seed,
            threads=self.threads,
            progress=progress,
        )
