"""Cross-modal search benchmark: Chinese and English text queries against images indexed from pixels only.

    python bench/search.py --photos DIR       # DIR from ../shared/data/fetch-dev-photos.sh DIR

Gallery: every photo-like dev photo (plus the captioned ones), indexed from its pixels alone: ImageNet
probabilities from the real visual encoder, OCR text where the detector finds text, dominant colours.
Queries: the 82 GCompris "explore" captions (English, and Traditional Chinese that the text encoder turns
into Simplified) as two query types each, the title and the first sentence of the description; a query's
only relevant image is the one it describes. Captions are queries only, never indexed.

A second query set is closer to what a shopper types: short object names taken from the file names of
the GCompris "categorization" and "erase" boards ("hammer" / "锤子", 65 of them, every image with that
name relevant) and five generic category words ("tools" / "工具", relevant: the whole board).

Sections (``--sections``):
- ``accuracy``: per language x query type, for the best label bridge, the plain baseline (English clean
  names, probability-weighted mean), the best bridge fused with OCR-text retrieval (reciprocal rank
  fusion, OCR hits gated by a literal overlap) and a random ranking, all in one run: R@1/5/10 for the
  captions, hit@k and mAP for the object and category queries. Then the ablation (one design choice
  added per row, ending at the default) and the alternatives (one change from the default per row).

Per-image signals and text embeddings are cached in bench/results/ so reruns take seconds.
Writes bench/results/search.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imgaudit.config import load_settings
from imgaudit.label_space import BASELINE, LabelConfig, LabelSpace
from imgaudit.models.ports import TextEncoder
from imgaudit.models.text import E5TextEncoder, normalize_text
from imgaudit.signals.colour import attribute_text, colour_names

RESULTS = Path(__file__).resolve().parent / "results"
KS = (1, 5, 10)
RRF_K = 60  # the usual reciprocal-rank-fusion constant (Cormack et al. 2009); not tuned here
OCR_MATCH_Z = (
    3.0  # an OCR match must stand out by 3 standard deviations; not tuned (2 captioned images have text)
)
LANGS = ("en", "zh")
KINDS = ("title", "sentence")


# ---- data ---------------------------------------------------------------------------------------


def load_gallery(photos: Path) -> list[dict]:
    """Manifest rows to index: photo-like or captioned, first copy of each identical file only."""
    rows = [json.loads(line) for line in (photos / "manifest.jsonl").read_text("utf-8").splitlines() if line]
    keep = [
        r for r in rows if (r.get("photo_like") or r.get("caption_en")) and not r.get("duplicate_of_earlier")
    ]
    return keep


def _first_sentence(text: str, stops: str) -> str:
    m = re.search(rf"[{re.escape(stops)}]", text)
    return (text[: m.end()] if m else text).strip()


def _strip_latin_parens(text: str) -> str:
    """'曲折金字塔（Bent Pyramid）' -> '曲折金字塔': a Chinese title query is typed in Chinese."""
    return re.sub(r"\s*[（(][^）)]*[A-Za-z][^）)]*[）)]", "", text).strip()


@dataclass(frozen=True)
class Query:
    target: int  # gallery index of the one relevant image
    lang: str
    kind: str
    text: str


def make_queries(gallery: list[dict]) -> list[Query]:
    """Title and first description sentence, in English and (Traditional) Chinese, per captioned photo.

    The manifest joins the Chinese title and description with a space (``dev_manifest.py``), so the
    Chinese title is the caption up to the first space that is not inside parentheses.
    """
    out: list[Query] = []
    for i, r in enumerate(gallery):
        if not r.get("caption_en"):
            continue
        title = r["title_en"]
        body = (
            r["caption_en"][len(title) + 1 :].strip()
            if r["caption_en"].startswith(title)
            else r["caption_en"]
        )
        out.append(Query(i, "en", "title", title))
        out.append(Query(i, "en", "sentence", _first_sentence(body, ".!?")))
        zh = r.get("caption_zh_TW", "").strip()
        if not zh:
            continue
        depth, cut = 0, len(zh)
        for j, ch in enumerate(zh):
            depth += ch in "(（"
            depth -= ch in ")）"
            if ch.isspace() and depth <= 0:
                cut = j
                break
        zh_title, zh_body = zh[:cut].strip(), zh[cut:].strip()
        # '印度泰姬瑪哈陵 (Taj Mahal) 泰姬...': a parenthesis right after the title still belongs to it
        lead = re.match(r"[（(][^）)]*[）)]", zh_body)
        if lead:
            zh_title, zh_body = f"{zh_title} {lead.group(0)}", zh_body[lead.end() :].strip()
        out.append(Query(i, "zh", "title", _strip_latin_parens(zh_title) or zh_title))
        if zh_body:
            out.append(Query(i, "zh", "sentence", _first_sentence(zh_body, "。！？!?")))
    return out


# Short everyday-object queries, closer to what a shopper types than landmark names: the object named by
# each file of the GCompris "categorization" and "erase" boards (file stem, digits dropped), in English and
# Chinese, written once from the file names alone. Every image with that stem is relevant.
OBJECT_QUERIES: dict[str, tuple[str, str]] = {
    "bucket": ("bucket", "水桶"),
    "bulb": ("light bulb", "灯泡"),
    "chair": ("chair", "椅子"),
    "cup": ("cup", "杯子"),
    "cuttingTool": ("cutting tool", "切割工具"),
    "dam": ("dam", "水坝"),
    "erasers": ("erasers", "橡皮擦"),
    "fish": ("fish", "鱼"),
    "hammer": ("hammer", "锤子"),
    "igloo": ("igloo", "冰屋"),
    "knife": ("knife", "刀"),
    "measuringTape": ("measuring tape", "卷尺"),
    "multimeter": ("multimeter", "万用表"),
    "nailCutter": ("nail clippers", "指甲刀"),
    "pan": ("frying pan", "平底锅"),
    "pencil": ("pencil", "铅笔"),
    "pillow": ("pillow", "枕头"),
    "plate": ("plate", "盘子"),
    "plier": ("pliers", "钳子"),
    "scissors": ("scissors", "剪刀"),
    "screwDriver": ("screwdriver", "螺丝刀"),
    "sickle": ("sickle", "镰刀"),
    "sideCutter": ("side cutter pliers", "斜口钳"),
    "solar": ("solar panel", "太阳能板"),
    "spoons": ("spoons", "勺子"),
    "spray": ("spray bottle", "喷雾瓶"),
    "tweezer": ("tweezers", "镊子"),
    "volleyball": ("volleyball", "排球"),
    "baseball": ("baseball", "棒球"),
    "weighingMachine": ("weighing scale", "秤"),
    "windmill": ("wind turbine", "风车"),
    "wrench": ("wrench", "扳手"),
    "alpaca": ("alpaca", "羊驼"),
    "bee": ("bee", "蜜蜂"),
    "butterfly": ("butterfly", "蝴蝶"),
    "calf": ("calf", "小牛"),
    "camels": ("camels", "骆驼"),
    "caterpillar": ("caterpillar", "毛毛虫"),
    "chamaeleon": ("chameleon", "变色龙"),
    "cheetah": ("cheetah", "猎豹"),
    "crab": ("crab", "螃蟹"),
    "dolphin": ("dolphin", "海豚"),
    "flying_fox": ("flying fox bat", "狐蝠"),
    "gibbon": ("gibbon", "长臂猿"),
    "giraffe": ("giraffe", "长颈鹿"),
    "goat": ("goat", "山羊"),
    "gorilla": ("gorilla", "大猩猩"),
    "gosling": ("gosling", "小鹅"),
    "heron": ("heron", "鹭"),
    "horse": ("horse", "马"),
    "kingfisher": ("kingfisher", "翠鸟"),
    "kitten": ("kitten", "小猫"),
    "long_nosed_monkey": ("long-nosed monkey", "长鼻猴"),
    "macaque": ("macaque", "猕猴"),
    "meerkats": ("meerkats", "狐獴"),
    "northern_harrier": ("northern harrier", "白尾鹞"),
    "nubian_ibex": ("nubian ibex", "努比亚羱羊"),
    "penguin": ("penguin", "企鹅"),
    "pika": ("pika", "鼠兔"),
    "red_panda": ("red panda", "小熊猫"),
    "rhinoceros": ("rhinoceros", "犀牛"),
    "spoonbills": ("spoonbills", "琵鹭"),
    "squirrel": ("squirrel", "松鼠"),
    "swans": ("swans", "天鹅"),
    "toucan": ("toucan", "巨嘴鸟"),
}
# Generic words a short query often is; relevant: every image of those boards in that category.
CATEGORY_QUERIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "tool": ("tools", "工具", ("/categorization/resource/images/tools/",)),
    "fish": ("a fish", "鱼", ("/categorization/resource/images/fishes/",)),
    "animal": (
        "an animal",
        "动物",
        ("/erase/resource/", "/explore_farm_animals/", "/explore_world_animals/"),
    ),
    "monument": (
        "a famous monument",
        "名胜古迹",
        ("/categorization/resource/images/monuments/", "/explore_monuments/"),
    ),
    "energy": ("renewable energy", "可再生能源", ("/categorization/resource/images/renewable/",)),
}


def _stem(path: str) -> str | None:
    if "/categorization/resource/images/" not in path and "/erase/resource/" not in path:
        return None
    return re.sub(r"\d+$", "", Path(path).stem)


def make_object_queries(gallery: list[dict]) -> list[tuple[str, str, str, tuple[int, ...]]]:
    """(lang, kind, text, relevant gallery indexes) for the object-name and category queries."""
    out = []
    stems = [_stem(r["path"]) for r in gallery]
    for stem, (en, zh) in OBJECT_QUERIES.items():
        rel = tuple(i for i, s in enumerate(stems) if s == stem)
        if rel:
            out += [("en", "object", en, rel), ("zh", "object", zh, rel)]
    for en, zh, parts in CATEGORY_QUERIES.values():
        rel = tuple(i for i, r in enumerate(gallery) if any(p in r["path"] for p in parts))
        if rel:
            out += [("en", "category", en, rel), ("zh", "category", zh, rel)]
    return out


# ---- per-image signals (cached) ----------------------------------------------------------------


def compute_signals(gallery: list[dict], photos: Path, settings) -> dict:
    """Probabilities, OCR text and colours of every gallery image, from its pixels only (cached)."""
    key = hashlib.sha256("\n".join(r["md5"] for r in gallery).encode()).hexdigest()[:16]
    npz, meta = RESULTS / f"search_signals-{key}.npz", RESULTS / f"search_signals-{key}.json"
    if npz.is_file() and meta.is_file():
        data = json.loads(meta.read_text("utf-8"))
        data["probabilities"] = np.load(npz)["probabilities"]
        return data
    from imgaudit.bootstrap import build_encoder
    from imgaudit.media.decode import decode
    from imgaudit.models.ocr import OcrEngine

    t0 = time.perf_counter()
    decoded = []
    for r in gallery:
        data = (photos / r["path"]).read_bytes()
        decoded.append(
            (data, decode(data, max_pixels=settings.decode.max_pixels, max_side=settings.decode.max_side))
        )
    encoder = build_encoder(settings)
    probs = encoder.encode([d.pixels for _, d in decoded]).probabilities
    t1 = time.perf_counter()
    cfg = settings.moderation
    ocr = OcrEngine(threads=settings.models.threads, min_score=cfg.ocr_min_score)
    boxes = ocr.detect([d.pixels for _, d in decoded], cfg.ocr_det_side)
    texty = [i for i, b in enumerate(boxes) if len(b)]
    larger = []
    for i in texty:
        data, d = decoded[i]
        big = decode(data, max_pixels=settings.decode.max_pixels, max_side=cfg.ocr_read_side)
        larger.append((big.pixels, d.width / big.pixels.shape[1]))
    lines = ocr.read([p for p, _ in larger], cfg.ocr_read_side, [f for _, f in larger]) if larger else []
    ocr_text = [""] * len(gallery)
    for i, ls in zip(texty, lines, strict=True):
        ocr_text[i] = " ".join(line.text for line in ls)
    t2 = time.perf_counter()
    colours = [colour_names(d.pixels) for _, d in decoded]
    out = {
        "paths": [r["path"] for r in gallery],
        "has_text": [bool(len(b)) for b in boxes],
        "ocr_text": ocr_text,
        "colours": colours,
        "size": [[d.width, d.height] for _, d in decoded],
        "seconds": {"decode+encode": t1 - t0, "ocr": t2 - t1, "colours": time.perf_counter() - t2},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(npz, probabilities=probs)
    meta.write_text(json.dumps(out, ensure_ascii=False), "utf-8")
    out["probabilities"] = probs
    return out


class CachedTextEncoder:
    """A TextEncoder that remembers every text it embedded (on disk), so ablations re-embed nothing."""

    def __init__(self, inner: TextEncoder, path: Path) -> None:
        self.inner = inner
        self.path = path
        self._mem: dict[str, np.ndarray] = {}
        if path.is_file():
            with np.load(path) as z:
                self._mem = dict(zip(z["keys"].tolist(), z["vecs"], strict=True))
        self._dirty = False

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def dim(self) -> int:
        return self.inner.dim

    def _get(self, texts: Sequence[str], mode: str) -> np.ndarray:
        keys = [f"{mode}\x1f{t}" for t in texts]
        missing = list(dict.fromkeys(k for k in keys if k not in self._mem))
        if missing:
            raw = [k.split("\x1f", 1)[1] for k in missing]
            vecs = self.inner.queries(raw) if mode == "q" else self.inner.passages(raw)
            self._mem.update(zip(missing, vecs, strict=True))
            self._dirty = True
        if not keys:
            return np.zeros((0, self.dim), np.float32)
        return np.stack([self._mem[k] for k in keys])

    def queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._get(texts, "q")

    def passages(self, texts: Sequence[str]) -> np.ndarray:
        return self._get(texts, "p")

    def save(self) -> None:
        if self._dirty:
            keys = list(self._mem)
            np.savez(self.path, keys=np.array(keys), vecs=np.stack([self._mem[k] for k in keys]))
            self._dirty = False


# ---- metrics ------------------------------------------------------------------------------------


def target_ranks(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based rank of each query's target among all images (ties counted against the target)."""
    own = scores[np.arange(len(targets)), targets]
    return (scores >= own[:, None]).sum(axis=1) - 1


