"""The training set: ``DATASET_DIR/<label>/**/<image>``, one folder per class.

Every file is decoded exactly as ingest decodes it (same limits, same failures); what is not an image is
skipped with a counted reason, as are byte-identical copies (a copy on both sides of the split would
flatter the held-out numbers). Also the seeded, stratified held-out split and the class weights.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imgaudit.config import Settings
from imgaudit.cpus import cpu_count
from imgaudit.errors import DatasetError, ImgauditError, MediaError, TooLarge
from imgaudit.media.decode import decode
from imgaudit.types import Decoded

MIN_PER_CLASS = 5  # fewer cannot give a held-out example and a cross-validated C for every class
EXAMPLES_PER_REASON = 5

Progress = Callable[[str, int, int], None]
"""``progress(phase, advance, total)``: phase is "embed", "decode" or "finetune"."""


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
    check_counts(root, labels, counts, min_per_class, "files")
    return Dataset(root, samples, sorted(labels), outside)


def check_counts(root: Path, labels: Sequence[str], counts: Counter[str], minimum: int, what: str) -> None:
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
    with ThreadPoolExecutor(max_workers=cpu_count()) as pool:
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
