"""Classifier heads on the real bundled network: a linear head, and a one-epoch fine-tune exported to ONNX."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from training_pictures import make_dataset, picture, plain_picture

from imgaudit import bootstrap
from imgaudit.config import Settings
from imgaudit.models.classifier import ClassifierHub, FinetunedHead, LinearHead, load_head
from imgaudit.models.visual import VisualEncoder
from imgaudit.services.training import TrainOptions


@pytest.mark.model
def test_linear_head_on_the_real_encoder(tmp_path: Path, cfg: Settings, real_encoder: VisualEncoder) -> None:
    ds = make_dataset(tmp_path / "ds", n_normal=16, n_violate=16, size=(200, 150), draw=plain_picture)
    result = bootstrap.train(cfg, ds, real_encoder, TrainOptions(holdout=0.25, promote=True))
    m = result.meta["metrics"]
    assert m["accuracy"] >= 0.875 and m["roc_auc"] >= 0.95, m
    hub = ClassifierHub(cfg.data_dir / "classifiers", real_encoder.descriptor)
    head = hub.current()
    assert isinstance(head, LinearHead)
    images = [np.asarray(plain_picture(5000 + i, i % 2 == 1, (200, 150))) for i in range(6)]
    scores = head.predict(real_encoder.encode(images).descriptors, images)
    assert [s.probabilities["violate"] > 0.5 for s in scores] == [i % 2 == 1 for i in range(6)]


@pytest.mark.model
def test_finetune_exports_a_working_onnx_model(
    tmp_path: Path, cfg: Settings, real_encoder: VisualEncoder
) -> None:
    ds = make_dataset(tmp_path / "ds", n_normal=8, n_violate=8, size=(160, 120))
    start = time.perf_counter()
    result = bootstrap.train(
        cfg, ds, real_encoder, TrainOptions(finetune=True, epochs=1, batch_size=8, holdout=0.25)
    )
    assert time.perf_counter() - start < 60
    vdir = result.path
    assert (vdir / "model.onnx").is_file() and not (vdir / "head.npz").exists()
    meta = result.meta
    assert meta["kind"] == "finetuned" and meta["parameters"]["epochs"] == 1
    assert meta["dataset"]["split"]["held_out"] == 4 and meta["metrics"]["accuracy"] is not None
    head = load_head(vdir, encoder_id=real_encoder.descriptor)
    assert isinstance(head, FinetunedHead)
    images = [np.asarray(picture(7000 + i, i % 2 == 1, (160, 120))) for i in range(5)]
    probs = head.probabilities(None, images)
    assert probs.shape == (5, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    scores = head.predict(None, images)
    assert scores[0].model == "default@v1" and set(scores[0].probabilities) == {"normal", "violate"}
