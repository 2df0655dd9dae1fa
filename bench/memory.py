"""Peak memory of ``imgaudit ingest``, decode workers included: large files and hostile URLs, in one run.

    python bench/memory.py                      # 40 files of ~29 MB, then the URL mix (~5 minutes)
    python bench/memory.py --files 10 --urls 10 # quicker
    python bench/memory.py --no-thread --no-urls

Each configuration runs the real CLI as a subprocess (``python -m imgaudit.cli ingest TARGET --json
--batch-size 64``, real model, moderation on) with ``IMGAUDIT_CONFIG`` pointing at a generated TOML file
and a fresh temporary data_dir; everything generated lives in a temporary directory, never in the repo.

(a) ``--files`` JPEGs of incompressible noise (quality 100, 4:2:0, side chosen for ``--file-mb``), ingested
    with the default settings (``decode.batch_max_bytes`` 256 MiB, decoding in worker processes), then
    with the baseline ``decode.batch_max_bytes`` = 64 GiB (no budget, as before it existed), then
    (unless ``--no-thread``) with ``decode.isolation = "thread"``.
(b) a list of URLs served by a local server on 127.0.0.1: a gzip-of-gzip bomb sent with
    ``Content-Encoding: gzip, gzip``, a 10^12-byte Content-Length, an endless chunked body, a slow drip
    (one byte per 0.25 s), and ``--urls`` good noise JPEGs of ``--url-side`` px; first the good URLs
    alone (the baseline), then the mix, then the mix without a batch budget. ``fetch.allowed_hosts`` is
    ``["127.0.0.1/32"]``; ``fetch.total_timeout`` and ``read_timeout`` are ``--url-timeout`` (the slow
    drip holds its batch for about (retries + 1) x total_timeout). "good done after" is the time from
    enqueueing to the last good URL's recorded result (processed_at in the store).

Memory columns: "tree peak" is the largest sum of VmRSS over the ingest process and all its descendants
(the decode workers), sampled from /proc every ``--interval`` seconds (50 ms); "ingest" and "workers" split
that same sample. A sum of RSS counts shared pages (libraries, the page cache of mapped files) once per
process, so it is an upper bound of what the tree uses; a spike shorter than the interval can be missed.
"largest HWM" is exact but per process: the kernel's high-water mark (ru_maxrss from wait4) of the
largest single process of the tree, the ingest process or any worker it reaped. Linux only (/proc).
"""

from __future__ import annotations

import argparse
import http.server
import io
import json
import os
import socketserver
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from imgaudit.testing.memory import process_tree, rss_of

ROOT = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024
NO_BUDGET = 64 * 1024 * MiB  # 64 GiB: decode.batch_max_bytes as good as unlimited
NOISE_BYTES_PER_PIXEL = 1.975  # noise at quality 100, 4:2:0 (measured: 3400 px -> 22.9 MB)
BATCH_SIZE = 64


# -- measuring a process tree -----------------------------------------------------------------------------


class TreeSampler(threading.Thread):
    """Samples the RSS of ``root`` and its descendants until stopped; kills ``root`` past ``deadline``."""

    def __init__(self, proc: subprocess.Popen[bytes], interval: float, deadline: float) -> None:
        super().__init__(daemon=True)
        self.proc, self.interval, self.deadline = proc, interval, deadline
        self.done = threading.Event()
        self.peak = self.peak_main = self.peak_workers = 0  # at the sample with the largest sum
        self.max_main = self.max_workers = self.max_procs = 0  # each on its own
        self.samples = 0
        self.timeline: list[tuple[float, int, int, int]] = []  # (seconds, ingest, workers, processes)
        self.killed = False

    def run(self) -> None:
        root, start = self.proc.pid, time.monotonic()
        while not self.done.is_set():
            pids = process_tree(root)
            rss = {pid: rss_of(pid) for pid in pids}
            main = rss.get(root, 0)
            workers = sum(rss.values()) - main
            self.samples += 1
            self.timeline.append((time.monotonic() - start, main, workers, len(pids)))
            if main + workers > self.peak:
                self.peak, self.peak_main, self.peak_workers = main + workers, main, workers
            self.max_main = max(self.max_main, main)
            self.max_workers = max(self.max_workers, workers)
            self.max_procs = max(self.max_procs, len(pids))
            if time.monotonic() > self.deadline and not self.killed:
                self.killed = True
                self.proc.kill()
            self.done.wait(self.interval)


@dataclass
class Run:
    label: str
    rc: int
    wall: float
    peak: int
    peak_main: int
    peak_workers: int
    max_main: int
    max_workers: int
    hwm: int
    procs: int
    summary: dict[str, Any]
    statuses: dict[str, int]
    rows: dict[str, tuple[str, str | None, datetime | None, datetime]] = field(default_factory=dict)
    timeline: list[tuple[float, int, int, int]] = field(default_factory=list)
    stderr: str = ""
    good_after: float = float("nan")  # part (b): seconds until the last good URL was recorded


