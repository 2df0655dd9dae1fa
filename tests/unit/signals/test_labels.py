"""The ImageNet class names: Chinese names and hypernyms for every class."""

from __future__ import annotations

from imgaudit.signals.labels import N_CLASSES, class_names, hypernym_nodes


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
