"""Search latency and memory at scale, with synthetic filler.

    python bench/search_latency.py --sizes 10000 100000 1000000

For each size N, a fresh data directory gets N finished items in the store (SQLite) and the indexes a
real deployment would hold for them, built the way the search service builds them:

- ``labels``: every item's label-bridge vector, from a random sparse ImageNet probability vector (a few
  classes carrying the mass, as real photos do) through the real label space;
- ``text``: 30 % of items carry OCR-like text, embedded from a pool of real e5 passage vectors plus noise
  (embedding a million passages with the real model would take hours and measures nothing new);
- ``bm25``: tantivy over the same synthetic OCR text, captions and tags (Chinese and English words);
- ``visual``: the 1280-d copy-detection index (counted for memory: it lives in the same process).

Queries are real: 200 short Chinese and English product queries, embedded by the real model each time,
through ``SearchService.search`` (all lists, fusion, store fetch of the page, explanations). Reported:
p50 / p95 latency per size, the share of each stage, build time, and the process's resident memory
after the indexes are loaded (ru_maxrss and the current RSS), against the baseline of a bare
``SearchService.search`` on an empty index measured in the same run.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imgaudit.bootstrap import _text_encoder, index_backend
from imgaudit.config import load_settings
from imgaudit.index.faiss_index import FaissVectorIndex
from imgaudit.index.tantivy_index import TantivyTextIndex
from imgaudit.index.text_base import TextDoc
from imgaudit.label_space import LabelSpace
from imgaudit.services.search import SearchService
from imgaudit.services.search_index import SearchIndexes
from imgaudit.store.sql import SqlStore

WORDS_ZH = [
    "包邮",
    "正品",
    "新款",
    "夏季",
    "连衣裙",
    "红色",
    "蓝色",
    "运动鞋",
    "手机壳",
    "耳机",
    "口红",
    "面膜",
    "零食",
    "茶叶",
    "咖啡",
    "玩具",
    "积木",
    "童装",
    "外套",
    "羽绒服",
    "背包",
    "手表",
    "眼镜",
    "香水",
    "洗发水",
    "牙膏",
    "充电器",
    "数据线",
    "键盘",
    "鼠标",
    "台灯",
    "抱枕",
    "毛巾",
    "拖鞋",
    "帽子",
    "围巾",
    "手套",
    "减肥",
    "瘦身",
    "美白",
    "祛痘",
    "保健",
    "特价",
    "秒杀",
    "限时",
    "优惠",
    "满减",
    "好评",
    "客服",
    "咨询",
    "微信",
    "二维码",
    "扫码",
    "店铺",
    "旗舰店",
]
WORDS_EN = [
    "free",
    "shipping",
    "new",
    "summer",
    "dress",
    "red",
    "blue",
    "sneakers",
    "phone",
    "case",
    "earphones",
    "lipstick",
    "mask",
    "snack",
    "tea",
    "coffee",
    "toy",
    "blocks",
    "kids",
    "jacket",
    "backpack",
    "watch",
    "glasses",
    "perfume",
    "shampoo",
    "charger",
    "cable",
    "keyboard",
    "mouse",
    "lamp",
    "pillow",
    "towel",
    "slippers",
    "hat",
    "scarf",
    "gloves",
    "sale",
    "discount",
    "limited",
    "offer",
    "best",
    "seller",
    "official",
    "store",
    "original",
]
QUERIES = (
    "红色连衣裙 运动鞋 手机壳 耳机 口红 咖啡 玩具 背包 手表 香水 减肥药 二维码 "
    "微信 猫 狗 汽车 鞋子 食物 花 鸟 "
    "red dress|running shoes|phone case|headphones|lipstick|coffee|toy|backpack|watch|perfume|"
    "diet pills|qr code|cat|dog|car|shoes|food|flower|bird|laptop"
)


def queries(n: int, rng: random.Random) -> list[str]:
    zh, en = QUERIES.split(" red dress|")
    pool = zh.split() + ("red dress|" + en).split("|")
    return [rng.choice(pool) for _ in range(n)]


def rss_mb() -> tuple[float, float]:
    """Current and peak resident set size of this process, in MB."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    current = pages * resource.getpagesize() / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return current, peak