def _config(work: Path, tag: str, decode: dict[str, object], fetch: dict[str, object]) -> Path:
    """A TOML file for one configuration; values written as JSON, which TOML reads the same way."""
    lines = [f"data_dir = {json.dumps(str(work / tag / 'data'))}"]
    for group, values in (("decode", decode), ("fetch", fetch)):
        if values:
            lines.append(f"[{group}]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    path = work / tag / "imgaudit.toml"
    path.parent.mkdir(parents=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def _parse_time(value: object) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


def ingest(
    target: Path, work: Path, tag: str, label: str, args: argparse.Namespace, **settings: dict[str, object]
) -> Run:
    config = _config(work, tag, settings.get("decode", {}), settings.get("fetch", {}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGAUDIT_")}
    env["IMGAUDIT_CONFIG"] = str(config)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", "imgaudit.cli", "ingest", str(target), "--json"]
    cmd += ["--batch-size", str(BATCH_SIZE)]
    out_path, err_path = work / tag / "stdout.txt", work / tag / "stderr.txt"
    print(f"running: {label} ...", file=sys.stderr, flush=True)
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=work / tag, stdout=out, stderr=err)
        sampler = TreeSampler(proc, args.interval, time.monotonic() + args.timeout)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)  # ru_maxrss: the largest of it and its reaped children
        wall = time.perf_counter() - t
        sampler.done.set()
        sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    lines = out_path.read_text().strip().splitlines()
    try:
        summary = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        summary = {}
    rows: dict[str, tuple[str, str | None, datetime | None, datetime]] = {}
    db = work / tag / "data" / "imgaudit.db"
    if db.is_file():
        with sqlite3.connect(db) as c:
            query = "SELECT uri, status, error_reason, processed_at, created_at FROM images"
            for uri, st, reason, processed, created in c.execute(query):
                rows[uri] = (st, reason, _parse_time(processed), _parse_time(created) or datetime.min)
    run = Run(
        label,
        proc.returncode if not sampler.killed else -9,
        wall,
        sampler.peak,
        sampler.peak_main,
        sampler.peak_workers,
        sampler.max_main,
        sampler.max_workers,
        usage.ru_maxrss * 1024,
        sampler.max_procs,
        summary,
        dict(Counter(r[0] for r in rows.values())),
        rows,
        sampler.timeline,
        err_path.read_text(errors="replace")[-3000:],
    )
    if run.rc != 0:
        print(f"{label}: exit {run.rc}{' (killed at --timeout)' if sampler.killed else ''}", file=sys.stderr)
        print(run.stderr, file=sys.stderr)
    print(
        f"  {wall:.0f} s, tree peak {run.peak / MiB:.0f} MiB, {sampler.samples} samples; "
        f"stage seconds: {summary.get('timings', {})}; errors: {summary.get('errors', {})}",
        file=sys.stderr,
        flush=True,
    )
    if args.timeline:
        args.timeline.mkdir(parents=True, exist_ok=True)
        with open(args.timeline / f"{tag}.csv", "w") as f:
            f.write("seconds,ingest_mib,workers_mib,processes\n")
            for s, main, workers, n in run.timeline:
                f.write(f"{s:.2f},{main / MiB:.1f},{workers / MiB:.1f},{n}\n")
    return run


# -- inputs -------------------------------------------------------------------------------------------------


def noise_jpeg(side: int, seed: int) -> bytes:
    """Incompressible noise as a quality-100 JPEG: its size is what a batch has to hold."""
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=100)
    return buffer.getvalue()


def side_for(megabytes: float) -> int:
    return max(16, round((megabytes * 1e6 / NOISE_BYTES_PER_PIXEL) ** 0.5 / 16) * 16)


def gzip_of_gzip(zeros_mib: int) -> bytes:
    """gzip of gzip of ``zeros_mib`` MiB of zeros, compressed as a stream (never held whole)."""
    inner = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: gzip framing
    block = bytes(MiB)
    parts = [inner.compress(block) for _ in range(zeros_mib)]
    parts.append(inner.flush())
    outer = zlib.compressobj(9, zlib.DEFLATED, 31)
    return outer.compress(b"".join(parts)) + outer.flush()


class HostileServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """Good images and hostile answers on 127.0.0.1; every loop ends by itself (``cap_seconds``)."""

    daemon_threads = True
    good: dict[str, bytes]
    bomb: bytes
    drip: bytes
    cap_seconds: float
    stopping: threading.Event
    served: Counter[str]

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients hanging up on a hostile answer are the point


class HostileHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: HostileServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _head(self, headers: dict[str, str]) -> None:
        self.send_response(200)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()

    def _until(self) -> float:
        return time.monotonic() + self.server.cap_seconds

    def do_GET(self) -> None:
        s = self.server
        path = self.path.split("?", 1)[0]
        s.served[path] += 1
        jpeg = b"\xff\xd8\xff\xe0" + bytes(65532)  # sniffs as a JPEG, then zeros
        try:
            if path in s.good:
                body = s.good[path]
                self._head({"Content-Type": "image/jpeg", "Content-Length": str(len(body))})
                self.wfile.write(body)
            elif path == "/gzip-bomb":
                self._head(
                    {
                        "Content-Type": "image/jpeg",
                        "Content-Encoding": "gzip, gzip",
                        "Content-Length": str(len(s.bomb)),
                    }
                )
                self.wfile.write(s.bomb)
            elif path == "/huge-declared":  # declares a terabyte, then sends as long as it is read
                self._head({"Content-Type": "image/jpeg", "Content-Length": str(10**12)})
                until = self._until()
                while time.monotonic() < until and not s.stopping.is_set():
                    self.wfile.write(jpeg)
                self.close_connection = True
            elif path == "/endless":
                self._head({"Content-Type": "image/jpeg", "Transfer-Encoding": "chunked"})
                until = self._until()
                while time.monotonic() < until and not s.stopping.is_set():
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(jpeg), jpeg))
                self.close_connection = True
            elif path == "/slow-drip":
                self._head({"Content-Type": "image/jpeg", "Content-Length": str(len(s.drip))})
                until = self._until()
                for i in range(len(s.drip)):
                    if time.monotonic() > until or s.stopping.wait(0.25):
                        break
                    self.wfile.write(s.drip[i : i + 1])
                    self.wfile.flush()
                self.close_connection = True
            else:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


