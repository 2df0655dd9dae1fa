"""Training a classifier head from a labelled folder and saving it as the next version in the registry.

The linear head: the shared encoder's descriptor of every image (decoded in a thread pool, embedded in
batches), fitted (``fit``) and evaluated on a seeded, stratified held-out split, then **refit on all
images** with the same C for the saved model: the held-out numbers describe the recipe, and the saved head
has seen 25% more examples. Its probabilities are used as they are: on the dev photos (10 held-out splits)
Platt scaling fitted on out-of-fold scores came out with slopes 0.9-1.2 and changed the Brier score by
0.0001, so calibration is checked (Brier, ECE and reliability bins in the metrics) rather than fitted.

The fine-tuned head (``finetune=True``): the whole EfficientNet-Lite0 trained on the training part
(``imgaudit.models.finetune``, through ``heads``), exported to ONNX and evaluated from that file on the
same held-out split with the same metrics. It is *not* refit on all images (that would double a training
measured in minutes): the saved model is the evaluated one.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from imgaudit import __version__
from imgaudit.config import Settings
from imgaudit.errors import DatasetError
from imgaudit.models.classifier_registry import (
    FORMAT_VERSION,
    HEAD_FILE,
    META_FILE,
    ONNX_FILE,
    check_name,
    model_ref,
)
from imgaudit.models.ports import DEFAULT_BATCH_SIZE, DEFAULT_EPOCHS, HeadModels, ImageEncoder
from imgaudit.services.training.dataset import (
    MIN_PER_CLASS,
    Dataset,
    Loaded,
    Progress,
    check_counts,
    class_weights,
    fingerprint,
    load_dataset,
    scan_dataset,
    stratified_split,
)
from imgaudit.services.training.fit import fit_linear
from imgaudit.services.training.metrics import evaluate, positive_class
from imgaudit.services.training.registry import classifiers_dir, commit, promote, staging_dir, write_json


@dataclass
class TrainOptions:
    name: str = "default"
    holdout: float = 0.2
    seed: int = 0
    promote: bool = False
    finetune: bool = False
    epochs: int = DEFAULT_EPOCHS
    batch_size: int = DEFAULT_BATCH_SIZE
    min_per_class: int = MIN_PER_CLASS


@dataclass
class TrainResult:
    ref: str
    path: Path
    meta: dict[str, Any]
    skipped: dict[str, int]
    skipped_examples: dict[str, list[str]]
    outside: int
    promoted: bool

    def as_dict(self) -> dict[str, Any]:
        m = self.meta
        return {
            "model": self.ref,
            "path": str(self.path),
            "kind": m["kind"],
            "classes": m["classes"],
            "pass_classes": m["pass_classes"],
            "dataset": m["dataset"],
            "metrics": m["metrics"],
            "seconds": m["seconds"],
            "skipped": self.skipped,
            "skipped_examples": self.skipped_examples,
            "outside_class_folders": self.outside,
            "promoted": self.promoted,
        }


def train(
    settings: Settings,
    dataset_dir: Path,
    encoder: ImageEncoder,
    options: TrainOptions | None = None,
    progress: Progress | None = None,
    *,
    heads: HeadModels,
) -> TrainResult:
    """Train, evaluate on the held-out split, save as the next version of ``options.name`` (and promote it
    when asked). See the module docstring for what is saved and why; ``heads`` builds and loads the heads
    (``imgaudit.bootstrap.train`` hands in the local ones)."""
    opts = options or TrainOptions()
    check_name(opts.name)
    if opts.epochs < 1 or opts.batch_size < 1:
        raise DatasetError("epochs and batch size must be at least 1")
    t0 = time.perf_counter()
    dataset = scan_dataset(Path(dataset_dir), min_per_class=opts.min_per_class)
    classes = dataset.classes
    index = {c: i for i, c in enumerate(classes)}
    seconds: dict[str, float] = {"scan": time.perf_counter() - t0}
    root = classifiers_dir(settings)
    staging = staging_dir(root, opts.name)
    try:
        trainer = _train_finetuned if opts.finetune else _train_linear
        meta, loaded = trainer(settings, dataset, encoder, heads, opts, index, staging, seconds, progress)
        meta.update(
            format=FORMAT_VERSION,
            name=opts.name,
            classes=classes,
            encoder=encoder.descriptor,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            imgaudit_version=__version__,
            seconds={k: round(v, 3) for k, v in seconds.items()},
        )
        version, path = commit(root, opts.name, staging, meta)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    ref = model_ref(opts.name, version)
    promoted = False
    if opts.promote:
        promote(settings, ref, encoder, heads=heads)
        promoted = True
    return TrainResult(ref, path, meta, dict(loaded.skipped), loaded.examples, dataset.outside, promoted)


def _usable(dataset: Dataset, loaded: Loaded, opts: TrainOptions, index: dict[str, int]) -> np.ndarray:
    counts = Counter(s.label for s in loaded.samples)
    check_counts(dataset.root, dataset.classes, counts, opts.min_per_class, "images (after decoding)")
    return np.array([index[s.label] for s in loaded.samples], dtype=np.int64)


def _dataset_meta(
    dataset: Dataset, loaded: Loaded, y: np.ndarray, train: np.ndarray, test: np.ndarray, opts: TrainOptions
) -> dict[str, Any]:
    return {
        "root": str(dataset.root.resolve()),
        "fingerprint": fingerprint(loaded.samples, loaded.sha256),
        "images": len(loaded.samples),
        "per_class": {c: int((y == i).sum()) for i, c in enumerate(dataset.classes)},
        "skipped": dict(loaded.skipped),
        "split": {"holdout": opts.holdout, "seed": opts.seed, "train": len(train), "held_out": len(test)},
    }


def _train_linear(
    settings: Settings,
    dataset: Dataset,
    encoder: ImageEncoder,
    heads: HeadModels,
    opts: TrainOptions,
    index: dict[str, int],
    staging: Path,
    seconds: dict[str, float],
    progress: Progress | None,
) -> tuple[dict[str, Any], Loaded]:
    """Embed, fit on the training part, score the held-out part, refit on everything, write head.npz."""
    chunks: list[np.ndarray] = []
    t = time.perf_counter()
    loaded = load_dataset(
        dataset,
        settings,
        lambda pixels: chunks.append(encoder.encode(pixels).descriptors),
        batch_size=encoder.batch_size,
        phase="embed",
        progress=progress,
    )
    seconds["embed"] = time.perf_counter() - t
    x = np.concatenate(chunks)[loaded.keep] if chunks else np.zeros((0, 0), np.float32)
    y = _usable(dataset, loaded, opts, index)
    train, test = stratified_split(y, opts.holdout, opts.seed)
    pass_classes = _pass_classes(dataset.classes, settings)
    positive = positive_class(dataset.classes, pass_classes)
    t = time.perf_counter()
    fit = fit_linear(x[train], y[train], len(dataset.classes), seed=opts.seed)
    seconds["fit_cv"] = time.perf_counter() - t
    meta_stub = {"name": opts.name, "version": 0, "kind": "linear", "classes": dataset.classes}
    probs = heads.linear(meta_stub, fit.weights, fit.bias).probabilities(x[test], [])
    metrics = evaluate(y[test], probs, dataset.classes, positive)
    t2 = time.perf_counter()
    final = fit_linear(x, y, len(dataset.classes), seed=opts.seed, c=fit.c)
    seconds["fit_final"] = time.perf_counter() - t2
    seconds["fit"] = time.perf_counter() - t
    np.savez(staging / HEAD_FILE, W=final.weights, b=final.bias)
    meta = {
        "kind": "linear",
        "input": "descriptor",
        "pass_classes": pass_classes,
        "positive_class": positive,
        "metrics": {"evaluated_on": "held_out", **metrics},
        "saved_model": (
            f"refit on all {len(y)} images with the C chosen on the training part; the metrics are those "
            f"of the same recipe trained on the {len(train)} training images and scored on the "
            f"{len(test)} held out"
        ),
        "dataset": _dataset_meta(dataset, loaded, y, train, test, opts),
        "parameters": {
            "model": "multinomial logistic regression on centred, scaled descriptors (folded into W, b)",
            "class_weight": "balanced",
            "C": fit.c,
            **fit.cv,
            "calibration": "none (checked: Brier, ECE, reliability)",
            "input_size": encoder.input_size,
            "decode_max_side": settings.decode.max_side,
        },
    }
    return meta, loaded


def _train_finetuned(
    settings: Settings,
    dataset: Dataset,
    encoder: ImageEncoder,
    heads: HeadModels,
    opts: TrainOptions,
    index: dict[str, int],
    staging: Path,
    seconds: dict[str, float],
    progress: Progress | None,
) -> tuple[dict[str, Any], Loaded]:
    """Decode (kept small), fine-tune on the training part, export, score the held-out part from the file."""
    images: list[np.ndarray] = []
    size = encoder.input_size
    t = time.perf_counter()
    loaded = load_dataset(
        dataset,
        settings,
        lambda pixels: images.extend(heads.training_image(p, size) for p in pixels),
        batch_size=encoder.batch_size,
        phase="decode",
        progress=progress,
    )
    images = [im for im, keep in zip(images, loaded.keep, strict=True) if keep]
    seconds["decode"] = time.perf_counter() - t
    y = _usable(dataset, loaded, opts, index)
    train, test = stratified_split(y, opts.holdout, opts.seed)
    pass_classes = _pass_classes(dataset.classes, settings)
    positive = positive_class(dataset.classes, pass_classes)
    total = opts.epochs * len(train)
    if progress is not None:
        progress("finetune", 0, total)
    report = heads.finetune(
        [images[i] for i in train],
        y[train],
        len(dataset.classes),
        staging / ONNX_FILE,
        input_size=size,
        epochs=opts.epochs,
        batch_size=opts.batch_size,
        class_weights=class_weights(y[train], len(dataset.classes)),
        seed=opts.seed,
        progress=None if progress is None else (lambda n: progress("finetune", n, total)),
    )
    seconds["finetune"] = report.seconds
    seconds["export"] = report.export_seconds
    t = time.perf_counter()
    # Scored from the exported file, so the numbers describe what will run, not the torch model.
    stub = {
        "name": opts.name,
        "version": 0,
        "kind": "finetuned",
        "classes": dataset.classes,
        "parameters": {"input_size": size},
    }
    write_json(staging / META_FILE, stub)
    head = heads.load(staging, encoder_id=None)
    probs = head.probabilities(None, [images[i] for i in test])
    seconds["evaluate"] = time.perf_counter() - t
    metrics = evaluate(y[test], probs, dataset.classes, positive)
    meta = {
        "kind": "finetuned",
        "input": "pixels",
        "pass_classes": pass_classes,
        "positive_class": positive,
        "metrics": {"evaluated_on": "held_out", **metrics},
        "saved_model": (
            f"the evaluated model: fine-tuned on the {len(train)} training images only (not refit on all)"
        ),
        "dataset": _dataset_meta(dataset, loaded, y, train, test, opts),
        "parameters": {
            "model": "EfficientNet-Lite0 fine-tuned end to end, softmax output",
            **report.parameters,
            "train_loss": report.losses,
            "class_weight": "balanced",
            "framing": "center",
        },
    }
    return meta, loaded


def _pass_classes(classes: Sequence[str], settings: Settings) -> list[str]:
    """A guess, recorded for people: the policy itself reads ``moderation.pass_classes``."""
    passing = {p.lower() for p in settings.moderation.pass_classes}
    return [c for c in classes if c.lower() in passing]
