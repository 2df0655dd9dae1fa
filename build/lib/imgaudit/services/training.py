"""Training classifier heads from a labelled folder, and the registry of saved heads.

``DATASET_DIR/<label>/**/<image>``: one folder per class. Every file is decoded exactly as ingest decodes
it (same limits, same failures); what is not an image is skipped with a counted reason, as are byte-
identical copies (a copy on both sides of the split would flatter the held-out numbers).

The linear head: the shared encoder's descriptor of every image (decoded in a thread pool, embedded in
batches), centred and scaled, then a multinomial logistic regression with balanced class weights, its C picked
by stratified cross-validation (log loss) on the training part. It is evaluated on a seeded, stratified
held-out split, then **refit on all images** with the same C for the saved model: the held-out numbers
describe the recipe, and the saved head has seen 25% more examples. Its probabilities are used as they
are: on the dev photos (10 held-out splits) Platt scaling fitted on out-of-fold scores came out with slopes
0.9-1.2 and changed the Brier score by 0.0001, so calibration is checked (Brier, ECE and reliability bins in
the metrics) rather than fitted.

The fine-tuned head (``finetune=True``): the whole EfficientNet-Lite0 trained on the training part
(``imgaudit.models.finetune``), exported to ONNX and evaluated from that file on the same held-out split
with the same metrics. It is *not* refit on all images (that would double a training measured in minutes):
the saved model is the evaluated one.

Registry: ``<data_dir>/classifiers/<name>/v<N>/`` (immutable once written), and ``active.json`` with the
active head and the stack of activations that ``rollback`` pops. Writes of ``active.json`` are atomic
(temporary file + ``os.replace``) under a lock file, so a worker's ``ClassifierHub`` never reads half a file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from imgaudit import __version__
from imgaudit.config import Settings
from imgaudit.errors import ImgauditError, MediaError, ModelError, TooLarge
from imgaudit.media.decode import decode
from imgaudit.models import finetune as ft
from imgaudit.models.classifier import (
    ACTIVE_FILE,
    FORMAT_VERSION,
    HEAD_FILE,
    META_FILE,
    ONNX_FILE,
    Head,
    LinearHead,
    check_name,
    load_head,
    model_ref,
    parse_ref,
    read_active,
    read_meta,
    version_dir,
    versions,
)
from imgaudit.models.visual import VisualEncoder, descriptor_id
from imgaudit.types import Decoded

log = logging.getLogger("imgaudit.training")

MIN_PER_CLASS = 5  # fewer cannot give a held-out example and a cross-validated C for every class
C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)  # bench/classifier.py picks 0.1 on 8 of 10 splits, else 1
CV_FOLDS = 5
MAX_ITER = 2000
RELIABILITY_BINS = 10
EXAMPLES_PER_REASON = 5

Progress = Callable[[str, int, int], None]
"""``progress(phase, advance, total)``: phase is "embed", "decode" or "finetune"."""


class DatasetError(ImgauditError):
    """The training set cannot be used."""

    reason = "dataset"


class RegistryError(ImgauditError):
    """The classifier registry refused the operation."""

    reason = "registry"


def classifiers_dir(settings: Settings) -> Path:
    return settings.data_dir / "classifiers"


# -- the dataset -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    path: Path
    rel: str  # relative to the dataset folder, POSIX separators
    label: str


@dataclass
class Dataset:
    root: Path
    samples: list[Sample]
    classes: list[str]
    outside: int = 0  # files directly in the dataset folder, outside every class folder


def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def scan_dataset(root: Path, *, min_per_class: int = MIN_PER_CLASS) -> Dataset:
    """List ``root/<label>/**`` (hidden files and folders ignored); refuse too few classes or files."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder: expected DATASET_DIR/<label>/<images>")
    samples: list[Sample] = []
    outside = 0
    labels = []
    for child in sorted(root.iterdir()):
        if child.name.startswith("."):
            continue
        if not child.is_dir():
            outside += 1
            continue
        labels.append(child.name)
        for path in sorted(child.rglob("*")):
            rel = path.relative_to(root)
            if path.is_file() and not _hidden(rel):
                samples.append(Sample(path, rel.as_posix(), child.name))
    counts = Counter(s.label for s in samples)
    _check_counts(root, labels, counts, min_per_class, "files")
    return Dataset(root, samples, sorted(labels), outside)


def _check_counts(root: Path, labels: Sequence[str], counts: Counter[str], minimum: int, what: str) -> None:
    if len(labels) < 2:
        raise DatasetError(
            f"{root} has {len(labels)} class folder(s) ({', '.join(labels) or 'none'}): training needs at "
            "least 2, e.g. DATASET_DIR/normal/ and DATASET_DIR/violate/"
        )
    short = {label: counts.get(label, 0) for label in labels if counts.get(label, 0) < minimum}
    if short:
        listed = ", ".join(f"{k} ({v})" for k, v in sorted(short.items()))
        raise DatasetError(f"every class needs at least {minimum} usable {what}; too few in: {listed}")


@dataclass
class Loaded:
    """What decoding left usable, in dataset order. ``keep`` masks what was handed to ``consume``."""

    samples: list[Sample] = field(default_factory=list)
    sha256: list[str] = field(default_factory=list)
    keep: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    skipped: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, reason: str, rel: str) -> None:
        self.skipped[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < EXAMPLES_PER_REASON:
            shown.append(rel)


def _read_and_decode(sample: Sample, settings: Settings) -> Decoded | ImgauditError | OSError:
    try:
        size = sample.path.stat().st_size
        if size > settings.fetch.max_bytes:
            raise TooLarge(f"{size} bytes > fetch.max_bytes {settings.fetch.max_bytes}")
        return decode(
            sample.path.read_bytes(), max_pixels=settings.decode.max_pixels, max_side=settings.decode.max_side
        )
    except (MediaError, OSError) as exc:
        return exc


def _decoded_batches(
    samples: Sequence[Sample], settings: Settings, batch_size: int, pool: ThreadPoolExecutor
) -> Iterator[list[tuple[Sample, Decoded | ImgauditError | OSError]]]:
    """Batches in order, the next one decoding in the pool while the caller works on this one."""
    batches = [samples[i : i + batch_size] for i in range(0, len(samples), batch_size)]

    def submit(batch: Sequence[Sample]) -> list[Future[Decoded | ImgauditError | OSError]]:
        return [pool.submit(_read_and_decode, s, settings) for s in batch]

    ahead = submit(batches[0]) if batches else []
    for i, batch in enumerate(batches):
        current, ahead = ahead, (submit(batches[i + 1]) if i + 1 < len(batches) else [])
        yield list(zip(batch, (f.result() for f in current), strict=True))


def load_dataset(
    dataset: Dataset,
    settings: Settings,
    consume: Callable[[list[np.ndarray]], None],
    *,
    batch_size: int,
    phase: str,
    progress: Progress | None = None,
) -> Loaded:
    """Decode every sample (in a thread pool) and hand the usable pixels to ``consume`` batch by batch;
    record why the others were skipped. Byte-identical files are used once; the same bytes under two
    labels are dropped from both, being evidence of nothing."""
    loaded = Loaded()
    first_label: dict[str, str] = {}
    conflicted: set[str] = set()
    consumed: list[tuple[Sample, str]] = []
    total = len(dataset.samples)
    if progress is not None:
        progress(phase, 0, total)  # the phase starts now (for rates and ETAs), not after its first batch
    with ThreadPoolExecutor(max_workers=ft.cpu_count()) as pool:
        for batch in _decoded_batches(dataset.samples, settings, batch_size, pool):
            pixels = []
            for sample, result in batch:
                if isinstance(result, ImgauditError):
                    loaded.skip(result.reason, sample.rel)
                elif isinstance(result, OSError):
                    loaded.skip("unreadable", sample.rel)
                elif result.sha256 in first_label:
                    same = first_label[result.sha256] == sample.label
                    if not same:
                        conflicted.add(result.sha256)
                    loaded.skip("duplicate" if same else "conflicting_labels", sample.rel)
                else:
                    first_label[result.sha256] = sample.label
                    consumed.append((sample, result.sha256))
                    pixels.append(result.pixels)
            if pixels:
                consume(pixels)
            if progress is not None:
                progress(phase, len(batch), total)
    loaded.keep = np.array([h not in conflicted for _, h in consumed], dtype=bool)
    for sample, h in consumed:
        if h in conflicted:
            loaded.skip("conflicting_labels", sample.rel)
        else:
            loaded.samples.append(sample)
            loaded.sha256.append(h)
    return loaded


def fingerprint(samples: Sequence[Sample], sha256: Sequence[str]) -> str:
    """sha256 over the sorted (relative path, file sha256, label) lines: the same files with the same
    labels give the same fingerprint wherever the folder lives."""
    lines = sorted(f"{s.rel}\t{h}\t{s.label}\n" for s, h in zip(samples, sha256, strict=True))
    return hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()


def stratified_split(labels: np.ndarray, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class, a seeded shuffle and ``round(n * holdout)`` held out (at least 1, and at least 2 left
    to train on). Returns sorted (train, held-out) indices."""
    if not 0 < holdout < 1:
        raise DatasetError(f"holdout must be between 0 and 1, got {holdout}")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_hold = min(max(1, round(len(idx) * holdout)), len(idx) - 2)
        if n_hold < 1:
            raise DatasetError("every class needs at least 3 images for a held-out split")
        test.append(idx[:n_hold])
        train.append(idx[n_hold:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def class_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """scikit-learn's "balanced" weights: n / (k * count)."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    return len(labels) / (n_classes * np.maximum(counts, 1))


# -- the linear head -------------------------------------------------------------------------------------


@dataclass
class LinearFit:
    weights: np.ndarray  # (k, d): the scaler folded in, so the head reads raw descriptors
    bias: np.ndarray  # (k,)
    c: float
    cv: dict[str, Any]


def _logistic(c: float, warm_start: bool = False) -> Any:
    from sklearn.linear_model import LogisticRegression

    # lbfgs on more than two classes is the multinomial (softmax) model.
    return LogisticRegression(C=c, class_weight="balanced", max_iter=MAX_ITER, warm_start=warm_start)


def _as_softmax(model: Any, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    coef, intercept = np.asarray(model.coef_, np.float64), np.asarray(model.intercept_, np.float64)
    if n_classes == 2 and coef.shape[0] == 1:  # binary: sigmoid(z) == softmax([0, z])[1]
        coef = np.vstack([np.zeros_like(coef), coef])
        intercept = np.concatenate([[0.0], intercept])
    return coef, intercept


def choose_c(z: np.ndarray, y: np.ndarray, n_classes: int, seed: int) -> tuple[float, dict[str, Any]]:
    """C with the lowest cross-validated log loss (ties: the smaller C)."""
    from sklearn.metrics import log_loss
    from sklearn.model_selection import StratifiedKFold

    folds = min(CV_FOLDS, int(np.bincount(y, minlength=n_classes).min()))
    if folds < 2:
        return 1.0, {"folds": 0, "note": "too few images per class to cross-validate; C = 1"}
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    losses = np.zeros((len(C_GRID), folds))
    for f, (tr, va) in enumerate(splitter.split(z, y)):
        # Along increasing C, each fit starts from the previous solution (as LogisticRegressionCV does).
        model = _logistic(C_GRID[0], warm_start=True)
        for i, c in enumerate(C_GRID):
            model.set_params(C=c).fit(z[tr], y[tr])
            losses[i, f] = log_loss(y[va], model.predict_proba(z[va]), labels=list(range(n_classes)))
    scores = losses.mean(axis=1).tolist()
    best = int(np.argmin(scores))
    return C_GRID[best], {
        "folds": folds,
        "C_grid": list(C_GRID),
        "cv_log_loss": [round(s, 5) for s in scores],
    }


def fit_linear(
    x: np.ndarray, y: np.ndarray, n_classes: int, *, seed: int, c: float | None = None
) -> LinearFit:
    """Centre, scale, pick C (unless given), fit; return softmax weights over the *raw* descriptors.

    One global scale factor (the RMS of the centred features), not per-dimension standardisation: GeM
    descriptors have near-constant dimensions that standardising blows up into noise (on plain generated
    pictures it took cross-validated accuracy from 1.0 to 0.53), while on the dev photos both scored the
    same. The global factor only makes the C grid mean the same thing whatever the encoder.
    """
    mean = x.mean(axis=0, dtype=np.float64)
    scale = max(float(np.sqrt(np.mean((x - mean) ** 2))), 1e-12)
    z = (x - mean) / scale
    cv: dict[str, Any] = {}
    if c is None:
        c, cv = choose_c(z, y, n_classes, seed)
    model = _logistic(c).fit(z, y)
    w, b = _as_softmax(model, n_classes)
    # softmax(((x - mean) / scale) @ w.T + b) == softmax(x @ (w / scale).T + (b - (w / scale) @ mean))
    w_raw = w / scale
    b_raw = b - w_raw @ mean
    return LinearFit(w_raw.astype(np.float32), b_raw.astype(np.float32), float(c), cv)


# -- metrics ---------------------------------------------------------------------------------------------


def positive_class(classes: Sequence[str], pass_classes: Sequence[str]) -> str | None:
    """The violating class of a two-class head (ROC-AUC is of that class); None with more classes."""
    if len(classes) != 2:
        return None
    passing = {p.lower() for p in pass_classes}
    bad = [c for c in classes if c.lower() not in passing]
    return bad[0] if len(bad) == 1 else classes[1]


def evaluate(
    y: np.ndarray, probs: np.ndarray, classes: Sequence[str], positive: str | None
) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1, ROC-AUC (binary: of the violating class; else macro
    one-vs-rest), confusion matrix, log loss, Brier score and a reliability table with its ECE.

    Brier: binary, the mean squared error of P(violating class); more classes, the mean over images of
    the summed squared error of the probability vector. Reliability: binary, P(violating) against how
    often the image is that class; more classes, the top probability against how often it is right.
    """
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        log_loss,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    k = len(classes)
    labels = list(range(k))
    pred = probs.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    onehot = np.eye(k)[y]
    if positive is not None:
        pos = list(classes).index(positive)
        score, hit = probs[:, pos], (y == pos).astype(np.float64)
        auc = float(roc_auc_score(hit, score)) if 0 < hit.sum() < len(hit) else None
        brier = float(np.mean((score - hit) ** 2))
        auc_of = positive
    else:
        score, hit = probs.max(axis=1), (pred == y).astype(np.float64)
        try:
            auc = float(roc_auc_score(y, probs, multi_class="ovr", average="macro", labels=labels))
        except ValueError:  # a class absent from the held-out part
            auc = None
        brier = float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))
        auc_of = "macro one-vs-rest"
    bins, ece = [], 0.0
    edges = np.linspace(0.0, 1.0, RELIABILITY_BINS + 1)
    which = np.clip(np.digitize(score, edges[1:-1]), 0, RELIABILITY_BINS - 1)
    for b in range(RELIABILITY_BINS):
        m = which == b
        if m.any():
            gap = abs(float(score[m].mean()) - float(hit[m].mean()))
            ece += m.mean() * gap
            bins.append(
                {
                    "range": [round(edges[b], 2), round(edges[b + 1], 2)],
                    "predicted": round(float(score[m].mean()), 4),
                    "observed": round(float(hit[m].mean()), 4),
                    "count": int(m.sum()),
                }
            )
    return {
        "accuracy": round(float(accuracy_score(y, pred)), 4),
        "roc_auc": None if auc is None else round(auc, 4),
        "roc_auc_of": auc_of,
        "brier": round(brier, 4),
        "log_loss": round(float(log_loss(y, np.clip(probs, 1e-7, 1), labels=labels)), 4),
        "ece": round(float(ece), 4),
        "per_class": {
            c: {
                "precision": round(float(precision[i]), 4),
                "recall": round(float(recall[i]), 4),
                "f1": round(float(f1[i]), 4),
                "support": int(support[i]),
            }
            for i, c in enumerate(classes)
        },
        "confusion": {
            "labels": list(classes),
            "matrix": confusion_matrix(y, pred, labels=labels).tolist(),  # rows: true, columns: predicted
        },
        "reliability": bins,
    }


# -- training --------------------------------------------------------------------------------------------


@dataclass
class TrainOptions:
    name: str = "default"
    holdout: float = 0.2
    seed: int = 0
    promote: bool = False
    finetune: bool = False
    epochs: int = ft.DEFAULT_EPOCHS
    batch_size: int = ft.DEFAULT_BATCH_SIZE
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
    encoder: VisualEncoder,
    options: TrainOptions | None = None,
    progress: Progress | None = None,
) -> TrainResult:
    """Train, evaluate on the held-out split, save as the next version of ``options.name`` (and promote it
    when asked). See the module docstring for what is saved and why."""
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
    staging = _staging_dir(root, opts.name)
    try:
        trainer = _train_finetuned if opts.finetune else _train_linear
        meta, loaded = trainer(settings, dataset, encoder, opts, index, staging, seconds, progress)
        meta.update(
            format=FORMAT_VERSION,
            name=opts.name,
            classes=classes,
            encoder=descriptor_id(encoder),
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            imgaudit_version=__version__,
            seconds={k: round(v, 3) for k, v in seconds.items()},
        )
        version, path = _commit(root, opts.name, staging, meta)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    ref = model_ref(opts.name, version)
    promoted = False
    if opts.promote:
        promote(settings, ref, encoder)
        promoted = True
    return TrainResult(ref, path, meta, dict(loaded.skipped), loaded.examples, dataset.outside, promoted)


def _usable(dataset: Dataset, loaded: Loaded, opts: TrainOptions, index: dict[str, int]) -> np.ndarray:
    counts = Counter(s.label for s in loaded.samples)
    _check_counts(dataset.root, dataset.classes, counts, opts.min_per_class, "images (after decoding)")
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
    encoder: VisualEncoder,
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
    probs = LinearHead(meta_stub, fit.weights, fit.bias).probabilities(x[test], [])
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
    encoder: VisualEncoder,
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
        lambda pixels: images.extend(ft.shrink_for_training(p, size) for p in pixels),
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
    report = ft.finetune_and_export(
        [images[i] for i in train],
        y[train],
        len(dataset.classes),
        staging / ONNX_FILE,
        input_size=size,
        epochs=opts.epochs,
        batch_size=opts.batch_size,
        class_weights=class_weights(y[train], len(dataset.classes)),
        seed=opts.seed,
        threads=settings.models.threads,
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
    _write_json(staging / META_FILE, stub)
    head = load_head(staging, encoder_id=None, threads=settings.models.threads)
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


# -- saving ----------------------------------------------------------------------------------------------


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Temporary file, fsync, rename: readers see the old file or the new one, never a part."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, ensure_ascii=False, indent=2, default=str)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _staging_dir(root: Path, name: str) -> Path:
    folder = root / check_name(name)
    folder.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".staging-", dir=folder))


def _commit(root: Path, name: str, staging: Path, meta: dict[str, Any]) -> tuple[int, Path]:
    """Give the staged files the next version number by renaming the folder: a version appears whole or
    not at all, and two trainings finishing together get different numbers."""
    for _ in range(100):
        version = (versions(root, name) or [0])[-1] + 1
        meta["version"] = version
        _write_json(staging / META_FILE, meta)
        target = version_dir(root, name, version)
        try:
            os.rename(staging, target)
        except OSError:
            if target.exists():
                continue
            raise
        return version, target
    raise RegistryError(f"could not allocate a version for {name}")


# -- the registry ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def _registry_lock(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _summary(meta: dict[str, Any]) -> dict[str, Any]:
    m = meta.get("metrics", {})
    split = meta.get("dataset", {}).get("split", {})
    return {
        "kind": meta.get("kind"),
        "classes": meta.get("classes"),
        "created_at": meta.get("created_at"),
        "train": split.get("train"),
        "held_out": split.get("held_out"),
        "accuracy": m.get("accuracy"),
        "roc_auc": m.get("roc_auc"),
        "brier": m.get("brier"),
        "encoder": meta.get("encoder"),
    }


def list_models(settings: Settings) -> list[dict[str, Any]]:
    """Every saved version, oldest first per name, with its held-out metrics and whether it is active."""
    root = classifiers_dir(settings)
    if not root.is_dir():
        return []
    active = read_active(root).get("active")
    rows = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            found = versions(root, folder.name)
        except ModelError:
            continue
        for v in found:
            ref = model_ref(folder.name, v)
            row: dict[str, Any] = {"model": ref, "name": folder.name, "version": v, "active": ref == active}
            try:
                row.update(_summary(read_meta(version_dir(root, folder.name, v))))
            except ModelError as exc:
                row["error"] = exc.message
            rows.append(row)
    return rows


def _resolve(root: Path, ref: str) -> str:
    name, version = parse_ref(ref)
    if version is None:
        found = versions(root, name)
        if not found:
            raise RegistryError(f"no saved classifier named {name!r} (see `imgaudit models list`)")
        version = found[-1]
    if not (version_dir(root, name, version) / META_FILE).is_file():
        raise RegistryError(f"no saved classifier {model_ref(name, version)} (see `imgaudit models list`)")
    return model_ref(name, version)


def _check_loads(root: Path, ref: str, encoder: VisualEncoder | None, settings: Settings) -> Head:
    """Load the head as a worker would, so a promotion that workers would refuse is refused here."""
    name, version = parse_ref(ref)
    assert version is not None
    return load_head(
        version_dir(root, name, version),
        encoder_id=None if encoder is None else descriptor_id(encoder),
        threads=settings.models.threads,
    )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def promote(settings: Settings, ref: str, encoder: VisualEncoder | None = None) -> dict[str, Any]:
    """Make ``NAME[@vN]`` (default: the latest version) the active head; running workers pick it up
    within ``moderation.reload_every`` seconds. Refused if the head would be refused by the workers."""
    root = classifiers_dir(settings)
    with _registry_lock(root):
        target = _resolve(root, ref)
        _check_loads(root, target, encoder, settings)
        state = read_active(root)
        previous = state.get("active")
        if previous == target:
            return {"active": target, "previous": previous, "changed": False}
        history = _history(state)
        history.append({"model": target, "at": _now(), "action": "promote"})
        _write_json(root / ACTIVE_FILE, {"active": target, "history": history, "updated_at": _now()})
    log.info("classifier %s promoted (was %s)", target, previous)
    return {"active": target, "previous": previous, "changed": True}


def rollback(settings: Settings, encoder: VisualEncoder | None = None) -> dict[str, Any]:
    """Re-activate the previously active head (the activation history is a stack: each rollback goes one
    further back)."""
    root = classifiers_dir(settings)
    with _registry_lock(root):
        state = read_active(root)
        history = _history(state)
        current = state.get("active")
        if history and history[-1]["model"] == current:
            history.pop()
        if not history:
            raise RegistryError("no previously active classifier to roll back to")
        target = history[-1]["model"]
        try:
            _resolve(root, target)
            _check_loads(root, target, encoder, settings)
        except ImgauditError as exc:
            raise RegistryError(f"cannot roll back to {target}: {exc.message}") from exc
        history[-1] = {"model": target, "at": _now(), "action": "rollback"}
        _write_json(root / ACTIVE_FILE, {"active": target, "history": history, "updated_at": _now()})
    log.info("classifier rolled back from %s to %s", current, target)
    return {"active": target, "previous": current, "changed": True}


def _history(state: dict[str, Any]) -> list[dict[str, Any]]:
    history = state.get("history") or []
    return [h for h in history if isinstance(h, dict) and isinstance(h.get("model"), str)]
