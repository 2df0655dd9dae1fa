"""Pixels into the text space: the label bridge for cross-modal search.

Without image-text (CLIP) weights, what the pixels say reaches a Chinese or English query through words.
The visual encoder's ImageNet-1k probabilities are mapped into the text embedding space as a probability-
weighted mix of *label vectors*, each the mean embedding of the class's names in English and Chinese
written into a few prompts. What each choice bought is measured by ``bench/search.py`` (ablation there):

- Chinese names (``signals/data/imagenet_zh.tsv``) carry most of the gain, for Chinese queries and, as a
  second view of each label, for English ones; prompt templates and English synonyms add a little;
- only the 20 most probable classes count, with probabilities flattened (square root): a 1000-way
  softmax spreads noise over hundreds of classes, and an over-confident top-1 is often wrong;
- WordNet parents ("dog", "狗" for the 118 dog breeds) get the *summed* probability of their classes:
  short queries use the generic word, and "some dog" is often far surer than any one breed.
Tried and left off by default (no better on the dev photos): centring the label vectors, "a type of
{parent}" prompts, GPT visual descriptions as extra prompts.

The label vectors are embedded once per encoder and cached under ``cache_dir``: this module holds state
and touches the disk, so it sits above the pure ``signals`` and the ``models``, not among them.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from imgaudit.errors import ConfigError
from imgaudit.fsio import atomic_path
from imgaudit.signals.labels import N_CLASSES, class_names, hypernym_nodes

LABEL_SPACE_VERSION = 1  # bump when the way label texts become vectors changes


class TextSpace(Protocol):
    """What the label space needs of a text encoder: a narrow port that
    :class:`imgaudit.models.ports.TextEncoder` satisfies, so a twin need not embed queries."""

    @property
    def name(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def passages(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass(frozen=True, slots=True)
class LabelConfig:
    """How label texts are written and how an image's probabilities are mixed (see module docstring).

    Defaults are the best setting measured by ``bench/search.py`` on the dev photos.
    """

    english: str = "rich"  # "clean": the short name only; "rich": + synonyms and the GPT name
    chinese: bool = True  # Chinese name + everyday synonyms, embedded as their own prompts
    templates_en: tuple[str, ...] = ("a photo of a {}.", "{}")
    templates_zh: tuple[str, ...] = ("一张{}的照片。", "{}")
    kind_prompts: bool = False  # + "a photo of a {name}, a type of {parent}" in both languages
    descriptions: bool = False  # + the first sentence of a visual description, as its own prompt
    top_k: int = 20  # classes kept per image (the tail of a 1000-way softmax is mostly noise)
    power: float = 0.5  # probabilities ** power before mixing: flattens an over-confident top-1
    center: bool = False  # remove the mean label vector (measured: no better, so off)
    hypernym_weight: float = 0.5  # weight of the WordNet parents, each with the summed mass of its classes


BASELINE = LabelConfig(
    english="clean",
    chinese=False,
    templates_en=("{}",),
    templates_zh=(),
    top_k=N_CLASSES,
    power=1.0,
    center=False,
    hypernym_weight=0.0,
)


KIND_TEMPLATE_EN = "a photo of a {}, a type of {}."
KIND_TEMPLATE_ZH = "一张{}的照片，一种{}。"


def _prompts(config: LabelConfig, english: str, chinese: str) -> list[str]:
    texts = [t.format(english) for t in config.templates_en]
    if config.chinese and chinese:
        texts += [t.format(chinese) for t in config.templates_zh]
    return texts


def label_prompts(config: LabelConfig) -> list[list[str]]:
    """For each class, the texts whose normalised embeddings are averaged into its label vector."""
    out = []
    for c in class_names():
        if config.english == "clean":
            en = c.english
        elif config.english == "rich":
            parts = [c.english, *c.synonyms]
            if c.gpt.lower() not in (p.lower() for p in parts):
                parts.append(c.gpt)
            en = ", ".join(parts)
        else:
            raise ConfigError(f"unknown english label style {config.english!r} (clean or rich)")
        zh = "、".join(dict.fromkeys([c.chinese, *c.chinese_synonyms]))
        texts = _prompts(config, en, zh)
        if config.kind_prompts and c.hypernyms:
            # CLIP's trick ("a photo of a {}, a type of bird"): the parent word pulls a rare name towards
            # the everyday category it belongs to.
            hyp_en, hyp_zh = c.hypernyms[0]
            texts.append(KIND_TEMPLATE_EN.format(c.english, hyp_en))
            if config.chinese:
                texts.append(KIND_TEMPLATE_ZH.format(c.chinese, hyp_zh))
        if config.descriptions and c.description:
            texts.append(c.description)
        out.append(texts)
    return out


def _l2n(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


def _embed_groups(encoder: TextSpace, groups: list[list[str]]) -> np.ndarray:
    """One vector per group: the normalised mean of its texts' embeddings (prompt ensembling)."""
    flat = [t for g in groups for t in g]
    vecs = encoder.passages(flat) if flat else np.zeros((0, encoder.dim), np.float32)
    out = np.zeros((len(groups), encoder.dim), np.float32)
    pos = 0
    for i, g in enumerate(groups):
        if g:
            out[i] = vecs[pos : pos + len(g)].mean(axis=0)
        pos += len(g)
    return _l2n(out)


