"""The linear head's fit: a multinomial logistic regression on the shared encoder's descriptors.

Descriptors are centred and scaled, the regression uses balanced class weights, and its C is picked by
stratified cross-validation (log loss) on the training part. The scaler is folded into the saved weights,
so the head reads raw descriptors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)  # bench/classifier.py picks 0.1 on 8 of 10 splits, else 1
CV_FOLDS = 5
MAX_ITER = 2000


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
