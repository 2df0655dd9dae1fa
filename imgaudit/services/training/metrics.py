"""How a trained head is judged on the held-out split: accuracy, per-class scores, ROC-AUC, and
calibration (Brier, ECE, reliability bins) checked rather than fitted."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

RELIABILITY_BINS = 10


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