def rrf(*score_sets: np.ndarray) -> np.ndarray:
    """Reciprocal rank fusion; NaN marks an image absent from that list (it contributes nothing)."""
    total = np.zeros_like(score_sets[0])
    for s in score_sets:
        filled = np.where(np.isnan(s), -np.inf, s)
        order = np.argsort(-filled, axis=1, kind="stable")
        ranks = np.empty_like(order)
        np.put_along_axis(ranks, order, np.arange(s.shape[1])[None, :].repeat(len(s), 0), axis=1)
        total += np.where(np.isnan(s), 0.0, 1.0 / (RRF_K + ranks + 1))
    return total


_STOP = frozenset(
    [
        "the",
        "and",
        "for",
        "with",
        "this",
        "that",
        "from",
        "are",
        "was",
        "its",
        "his",
        "her",
        "has",
        "have",
        "into",
    ]
)


def _text_keys(text: str) -> set[str]:
    """Literal keys of a text: Latin words of 3+ letters (minus stop words) and CJK character bigrams
    (a lone CJK character counts by itself)."""
    text = normalize_text(text).casefold()
    keys = {w for w in re.findall(r"[a-z0-9]{3,}", text) if w not in _STOP}
    for run in re.findall(r"[\u3400-\u9fff]+", text):
        keys |= {run} if len(run) == 1 else {run[i : i + 2] for i in range(len(run) - 1)}
    return keys