HOSTILE = ("/gzip-bomb", "/huge-declared", "/endless", "/slow-drip")


# -- the table ------------------------------------------------------------------------------------------


def _mib(n: int) -> str:
    return f"{n / MiB:,.0f}"


def _outcome(r: Run) -> str:
    done = r.statuses.get("done", 0)
    failed = sum(v for k, v in r.statuses.items() if k.startswith("failed"))
    other = sum(r.statuses.values()) - done - failed
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(Counter(x[1] for x in r.rows.values() if x[1]).items()))
    return f"{done} / {failed}" + (f" / {other} left" if other else "") + (f" ({reasons})" if reasons else "")


def print_table(runs: list[Run], base: Run, extra: str | None = None) -> None:
    head = "| configuration | done / failed | tree peak MiB | ingest MiB | workers MiB | largest HWM MiB |"
    head += " max procs | wall s |" + (f" {extra} |" if extra else "") + " tree peak vs baseline |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in runs:
        line = (
            f"| {r.label} | {_outcome(r)} | {_mib(r.peak)} | {_mib(r.peak_main)} | {_mib(r.peak_workers)} | "
            f"{_mib(r.hwm)} | {r.procs} | {r.wall:.1f} |"
        )
        if extra:
            line += f" {r.good_after:.1f} |"
        line += f" {r.peak / base.peak:.2f}× |" if base.peak else " - |"
        print(line)


