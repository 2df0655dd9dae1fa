"""The label bridge: label prompts and class-probability vectors in the text space, with a fake encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from probabilities import peaked

from imgaudit.label_space import BASELINE, LabelConfig, LabelSpace, label_prompts
from imgaudit.signals.labels import N_CLASSES, class_names, hypernym_nodes
from imgaudit.testing.fakes import FakeTextEncoder

DIM = FakeTextEncoder.dim


# ---- label prompts -----------------------------------------------------------------------------


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