def ocr_matches(
    encoder: TextEncoder, queries: Sequence[str], qvec: np.ndarray, ocr_texts: list[str], n_images: int
) -> np.ndarray:
    """OCR-text scores (dense cosine), NaN except where the query and the image's text share a literal
    word or character bigram. Unfiltered, RRF would lift every image that has any text (a misread
    window grid "田" is as close to every Chinese query as the label matches are) above the best label
    matches: a list from a retriever that always answers is no evidence. Text in an image is literal, so
    a literal overlap is the evidence asked for."""
    out = np.full((len(qvec), n_images), np.nan, np.float32)
    texty = [i for i, t in enumerate(ocr_texts) if t.strip()]
    if not texty:
        return out
    keys = {i: _text_keys(ocr_texts[i]) for i in texty}
    ocr_vec = encoder.passages([ocr_texts[i] for i in texty])
    sims = qvec @ ocr_vec.T
    for qi, q in enumerate(queries):
        qk = _text_keys(q)
        for j, i in enumerate(texty):
            if qk & keys[i]:
                out[qi, i] = sims[qi, j]
    return out


def recall_table(ranks: np.ndarray, queries: list[Query]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for lang in LANGS:
        for kind in KINDS:
            sel = np.array([q.lang == lang and q.kind == kind for q in queries])
            if sel.any():
                out[f"{lang}/{kind}"] = {f"R@{k}": float((ranks[sel] < k).mean()) for k in KS}
                out[f"{lang}/{kind}"]["n"] = int(sel.sum())
    return out


def random_table(queries: list[Query], n_images: int) -> dict[str, dict[str, float]]:
    """Expected recall of a uniformly random ranking: k / N."""
    fake = recall_table(np.zeros(len(queries), int), queries)
    return {g: {**{f"R@{k}": k / n_images for k in KS}, "n": v["n"]} for g, v in fake.items()}


def object_table(scores: np.ndarray, oqs: list[tuple[str, str, str, tuple[int, ...]]]) -> dict[str, dict]:
    """Hit@k (any relevant image in the top k) and mean average precision, per language x kind."""
    out: dict[str, dict] = {}
    for lang in LANGS:
        for kind in ("object", "category"):
            idx = [i for i, (lg, kd, _, _) in enumerate(oqs) if lg == lang and kd == kind]
            if not idx:
                continue
            hits = {k: [] for k in KS}
            aps, p10 = [], []
            for i in idx:
                rel = np.zeros(scores.shape[1], bool)
                rel[list(oqs[i][3])] = True
                hit = rel[np.argsort(-scores[i], kind="stable")]
                for k in KS:
                    hits[k].append(bool(hit[:k].any()))
                p10.append(float(hit[:10].mean()))
                precision = np.cumsum(hit) / np.arange(1, len(hit) + 1)
                aps.append(float((precision * hit).sum() / hit.sum()))
            out[f"{lang}/{kind}"] = {
                **{f"hit@{k}": float(np.mean(hits[k])) for k in KS},
                "P@10": float(np.mean(p10)),
                "mAP": float(np.mean(aps)),
                "n": len(idx),
            }
    return out


def random_object_table(oqs: list[tuple[str, str, str, tuple[int, ...]]], n_images: int) -> dict[str, dict]:
    """Expected values for a uniformly random ranking (hit@k exact; AP approximated by the base rate)."""
    out: dict[str, dict] = {}
    for lang in LANGS:
        for kind in ("object", "category"):
            sizes = [len(r) for lg, kd, _, r in oqs if lg == lang and kd == kind]
            if not sizes:
                continue
            hit = {
                f"hit@{k}": float(
                    np.mean(
                        [1 - np.prod([(n_images - m - j) / (n_images - j) for j in range(k)]) for m in sizes]
                    )
                )
                for k in KS
            }
            base = float(np.mean([m / n_images for m in sizes]))
            out[f"{lang}/{kind}"] = {**hit, "P@10": base, "mAP": base, "n": len(sizes)}
    return out


# ---- the benchmark --------------------------------------------------------------------------------


def _ablation() -> list[tuple[str, LabelConfig]]:
    """Each row adds one design choice to the row above; the last row is ``LabelConfig()``."""
    b = BASELINE
    c = dataclasses.replace(b, english="rich")
    steps = [("baseline: English clean names, p-weighted mean", b), ("+ English synonyms, GPT name", c)]
    c = dataclasses.replace(c, chinese=True, templates_zh=("{}",))
    steps.append(("+ Chinese name + synonyms (own prompt)", c))
    c = dataclasses.replace(c, templates_en=("a photo of a {}.", "{}"), templates_zh=("一张{}的照片。", "{}"))
    steps.append(("+ prompt templates (a photo of / 照片)", c))
    c = dataclasses.replace(c, top_k=20, power=0.5)
    steps.append(("+ top-20 classes, p^0.5", c))
    c = dataclasses.replace(c, hypernym_weight=0.5)
    steps.append(("+ WordNet parents with summed mass (= default)", c))
    assert c == LabelConfig(), "the last ablation row must be the default"
    return steps


def _alternatives() -> list[tuple[str, LabelConfig]]:
    """One change each from the default: what was tried and not kept, or the nearby settings."""
    d = LabelConfig()
    return [
        ("default", d),
        ("centred label vectors", dataclasses.replace(d, center=True)),
        ('"a type of {parent}" prompts', dataclasses.replace(d, kind_prompts=True)),
        ("+ GPT visual descriptions", dataclasses.replace(d, descriptions=True)),
        ("all 1000 classes", dataclasses.replace(d, top_k=1000)),
        ("top-10 classes", dataclasses.replace(d, top_k=10)),
        ("p^1 (no flattening)", dataclasses.replace(d, power=1.0)),
        ("parents weight 1.0", dataclasses.replace(d, hypernym_weight=1.0)),
        ("no parents", dataclasses.replace(d, hypernym_weight=0.0)),
    ]


@dataclass
class Bench:
    encoder: CachedTextEncoder
    probs: np.ndarray
    queries: list[Query]
    qvec: np.ndarray
    targets: np.ndarray
    oqs: list[tuple[str, str, str, tuple[int, ...]]]
    oqvec: np.ndarray

    def vectors(self, config: LabelConfig) -> np.ndarray:
        return LabelSpace(self.encoder, RESULTS / "search_cache", config).image_vector(self.probs)

    def run(self, images: np.ndarray) -> tuple[dict, dict]:
        ranks = target_ranks(self.qvec @ images.T, self.targets)
        return recall_table(ranks, self.queries), object_table(self.oqvec @ images.T, self.oqs)


def fmt_caption_table(title: str, tables: dict[str, dict[str, dict[str, float]]]) -> str:
    groups = [f"{lang}/{kind}" for lang in LANGS for kind in KINDS]
    head = "| method | " + " | ".join(f"{g} R@1 / R@5 / R@10" for g in groups) + " |"
    lines = [f"### {title}", "", head, "|---" * (len(groups) + 1) + "|"]
    for name, t in tables.items():
        cells = [" / ".join(f"{t[g][f'R@{k}']:.2f}" for k in KS) if g in t else "-" for g in groups]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fmt_object_table(title: str, tables: dict[str, dict[str, dict[str, float]]]) -> str:
    lines = [
        f"### {title}",
        "",
        "| method | en object hit@1 / @5 / @10, mAP | zh object hit@1 / @5 / @10, mAP "
        "| en category P@10, mAP | zh category P@10, mAP |",
        "|---|---|---|---|---|",
    ]
    for name, t in tables.items():
        cells = []
        for lang in LANGS:
            o = t.get(f"{lang}/object")
            cells.append(" / ".join(f"{o[f'hit@{k}']:.2f}" for k in KS) + f", {o['mAP']:.2f}" if o else "-")
        for lang in LANGS:
            c = t.get(f"{lang}/category")
            cells.append(f"{c['P@10']:.2f}, {c['mAP']:.2f}" if c else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fmt_summary_table(title: str, rows: dict[str, tuple[dict, dict]]) -> str:
    """One line per configuration: caption R@10 per group, object hit@10 and category mAP per language."""
    groups = [f"{lang}/{kind}" for lang in LANGS for kind in KINDS]
    lines = [
        f"### {title}",
        "",
        "| configuration | "
        + " | ".join(f"{g} R@10" for g in groups)
        + " | en object hit@10 | zh object hit@10 | en category mAP | zh category mAP |",
        "|---" * (len(groups) + 5) + "|",
    ]
    for name, (cap, obj) in rows.items():
        cells = [f"{cap[g]['R@10']:.2f}" if g in cap else "-" for g in groups]
        cells += [f"{obj[f'{lang}/object']['hit@10']:.2f}" for lang in LANGS]
        cells += [f"{obj[f'{lang}/category']['mAP']:.2f}" for lang in LANGS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def accuracy(photos: Path, ablation: bool) -> dict:
    settings = load_settings()
    gallery = load_gallery(photos)
    queries = make_queries(gallery)
    oqs = make_object_queries(gallery)
    sig = compute_signals(gallery, photos, settings)
    n = len(gallery)
    encoder = CachedTextEncoder(E5TextEncoder(), RESULTS / "search_text_cache.npz")
    t = time.perf_counter()
    bench = Bench(
        encoder=encoder,
        probs=np.asarray(sig["probabilities"], np.float32),
        queries=queries,
        qvec=encoder.queries([q.text for q in queries]),
        targets=np.array([q.target for q in queries]),
        oqs=oqs,
        oqvec=encoder.queries([text for _, _, text, _ in oqs]),
    )
    captions: dict[str, dict] = {"random (k/N)": random_table(queries, n)}
    objects: dict[str, dict] = {"random": random_object_table(oqs, n)}
    captions["baseline label bridge"], objects["baseline label bridge"] = bench.run(bench.vectors(BASELINE))
    best = bench.vectors(LabelConfig())
    captions["best label bridge"], objects["best label bridge"] = bench.run(best)
    # OCR text as passages, for the images where the detector found text and recognition read some.
    texty = [i for i, s in enumerate(sig["ocr_text"]) if s.strip()]
    texts = [q.text for q in queries]
    otexts = [t for _, _, t, _ in oqs]
    fused_cap = rrf(bench.qvec @ best.T, ocr_matches(encoder, texts, bench.qvec, sig["ocr_text"], n))
    fused_obj = rrf(bench.oqvec @ best.T, ocr_matches(encoder, otexts, bench.oqvec, sig["ocr_text"], n))
    captions["best + OCR text (gated RRF)"] = recall_table(target_ranks(fused_cap, bench.targets), queries)
    objects["best + OCR text (gated RRF)"] = object_table(fused_obj, oqs)
    ablation_rows: dict[str, tuple[dict, dict]] = {}
    alternative_rows: dict[str, tuple[dict, dict]] = {}
    if ablation:
        for name, cfg in _ablation():
            ablation_rows[name] = bench.run(bench.vectors(cfg))
        for name, cfg in _alternatives():
            alternative_rows[name] = bench.run(bench.vectors(cfg))
    encoder.save()
    attr_examples = [
        attribute_text([tuple(c) for c in sig["colours"][i]], sig["has_text"][i], False, *sig["size"][i])
        for i in range(min(3, n))
    ]
    return {
        "n_images": n,
        "n_caption_queries": len(queries),
        "n_object_queries": len(oqs),
        "n_with_ocr_text": len(texty),
        "n_captioned_with_ocr_text": len({q.target for q in queries} & set(texty)),
        "queries_example": [dataclasses.asdict(q) for q in queries[:4]],
        "attribute_text_example": attr_examples,
        "captions": captions,
        "objects": objects,
        "ablation": {k: {"captions": c, "objects": o} for k, (c, o) in ablation_rows.items()},
        "alternatives": {k: {"captions": c, "objects": o} for k, (c, o) in alternative_rows.items()},
        "best_config": dataclasses.asdict(LabelConfig()),
        "signal_seconds": sig.get("seconds"),
        "text_seconds": time.perf_counter() - t,
        "encoder": encoder.name,
    }


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=Path, required=True, help="folder written by fetch-dev-photos.sh")
    ap.add_argument("--sections", default="accuracy", help="comma-separated: accuracy")
    ap.add_argument("--no-ablation", action="store_true", help="skip the ablation tables")
    ap.add_argument("--out", type=Path, default=RESULTS / "search.json")
    args = ap.parse_args(argv)
    sections = {s.strip() for s in args.sections.split(",") if s.strip()}
    unknown = sections - {"accuracy"}
    if unknown:
        ap.error(f"unknown sections: {', '.join(sorted(unknown))}")
    report: dict = {}
    if "accuracy" in sections:
        acc = accuracy(args.photos, ablation=not args.no_ablation)
        report["accuracy"] = acc
        print(
            f"{acc['n_images']} images indexed from pixels; {acc['n_caption_queries']} caption queries, "
            f"{acc['n_object_queries']} object/category queries; {acc['n_with_ocr_text']} images with OCR "
            f"text ({acc['n_captioned_with_ocr_text']} of them captioned); text encoder {acc['encoder']}\n"
        )
        print(fmt_caption_table("Caption queries: recall of the described image", acc["captions"]))
        print()
        print(fmt_object_table("Object-name and category queries", acc["objects"]))
        if acc["ablation"]:
            for key, title in (
                ("ablation", "Ablation: one label-bridge choice added per row"),
                ("alternatives", "Alternatives: one change from the default per row"),
            ):
                print()
                rows = {k: (v["captions"], v["objects"]) for k, v in acc[key].items()}
                print(fmt_summary_table(title, rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, ensure_ascii=False, indent=2), "utf-8")


if __name__ == "__main__":
    main()
