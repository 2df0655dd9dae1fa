"""Classifier heads: dataset scanning, split, metrics, versioned save, registry, hot reload, CLI.

They run the fake visual session on small generated pictures (tests/support/training_pictures.py); the
real bundled network is in tests/models/test_real_classifier.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import typer
from training_pictures import make_dataset, picture
from typer.testing import CliRunner

from imgaudit import bootstrap
from imgaudit.config import Settings
from imgaudit.errors import DatasetError, ModelError, RegistryError
from imgaudit.models.classifier import ClassifierHub, LinearHead, load_head, square_input
from imgaudit.models.classifier_registry import ACTIVE_FILE, parse_ref, read_active, version_dir
from imgaudit.models.visual import VisualEncoder
from imgaudit.services import training
from imgaudit.services.training import TrainOptions
from imgaudit.services.training import dataset as training_dataset
from imgaudit.services.training import fit as training_fit
from imgaudit.services.training import metrics as training_metrics
from imgaudit.testing.fakes import FakeVisualSession, jpeg_bytes, textured_image


@pytest.fixture
def encoder() -> VisualEncoder:
    return VisualEncoder(FakeVisualSession(), batch_size=8)


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "ds")


# -- dataset --------------------------------------------------------------------------------------------


def test_non_images_are_skipped_and_counted(cfg: Settings, encoder: VisualEncoder, dataset: Path) -> None:
    (dataset / "normal" / "notes.txt").write_text("not a picture")
    (dataset / "violate" / "broken.jpg").write_bytes(jpeg_bytes(picture(5, True))[:300])
    (dataset / "normal" / ".DS_Store").write_bytes(b"\0" * 10)  # hidden: not even looked at
    (dataset / "README.md").write_text("outside every class folder")
    result = bootstrap.train(cfg, dataset, encoder)
    assert result.skipped == {"not_an_image": 1, "corrupt": 1}
    assert result.skipped_examples["not_an_image"] == ["normal/notes.txt"]
    assert result.outside == 1
    assert result.meta["dataset"]["images"] == 24


def test_duplicates_and_conflicting_labels_are_dropped(
    cfg: Settings, encoder: VisualEncoder, dataset: Path
) -> None:
    data = (dataset / "normal" / "normal-1.jpg").read_bytes()
    (dataset / "normal" / "copy.jpg").write_bytes(data)
    (dataset / "violate" / "mislabelled.jpg").write_bytes((dataset / "normal" / "normal-2.jpg").read_bytes())
    result = bootstrap.train(cfg, dataset, encoder)
    assert result.skipped == {"duplicate": 1, "conflicting_labels": 2}
    assert result.meta["dataset"]["per_class"] == {"normal": 11, "violate": 12}


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({"normal": 8}, "at least 2"),
        ({"normal": 8, "violate": 2}, "violate (2)"),
        ({"normal": 8, "violate": 0}, "violate (0)"),
    ],
)
def test_too_few_classes_or_images(
    tmp_path: Path, cfg: Settings, encoder: VisualEncoder, layout: dict[str, int], message: str
) -> None:
    for label, n in layout.items():
        (tmp_path / "ds" / label).mkdir(parents=True)
        for i in range(n):
            (tmp_path / "ds" / label / f"{i}.jpg").write_bytes(jpeg_bytes(picture(i, label == "violate")))
    with pytest.raises(DatasetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        bootstrap.train(cfg, tmp_path / "ds", encoder)
    assert not list((cfg.data_dir / "classifiers").glob("*/v*"))


def test_too_few_images_after_decoding(tmp_path: Path, cfg: Settings, encoder: VisualEncoder) -> None:
    ds = make_dataset(tmp_path / "ds", n_violate=3)
    for i in range(3):
        (ds / "violate" / f"junk{i}.png").write_bytes(b"not a png at all")
    with pytest.raises(DatasetError, match=r"after decoding.*violate \(3\)"):
        bootstrap.train(cfg, ds, encoder)


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not a folder"):
        training_dataset.scan_dataset(tmp_path / "nope")


def test_stratified_split_is_seeded_and_keeps_every_class() -> None:
    y = np.array([0] * 50 + [1] * 10 + [2] * 5)
    train, test = training_dataset.stratified_split(y, 0.2, seed=3)
    assert set(train).isdisjoint(test) and len(train) + len(test) == len(y)
    assert np.bincount(y[test]).tolist() == [10, 2, 1]
    again, _ = training_dataset.stratified_split(y, 0.2, seed=3)
    other, _ = training_dataset.stratified_split(y, 0.2, seed=4)
    assert np.array_equal(train, again) and not np.array_equal(train, other)
    with pytest.raises(DatasetError):
        training_dataset.stratified_split(y, 0.0, seed=0)


def test_fingerprint_ignores_location_but_not_labels(tmp_path: Path) -> None:
    a = [
        training_dataset.Sample(tmp_path / "x", "normal/a.jpg", "normal"),
        training_dataset.Sample(tmp_path / "y", "v/b.jpg", "v"),
    ]
    b = [
        training_dataset.Sample(Path("/elsewhere/y"), "v/b.jpg", "v"),
        training_dataset.Sample(Path("/z"), "normal/a.jpg", "normal"),
    ]
    assert training_dataset.fingerprint(a, ["1", "2"]) == training_dataset.fingerprint(b, ["2", "1"])
    relabelled = [training_dataset.Sample(tmp_path / "x", "normal/a.jpg", "v"), a[1]]
    assert training_dataset.fingerprint(a, ["1", "2"]) != training_dataset.fingerprint(relabelled, ["1", "2"])


# -- model and metrics ----------------------------------------------------------------------------------


@pytest.mark.parametrize("n_classes", [2, 3])
def test_folded_scaling_gives_scikit_learns_probabilities(n_classes: int) -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    y = np.arange(60) % n_classes
    x = (rng.normal(size=(60, 1280)) + y[:, None] * 0.3).astype(np.float32)
    fit = training_fit.fit_linear(x, y, n_classes, seed=0, c=0.5)
    z = (x - x.mean(axis=0)) / np.sqrt(np.mean((x - x.mean(axis=0)) ** 2))
    ref = LogisticRegression(C=0.5, class_weight="balanced", max_iter=2000).fit(z, y)
    meta = {"name": "t", "version": 1, "kind": "linear", "classes": [str(i) for i in range(n_classes)]}
    probs = LinearHead(meta, fit.weights, fit.bias).probabilities(x, [])
    np.testing.assert_allclose(probs, ref.predict_proba(z), atol=1e-4)


def test_near_constant_dimensions_do_not_drown_the_signal() -> None:
    """Per-dimension standardisation would turn the tiny-variance dimensions into loud noise."""
    rng = np.random.default_rng(0)
    y = np.arange(40) % 2
    x = np.zeros((40, 1280))
    x[:, :8] = rng.normal(size=(40, 8)) + y[:, None] * 2.0  # the signal
    x[:, 8:] = rng.normal(scale=1e-6, size=(40, 1272))  # near-constant dimensions
    fit = training_fit.fit_linear(x[:30], y[:30], 2, seed=0)
    meta = {"name": "t", "version": 1, "kind": "linear", "classes": ["a", "b"]}
    probs = LinearHead(meta, fit.weights, fit.bias).probabilities(x[30:].astype(np.float32), [])
    assert (probs.argmax(axis=1) == y[30:]).mean() >= 0.9


def test_cross_validation_picks_a_c_from_the_grid() -> None:
    rng = np.random.default_rng(1)
    y = np.arange(40) % 2
    x = rng.normal(size=(40, 1280)) + y[:, None] * 0.5
    fit = training_fit.fit_linear(x, y, 2, seed=0)
    assert fit.c in training_fit.C_GRID
    assert fit.cv["folds"] == 5 and len(fit.cv["cv_log_loss"]) == len(training_fit.C_GRID)


def test_binary_metrics() -> None:
    from sklearn.metrics import roc_auc_score

    y = np.array([0, 0, 0, 1, 1, 1])
    p1 = np.array([0.1, 0.2, 0.6, 0.7, 0.9, 0.4])
    m = training_metrics.evaluate(y, np.stack([1 - p1, p1], axis=1), ["normal", "violate"], "violate")
    assert m["accuracy"] == pytest.approx(4 / 6, abs=1e-4)
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, p1), abs=1e-4)
    assert m["roc_auc_of"] == "violate"
    assert m["brier"] == pytest.approx(np.mean((p1 - y) ** 2), abs=1e-4)
    assert m["confusion"]["matrix"] == [[2, 1], [1, 2]]
    assert m["per_class"]["violate"] == {"precision": 0.6667, "recall": 0.6667, "f1": 0.6667, "support": 3}
    assert sum(b["count"] for b in m["reliability"]) == 6


def test_multiclass_metrics_use_macro_one_vs_rest() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = np.arange(30) % 3
    probs = rng.dirichlet([1, 1, 1], size=30)
    probs[np.arange(30), y] += 1
    probs /= probs.sum(axis=1, keepdims=True)
    m = training_metrics.evaluate(y, probs, ["a", "b", "c"], None)
    assert m["roc_auc_of"] == "macro one-vs-rest"
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr"), abs=1e-4)
    assert m["brier"] == pytest.approx(np.mean(np.sum((probs - np.eye(3)[y]) ** 2, axis=1)), abs=1e-4)


def test_positive_class_is_the_one_not_passing() -> None:
    assert training_metrics.positive_class(["normal", "weapon"], ["normal", "ok"]) == "weapon"
    assert training_metrics.positive_class(["knife", "ok"], ["normal", "ok"]) == "knife"
    assert training_metrics.positive_class(["a", "b", "c"], ["a"]) is None


def test_square_input_is_the_encoders_preprocessing() -> None:
    image = np.asarray(textured_image(3, (130, 90)))
    enc = VisualEncoder(FakeVisualSession(), input_size=96)
    np.testing.assert_array_equal(square_input(image, 96), enc.preprocess(image))


# -- saving and the registry ----------------------------------------------------------------------------


def test_training_saves_a_versioned_head_without_promoting(
    cfg: Settings, encoder: VisualEncoder, dataset: Path
) -> None:
    result = bootstrap.train(cfg, dataset, encoder, TrainOptions(holdout=0.25))
    assert result.ref == "default@v1" and not result.promoted
    vdir = cfg.data_dir / "classifiers" / "default" / "v1"
    assert result.path == vdir and (vdir / "head.npz").is_file()
    meta = json.loads((vdir / "meta.json").read_text())
    assert meta["name"] == "default" and meta["version"] == 1 and meta["kind"] == "linear"
    assert meta["classes"] == ["normal", "violate"] and meta["pass_classes"] == ["normal"]
    assert meta["positive_class"] == "violate"
    assert meta["encoder"] == encoder.descriptor
    assert len(meta["dataset"]["fingerprint"]) == 64
    assert meta["dataset"]["split"] == {"holdout": 0.25, "seed": 0, "train": 18, "held_out": 6}
    assert meta["parameters"]["C"] in training_fit.C_GRID and "refit on all 24" in meta["saved_model"]
    assert {"embed", "fit"} <= set(meta["seconds"]) and meta["imgaudit_version"] and meta["created_at"]
    m = meta["metrics"]
    assert m["accuracy"] >= 0.83 and m["roc_auc"] >= 0.9  # a red disc is easy even for the fake encoder
    assert not (cfg.data_dir / "classifiers" / ACTIVE_FILE).exists()
    again = bootstrap.train(cfg, dataset, encoder)
    assert again.ref == "default@v2"
    assert again.meta["dataset"]["fingerprint"] == meta["dataset"]["fingerprint"]
    assert not [p for p in (cfg.data_dir / "classifiers" / "default").iterdir() if p.name.startswith(".")]


def test_promote_list_rollback(cfg: Settings, encoder: VisualEncoder, dataset: Path) -> None:
    for _ in range(3):
        bootstrap.train(cfg, dataset, encoder)
    bootstrap.train(cfg, dataset, encoder, TrainOptions(name="other"))
    root = cfg.data_dir / "classifiers"
    assert bootstrap.promote(cfg, "default", encoder)["active"] == "default@v3"  # latest by default
    assert bootstrap.promote(cfg, "default@v1", encoder) == {
        "active": "default@v1",
        "previous": "default@v3",
        "changed": True,
    }
    assert bootstrap.promote(cfg, "default@v1", encoder)["changed"] is False
    bootstrap.promote(cfg, "other@v1", encoder)
    rows = training.list_models(cfg)
    assert [r["model"] for r in rows] == ["default@v1", "default@v2", "default@v3", "other@v1"]
    assert [r["model"] for r in rows if r["active"]] == ["other@v1"]
    assert rows[0]["accuracy"] is not None and rows[0]["train"] == 20

    assert bootstrap.rollback(cfg, encoder)["active"] == "default@v1"
    assert bootstrap.rollback(cfg, encoder)["active"] == "default@v3"
    state = read_active(root)
    assert state["active"] == "default@v3" and [h["model"] for h in state["history"]] == ["default@v3"]
    with pytest.raises(RegistryError, match="no previously active"):
        bootstrap.rollback(cfg, encoder)
    with pytest.raises(RegistryError, match="no saved classifier"):
        bootstrap.promote(cfg, "default@v9", encoder)
    with pytest.raises(ModelError, match="invalid classifier"):
        bootstrap.promote(cfg, "../etc", encoder)


def test_train_with_promote(cfg: Settings, encoder: VisualEncoder, dataset: Path) -> None:
    result = bootstrap.train(cfg, dataset, encoder, TrainOptions(name="shop-a", promote=True))
    assert result.promoted and read_active(cfg.data_dir / "classifiers")["active"] == "shop-a@v1"


def test_parse_ref() -> None:
    assert parse_ref("default") == ("default", None)
    assert parse_ref("shop.v2-x@v12") == ("shop.v2-x", 12)
    for bad in ("", "a b", "x@3", "../x", "@v1"):
        with pytest.raises(ModelError):
            parse_ref(bad)


# -- loading and hot reload ------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_hub_follows_promotions_after_the_interval(
    cfg: Settings, encoder: VisualEncoder, dataset: Path
) -> None:
    bootstrap.train(cfg, dataset, encoder)
    bootstrap.train(cfg, dataset, encoder)
    clock = Clock()
    hub = ClassifierHub(cfg.data_dir / "classifiers", encoder.descriptor, reload_every=5.0, clock=clock)
    assert hub.current() is None  # nothing promoted yet
    bootstrap.promote(cfg, "default@v1", encoder)
    assert hub.current() is None  # not looked again within the interval
    clock.now = 5.0
    head = hub.current()
    assert head is not None and head.ref == "default@v1"
    bootstrap.promote(cfg, "default@v2", encoder)
    clock.now = 7.0
    assert hub.current() is head
    clock.now = 10.0
    head2 = hub.current()
    assert head2 is not None and head2.ref == "default@v2"
    clock.now = 20.0
    assert hub.current() is head2  # unchanged file: not reloaded

    images = [np.asarray(picture(i, i % 2 == 1)) for i in range(4)]
    out = encoder.encode(images)
    scores = head2.predict(out.descriptors, images)
    assert [s.model for s in scores] == ["default@v2"] * 4
    assert all(set(s.probabilities) == {"normal", "violate"} for s in scores)
    assert all(sum(s.probabilities.values()) == pytest.approx(1.0, abs=1e-4) for s in scores)

    (cfg.data_dir / "classifiers" / ACTIVE_FILE).unlink()
    clock.now = 30.0
    assert hub.current() is None


def test_hub_reloads_with_a_real_tiny_interval(cfg: Settings, encoder: VisualEncoder, dataset: Path) -> None:
    bootstrap.train(cfg, dataset, encoder, TrainOptions(promote=True))
    bootstrap.train(cfg, dataset, encoder)
    hub = ClassifierHub(cfg.data_dir / "classifiers", encoder.descriptor, reload_every=0.01)
    assert hub.current().ref == "default@v1"  # type: ignore[union-attr]
    bootstrap.promote(cfg, "default@v2", encoder)
    time.sleep(0.02)
    assert hub.current().ref == "default@v2"  # type: ignore[union-attr]


def test_head_for_another_encoder_is_refused(
    cfg: Settings, encoder: VisualEncoder, dataset: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bootstrap.train(cfg, dataset, encoder, TrainOptions(promote=True))
    root = cfg.data_dir / "classifiers"
    other = VisualEncoder(FakeVisualSession(), input_size=256)
    with pytest.raises(ModelError, match=r"trained on .* descriptors but the running encoder makes"):
        load_head(version_dir(root, "default", 1), encoder_id=other.descriptor)
    hub = ClassifierHub(root, other.descriptor, reload_every=1.0)
    with caplog.at_level("ERROR", logger="imgaudit.classifier"):
        assert hub.current() is None
    assert "retrain it" in (hub.error or "") and "continuing without one" in caplog.text
    bootstrap.train(cfg, dataset, encoder)
    with pytest.raises(ModelError, match="running encoder"):
        bootstrap.promote(cfg, "default@v2", other)


def test_broken_head_files_are_refused(cfg: Settings, encoder: VisualEncoder, dataset: Path) -> None:
    bootstrap.train(cfg, dataset, encoder, TrainOptions(promote=True))
    vdir = cfg.data_dir / "classifiers" / "default" / "v1"
    np.savez(vdir / "head.npz", W=np.zeros((3, 1280), np.float32), b=np.zeros(3, np.float32))
    with pytest.raises(ModelError, match="do not fit"):
        load_head(vdir, encoder_id=encoder.descriptor)
    (vdir / "meta.json").write_text("{")
    hub = ClassifierHub(cfg.data_dir / "classifiers", encoder.descriptor)
    assert hub.current() is None and "unreadable" in (hub.error or "")


def test_importing_the_modules_does_not_import_torch() -> None:
    code = (
        "import sys, imgaudit.models.finetune, imgaudit.services.training, imgaudit.models.classifier; "
        "assert 'torch' not in sys.modules and 'sklearn' not in sys.modules, 'heavy import'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- CLI -------------------------------------------------------------------------------------------------


@pytest.fixture
def cli_app(monkeypatch: pytest.MonkeyPatch, encoder: VisualEncoder) -> typer.Typer:
    """train + models as main.py registers them, with the fake encoder behind bootstrap."""
    import imgaudit.bootstrap
    from imgaudit.cli.models import models_app, train_command

    monkeypatch.setattr(imgaudit.bootstrap, "build_encoder", lambda settings: encoder)
    app = typer.Typer()
    app.command("train")(train_command)
    app.add_typer(models_app, name="models")
    return app


def test_cli_train_list_promote_rollback(
    cli_app: typer.Typer, dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMGAUDIT_DATA_DIR", str(tmp_path / "data"))
    runner = CliRunner()
    (dataset / "normal" / "notes.txt").write_text("x")
    r = runner.invoke(cli_app, ["train", str(dataset), "--json"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 1 and rows[0]["event"] == "train" and rows[0]["model"] == "default@v1"
    assert rows[0]["skipped"] == {"not_an_image": 1} and rows[0]["promoted"] is False

    r = runner.invoke(cli_app, ["train", str(dataset), "--name", "shop", "--promote", "--holdout", "0.25"])
    assert r.exit_code == 0, r.output
    for text in ("shop@v1 (linear)", "confusion matrix", "precision", "ROC-AUC", "is now active"):
        assert text in r.stdout
    assert "skipped 1 files (not_an_image 1)" in r.stderr

    r = runner.invoke(cli_app, ["models", "list", "--json"])
    listed = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(x["model"], x["active"]) for x in listed] == [("default@v1", False), ("shop@v1", True)]
    r = runner.invoke(cli_app, ["models", "list"])
    assert r.exit_code == 0 and "shop@v1" in r.stdout and "*" in r.stdout

    r = runner.invoke(cli_app, ["models", "promote", "default", "--json"])
    assert json.loads(r.stdout) == {
        "event": "promote",
        "active": "default@v1",
        "previous": "shop@v1",
        "changed": True,
    }
    r = runner.invoke(cli_app, ["models", "rollback"])
    assert r.exit_code == 0 and "shop@v1 is now active (was default@v1)" in r.stdout
    r = runner.invoke(cli_app, ["models", "rollback"])
    assert r.exit_code == 1 and "no previously active classifier" in r.stderr
    r = runner.invoke(cli_app, ["models", "promote", "nope"])
    assert r.exit_code == 1 and "no saved classifier named 'nope'" in r.stderr


def test_cli_train_refuses_a_bad_dataset(cli_app: typer.Typer, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("IMGAUDIT_DATA_DIR", str(tmp_path / "data"))
    (tmp_path / "ds" / "only").mkdir(parents=True)
    r = CliRunner().invoke(cli_app, ["train", str(tmp_path / "ds")])
    assert r.exit_code == 1 and "at least 2" in r.stderr