def fill(svc: SearchService, store: SqlStore, n: int, seed: int) -> dict[str, float]:
    """N synthetic finished items: store rows, the search log, dense and BM25 indexes, the visual index."""
    from sqlalchemy import insert

    from imgaudit.store.schema import ImageRow, SearchLogRow, utcnow

    rng = np.random.default_rng(seed)
    prng = random.Random(seed)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    ix = svc.indexes
    passage_pool = ix.encoder.passages(
        [" ".join(prng.sample(WORDS_ZH, 4) + prng.sample(WORDS_EN, 3)) for _ in range(256)]
    )
    visual = FaissVectorIndex(
        1280, exact_below=svc.settings.index.exact_below, nprobe=svc.settings.index.nprobe
    )
    chunk = 20_000
    now = utcnow()
    for start in range(0, n, chunk):
        ids = np.arange(start + 1, min(n, start + chunk) + 1, dtype=np.int64)
        m = len(ids)
        probs = np.zeros((m, 1000), np.float32)
        top = rng.integers(0, 1000, size=(m, 5))
        mass = rng.dirichlet(np.ones(5) * 0.5, size=m).astype(np.float32)
        np.put_along_axis(probs, top, mass, axis=1)
        t = time.perf_counter()
        ix.dense["labels"].add(ids, ix.label_space.image_vector(probs))
        has_text = rng.random(m) < 0.3
        noise = rng.normal(0, 0.05, size=(int(has_text.sum()), ix.encoder.dim)).astype(np.float32)
        tv = passage_pool[rng.integers(0, len(passage_pool), int(has_text.sum()))] + noise
        ix.dense["text"].add(ids[has_text], tv / np.linalg.norm(tv, axis=1, keepdims=True))
        vis = rng.normal(size=(m, 1280)).astype(np.float32)
        visual.add(ids, vis / np.linalg.norm(vis, axis=1, keepdims=True))
        timings["dense"] = timings.get("dense", 0.0) + time.perf_counter() - t
        t = time.perf_counter()
        texts = [" ".join(prng.sample(WORDS_ZH, 3) + prng.sample(WORDS_EN, 2)) if h else "" for h in has_text]
        ix.text.add(
            [
                TextDoc(
                    int(i),
                    txt,
                    "",
                    f"{prng.choice(WORDS_EN)}, {prng.choice(WORDS_ZH)}",
                    "bench",
                    "unique",
                    "pass",
                    bool(txt),
                    int(now.timestamp()),
                )
                for i, txt in zip(ids, texts, strict=True)
            ]
        )
        timings["bm25"] = timings.get("bm25", 0.0) + time.perf_counter() - t
        t = time.perf_counter()
        rows = [
            {
                "id": int(i),
                "source": "bench",
                "kind": "path",
                "uri": f"/bench/{i}.jpg",
                "uri_hash": f"{i:064d}",
                "status": "done",
                "attempts": 1,
                "available_at": now,
                "created_at": now,
                "updated_at": now,
                "indexed": 1,
                "decision": "unique",
                "moderation": "pass",
                "ocr_text": txt or None,
                "labels": [[int(c), float(p)] for c, p in zip(top[k], mass[k], strict=True)],
            }
            for k, (i, txt) in enumerate(zip(ids, texts, strict=True))
        ]
        with store._session() as s, s.begin():
            s.execute(insert(ImageRow), rows)
            s.execute(insert(SearchLogRow), [{"image_id": int(i)} for i in ids])
        timings["store"] = timings.get("store", 0.0) + time.perf_counter() - t
        print(f"  {min(n, start + chunk)}/{n} items ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    ix.text.commit()
    ix.seq = store.last_search_seq()
    svc._visual_for_memory = visual  # type: ignore[attr-defined]  # held like a worker would hold it
    timings["total"] = time.perf_counter() - t0
    return timings


SERVE_PROBE = """
import resource, sys, time
from pathlib import Path
from imgaudit.index.faiss_index import FaissVectorIndex
from imgaudit.index.tantivy_index import TantivyTextIndex
d = Path(sys.argv[1])
held = [FaissVectorIndex.load(p, int(p.stem.split("-")[1])) for p in sorted(d.glob("*.faiss"))]
bm25 = TantivyTextIndex(d / "bm25")
for q in ("连衣裙", "red dress", "微信", "coffee"):
    bm25.search(q, 200)
with open("/proc/self/statm") as f:
    print(int(f.read().split()[1]) * resource.getpagesize() / 2**20)
"""


def serving_memory(svc: SearchService, visual: FaissVectorIndex, tmp: Path) -> dict[str, float]:
    """What a process serving these indexes holds: the index files' sizes, and the resident memory of a
    fresh process that loads every FAISS index and opens the BM25 index (as a search process does),
    without the builder's freed-but-retained allocations."""
    import subprocess

    out = tmp / "serve"
    out.mkdir()
    for name, index in svc.indexes.dense.items():
        index.save(out / f"{name}-{index.dim}.faiss")  # type: ignore[attr-defined]
    visual.save(out / "visual-1280.faiss")
    svc.indexes.text.commit()
    import shutil

    shutil.copytree(tmp / "search" / "bm25", out / "bm25")
    faiss_mb = sum(p.stat().st_size for p in out.glob("*.faiss")) / 2**20
    bm25_mb = sum(p.stat().st_size for p in (out / "bm25").rglob("*") if p.is_file()) / 2**20
    rss = float(
        subprocess.run(
            [sys.executable, "-c", SERVE_PROBE, str(out)], capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    empty = float(
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import resource\n"
                + SERVE_PROBE.split("d = Path")[0]
                + "\nwith open('/proc/self/statm') as f: print(int(f.read().split()[1]) * "
                "resource.getpagesize() / 2**20)",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    return {
        "faiss_files_mb": round(faiss_mb),
        "bm25_files_mb": round(bm25_mb),
        "serving_rss_mb": round(rss),
        "serving_indexes_mb": round(rss - empty),
    }


def measure(svc: SearchService, qs: list[str]) -> dict[str, object]:
    svc.search(qs[0], sync=False)  # warm: model loaded, first query compiled
    lat, stages = [], {}
    for q in qs:
        t = time.perf_counter()
        res = svc.search(q, sync=False, per_page=20)
        lat.append(time.perf_counter() - t)
        for k, v in res.timings.items():
            stages[k] = stages.get(k, 0.0) + v
    ms = np.array(lat) * 1000
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p95_ms": round(float(np.percentile(ms, 95)), 1),
        "mean_stage_ms": {k: round(v / len(qs) * 1000, 2) for k, v in stages.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    args = ap.parse_args()
    qs = queries(args.queries, random.Random(args.seed))
    text = _text_encoder(0)
    results = []
    for n in [0, *args.sizes]:
        gc.collect()
        before, _ = rss_mb()
        with tempfile.TemporaryDirectory() as tmp:
            settings = load_settings(data_dir=Path(tmp))
            store = SqlStore(settings.store_url)
            index = TantivyTextIndex(Path(tmp) / "search" / "bm25")
            labels = LabelSpace(text, settings.cache_dir)
            indexes = SearchIndexes(
                settings.data_dir / "search", store, text, labels, index, index_backend(settings)
            )
            svc = SearchService(settings, store, indexes, None)
            build = fill(svc, store, n, args.seed) if n else {}
            after, peak = rss_mb()
            m = measure(svc, qs)
            if n:
                m.update(serving_memory(svc, svc._visual_for_memory, Path(tmp)))  # type: ignore[attr-defined]
            row = {
                "items": n,
                **m,
                "build_s": {k: round(v, 1) for k, v in build.items()},
                "rss_mb": round(after, 0),
                "index_rss_mb": round(after - before, 0),
                "peak_rss_mb": round(peak, 0),
            }
            print(json.dumps(row), file=sys.stderr)
            results.append(row)
            index.close()
            store.close()
            del svc
    base = results[0]["p50_ms"]
    print(
        "| items | p50 ms | p95 ms | p50 vs empty index "
        "| serving process: indexes MB (FAISS files + BM25 files) | builder RSS MB | build s |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results:
        mem = (
            f"{r['serving_indexes_mb']} ({r['faiss_files_mb']} + {r['bm25_files_mb']})" if r["items"] else "–"
        )
        print(
            f"| {r['items']:,} | {r['p50_ms']} | {r['p95_ms']} | {r['p50_ms'] / base:.2f}x "
            f"| {mem} | {r['rss_mb']:.0f} | {r['build_s'].get('total', 0):.0f} |"
        )
    print("\nmean stage ms:", {r["items"]: r["mean_stage_ms"] for r in results})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "search_latency.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