def good_after(r: Run, good: set[str]) -> float:
    """Seconds from enqueueing to the last good URL's recorded result (nan if one has none)."""
    rows = [r.rows[u] for u in good if u in r.rows]
    if len(rows) < len(good) or any(x[2] is None for x in rows):
        return float("nan")
    start = min(x[3] for x in r.rows.values())
    return max(x[2] for x in rows if x[2] is not None).timestamp() - start.timestamp()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=40, help="large noise JPEGs for part (a); 0 skips it")
    ap.add_argument("--file-mb", type=float, default=29.0, help="approximate size of each, MB (10^6 bytes)")
    ap.add_argument("--no-thread", action="store_true", help="skip decode.isolation = thread in part (a)")
    ap.add_argument("--urls", type=int, default=20, help="good JPEG URLs in part (b)")
    ap.add_argument("--url-side", type=int, default=1600, help="side of the good URL images, px")
    ap.add_argument("--no-urls", action="store_true", help="skip part (b)")
    ap.add_argument("--url-timeout", type=float, default=20.0, help="fetch.total_timeout/read_timeout, s")
    ap.add_argument("--bomb-mib", type=int, default=1024, help="zeros inside the gzip-of-gzip bomb, MiB")
    ap.add_argument("--interval", type=float, default=0.05, help="RSS sampling interval, s")
    ap.add_argument("--timeout", type=float, default=600.0, help="kill one ingest after this many seconds")
    ap.add_argument("--timeline", type=Path, default=None, help="write each run's RSS samples as CSV here")
    args = ap.parse_args()
    if not Path("/proc/self/status").is_file():
        sys.exit("needs Linux /proc")

    load_before = os.getloadavg()
    results_a: list[Run] = []
    results_b: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="imgaudit-bench-memory-") as tmp:
        work = Path(tmp)
        sizes: list[int] = []
        if args.files:
            folder = work / "files"
            folder.mkdir()
            side = side_for(args.file_mb)
            t = time.perf_counter()
            for i in range(args.files):
                data = noise_jpeg(side, seed=i)
                sizes.append(len(data))
                (folder / f"noise-{i:03d}.jpg").write_bytes(data)
            print(
                f"{args.files} files of {side}x{side} px, {np.mean(sizes) / 1e6:.1f} MB each "
                f"({sum(sizes) / MiB:,.0f} MiB in all), written in {time.perf_counter() - t:.0f} s",
                file=sys.stderr,
            )
            results_a.append(ingest(folder, work, "a-default", "default (budget 256 MiB, process)", args))
            results_a.append(
                ingest(
                    folder,
                    work,
                    "a-nobudget",
                    "baseline: batch_max_bytes 64 GiB (no budget)",
                    args,
                    decode={"batch_max_bytes": NO_BUDGET},
                )
            )
            if not args.no_thread:
                results_a.append(
                    ingest(
                        folder,
                        work,
                        "a-thread",
                        "isolation = thread (budget 256 MiB)",
                        args,
                        decode={"isolation": "thread"},
                    )
                )

        good_urls: set[str] = set()
        hostile_urls: list[str] = []
        if not args.no_urls:
            server = HostileServer(("127.0.0.1", 0), HostileHandler)
            server.good = {
                f"/good/{i:02d}.jpg": noise_jpeg(args.url_side, 1000 + i) for i in range(args.urls)
            }
            server.drip = next(iter(server.good.values()), noise_jpeg(256, 999))
            server.bomb = gzip_of_gzip(args.bomb_mib)
            server.cap_seconds = 4 * args.url_timeout + 30
            server.stopping = threading.Event()
            server.served = Counter()
            thread = threading.Thread(target=server.serve_forever, daemon=True)
            thread.start()
            base_url = f"http://127.0.0.1:{server.server_address[1]}"
            good_urls = {base_url + p for p in server.good}
            hostile_urls = [base_url + p for p in HOSTILE]
            good_list, mixed_list = work / "good.txt", work / "mixed.txt"
            good_list.write_text("\n".join(sorted(good_urls)) + "\n")
            mixed_list.write_text("\n".join(hostile_urls + sorted(good_urls)) + "\n")
            good_mb = sum(map(len, server.good.values())) / 1e6
            print(
                f"{args.urls} good URLs of {args.url_side} px ({good_mb:.0f} MB in all); gzip bomb "
                f"{len(server.bomb):,} bytes ({args.bomb_mib} MiB of zeros inside two gzip layers)",
                file=sys.stderr,
            )
            fetch = {
                "allowed_hosts": ["127.0.0.1/32"],
                "total_timeout": args.url_timeout,
                "read_timeout": args.url_timeout,
            }
            try:
                for tag, label, target, decode in (
                    ("b-good", "baseline: good URLs only", good_list, {}),
                    ("b-mixed", "good + hostile URLs (budget 256 MiB)", mixed_list, {}),
                    (
                        "b-mixed-nobudget",
                        "good + hostile, no budget (64 GiB)",
                        mixed_list,
                        {"batch_max_bytes": NO_BUDGET},
                    ),
                ):
                    run = ingest(target, work, tag, label, args, decode=decode, fetch=fetch)
                    run.good_after = good_after(run, good_urls)
                    results_b.append(run)
            finally:
                server.stopping.set()
                server.shutdown()
                server.server_close()
    load_after = os.getloadavg()

    print(f"load average (1, 5, 15 min): before {load_before}, after {load_after}; {os.cpu_count()} CPUs")
    if results_a:
        print(
            f"\n(a) {args.files} noise JPEGs of {np.mean(sizes) / 1e6:.1f} MB, "
            f"`ingest FOLDER --json --batch-size {BATCH_SIZE}`, moderation on"
        )
        print()
        print_table(results_a, results_a[1])
    if results_b:
        print(
            f"\n(b) {args.urls} good JPEG URLs of {args.url_side} px + {', '.join(HOSTILE)} on 127.0.0.1, "
            f"fetch.total_timeout {args.url_timeout:g} s"
        )
        print()
        print_table(results_b, results_b[0], extra="good done after s")
        print()
        for r in results_b[1:]:
            outcomes = ", ".join(
                f"{u.rsplit('/', 1)[1]}: {r.rows[u][0]} {r.rows[u][1] or ''}".strip()
                for u in hostile_urls
                if u in r.rows
            )
            print(f"- {r.label}: {outcomes}")


if __name__ == "__main__":
    main()
