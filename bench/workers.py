"""Worker scaling and queue overhead: one worker against two, on the same images, in one run.

    python bench/workers.py --images bench/results/set-200-2-200-0 [--database-url postgresql+psycopg://...]

Each configuration starts from an empty store, enqueues every image under --images, runs real
`imgaudit worker run --once` processes until the queue is drained, and reports wall-clock
images/s. Queue overhead = (claim + result write) / busy time, summed over the workers' batches
(batch size 100), the cost of using the database as the queue.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imgaudit.config import load_settings
from imgaudit.sources.files import FolderSource
from imgaudit.store.sql import SqlStore


def fresh_database(admin_url: str | None, work: Path, tag: str) -> str:
    if not admin_url:
        return f"sqlite:///{work / f'{tag}.db'}"
    url = make_url(admin_url)
    name = f"bench_{tag}_{os.getpid()}"
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        c.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return url.set(database=name).render_as_string(hide_password=False)


def run(images: Path, workers: int, threads: int, admin_url: str | None, work: Path) -> dict:
    tag = f"w{workers}t{threads}"
    url = fresh_database(admin_url, work, tag)
    data = work / tag
    store = SqlStore(url)
    n, _ = store.enqueue(FolderSource(images).refs(), "bench")
    store.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGAUDIT_")}
    env.update(
        IMGAUDIT_DATA_DIR=str(data),
        IMGAUDIT_DATABASE_URL=url,
        IMGAUDIT_MODELS__THREADS=str(threads),
        IMGAUDIT_WORKER__BATCH_SIZE="100",
    )
    # Load the model in each process before the clock starts: warm-up is not throughput.
    cmd = [sys.executable, "-m", "imgaudit.cli", "worker", "run", "--once", "--json"]
    t = time.perf_counter()
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    procs = [
        subprocess.Popen(
            [*cmd, "--name", f"b{i}"], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        for i in range(workers)
    ]
    outs = [json.loads(p.communicate()[0].decode().strip().splitlines()[-1]) for p in procs]
    wall = time.perf_counter() - t
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    processed = sum(o["processed"] for o in outs)
    busy = sum(o["busy_seconds"] for o in outs)
    claim = sum(o["timings"].get("claim", 0) for o in outs)
    write = sum(o["timings"].get("write", 0) for o in outs)
    startup = wall - max(o["busy_seconds"] for o in outs)
    return {
        "config": f"{workers} worker(s), {threads or 'all'} thread(s) each",
        "images": n,
        "processed": processed,
        "wall_s": wall,
        "busy_s": busy,
        "startup_s": startup,
        "images_per_s": processed / (wall - startup),
        "queue_overhead": (claim + write) / busy,
        "claim_ms_per_batch": 1000 * claim / max(1, -(-processed // 100)),
        "timings": {k: round(sum(o["timings"].get(k, 0) for o in outs), 1) for k in outs[0]["timings"]},
        "backend": make_url(url).get_backend_name(),
        "cores_used": cpu / wall,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--database-url", default=None, help="admin URL of a PostgreSQL server (default: SQLite)")
    args = ap.parse_args()
    load_settings()  # validate the environment early
    with tempfile.TemporaryDirectory() as tmp:
        results = [
            run(args.images, 1, 1, args.database_url, Path(tmp)),
            run(args.images, 1, 0, args.database_url, Path(tmp)),
            run(args.images, 2, 1, args.database_url, Path(tmp)),
        ]
    for r in results:
        print(r["config"], "- stage seconds, all workers:", r["timings"], file=sys.stderr)
    base = results[0]["images_per_s"]
    print(
        "| configuration | store | images | images/s (excl. model load) | vs one worker, one thread | "
        "CPU cores busy | queue overhead (claim + write) |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['config']} | {r['backend']} | {r['processed']} | {r['images_per_s']:.1f} | "
            f"{r['images_per_s'] / base:.2f}× | {r['cores_used']:.2f} | {r['queue_overhead']:.1%} |"
        )


if __name__ == "__main__":
    main()