class LabelSpace:
    """The label bridge: ImageNet probabilities -> one L2-normalised vector in the text space.

    The (1000 + H, dim) matrix of label and hypernym vectors is embedded once and cached as ``.npy`` in
    ``cache_dir``; the file name carries a hash of every label text and the encoder's name, so editing
    the TSV, the templates or the model gives a new file instead of stale vectors.
    """

    def __init__(self, encoder: TextSpace, cache_dir: Path | None, config: LabelConfig | None = None) -> None:
        self.encoder = encoder
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else None
        self.config = config or LabelConfig()
        self._lock = threading.Lock()
        self._labels: np.ndarray | None = None
        self._hyper: np.ndarray | None = None
        self._member: np.ndarray | None = None
        self._nodes: list[tuple[str, str]] | None = None

    # ---- building -----------------------------------------------------------------------------
    def _groups(self) -> list[list[str]]:
        nodes, _ = hypernym_nodes()
        hyper = [_prompts(self.config, en, zh) for en, zh in nodes]
        return label_prompts(self.config) + hyper

    def cache_key(self) -> str:
        h = hashlib.sha256()
        h.update(f"v{LABEL_SPACE_VERSION}\n{self.encoder.name}\n".encode())
        for g in self._groups():
            h.update(("\x1f".join(g) + "\x1e").encode())
        return h.hexdigest()[:16]

    def cache_path(self) -> Path | None:
        if self.cache_dir is None:
            return None
        slug = re.sub(r"[^A-Za-z0-9.]+", "-", self.encoder.name).strip("-")
        return self.cache_dir / "label_space" / f"{slug}-{self.cache_key()}.npy"

    def _load(self) -> tuple[np.ndarray, np.ndarray]:
        if self._labels is None:
            with self._lock:
                if self._labels is None:
                    nodes, member = hypernym_nodes()
                    path = self.cache_path()
                    matrix = None
                    if path is not None and path.is_file():
                        matrix = np.load(path)
                        if matrix.shape != (N_CLASSES + len(nodes), self.encoder.dim):
                            matrix = None
                    if matrix is None:
                        matrix = _embed_groups(self.encoder, self._groups())
                        if path is not None:
                            _save(path, matrix)
                    labels, hyper = matrix[:N_CLASSES], matrix[N_CLASSES:]
                    if self.config.center:
                        mean = labels.mean(axis=0, keepdims=True)
                        labels, hyper = labels - mean, hyper - mean
                    self._nodes, self._member = nodes, member
                    self._hyper = hyper.astype(np.float32)
                    self._labels = labels.astype(np.float32)
        assert self._labels is not None and self._hyper is not None
        return self._labels, self._hyper

    # ---- using --------------------------------------------------------------------------------
    def weights(self, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 1000) class weights and (N, H) hypernym weights for (N, 1000) probabilities."""
        cfg = self.config
        p = np.atleast_2d(np.asarray(probabilities, np.float32))
        w = np.power(np.clip(p, 0.0, None), cfg.power)
        if cfg.top_k < N_CLASSES:
            kth = -np.partition(-w, cfg.top_k - 1, axis=1)[:, cfg.top_k - 1 : cfg.top_k]
            w = np.where(w >= kth, w, 0.0)
        w = w / np.maximum(w.sum(axis=1, keepdims=True), 1e-12)
        self._load()
        assert self._member is not None
        # A parent gets the *raw* summed probability of its classes: breeds that each look unlikely can
        # still add up to a sure "dog". The generic nodes (animal) are discounted by how many classes they
        # cover, as information content: knowing "animal" says less than knowing "dog".
        mass = p @ self._member
        ic = np.log(N_CLASSES / np.maximum(self._member.sum(axis=0), 1.0)) / np.log(N_CLASSES)
        hw = cfg.hypernym_weight * mass * ic
        return w.astype(np.float32), hw.astype(np.float32)

    def image_vector(self, probabilities: np.ndarray) -> np.ndarray:
        """(N, 1000) ImageNet probabilities -> (N, dim) L2-normalised vectors in the text space."""
        labels, hyper = self._load()
        w, hw = self.weights(probabilities)
        return _l2n(w @ labels + hw @ hyper)

    def explain(
        self, query_vec: np.ndarray, probabilities: np.ndarray, k: int = 3
    ) -> list[tuple[str, str, float]]:
        """The ``k`` labels (or WordNet parents) of one image that add most to its score for a query,
        as (english, chinese, contribution); contributions sum to the cosine over all terms."""
        labels, hyper = self._load()
        w, hw = self.weights(np.asarray(probabilities).reshape(1, -1))
        vec = w @ labels + hw @ hyper
        norm = max(float(np.linalg.norm(vec)), 1e-12)
        q = np.asarray(query_vec, np.float32).ravel()
        contrib = np.concatenate([w[0] * (labels @ q), hw[0] * (hyper @ q)]) / norm
        assert self._nodes is not None
        names = [(c.english, c.chinese) for c in class_names()] + list(self._nodes)
        order = np.argsort(-contrib)[:k]
        return [(names[i][0], names[i][1], round(float(contrib[i]), 4)) for i in order if contrib[i] > 0]


def _save(path: Path, matrix: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        np.save(tmp, matrix.astype(np.float32))
