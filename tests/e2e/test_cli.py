"""The real command line end to end: subprocesses running the bundled model, CliRunner for cheap cases.

One generated folder is ingested once per module and shared; tests that change the data work on a copy
of that data directory. Every ``--json`` stdout must be JSON Lines and nothing else.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dbs import data_dirs, db_env
from PIL import Image, ImageOps
from real_cli import Run, cli, command_names, json_lines
from typer.testing import CliRunner

from imgaudit.cli.main import app
from imgaudit.testing.fakes import jpeg_bytes, textured_image

# textured_image pictures look alike to the real descriptor (cosine ~0.8 on average between seeds, some
# pairs above the 0.86 duplicate threshold). These seeds were picked so that every pair stays below 0.7.
ORIGINAL_SEEDS = (278, 371, 246, 126, 98, 114)
UNRELATED_SEED = 335
SIZE = (640, 480)

runner = CliRunner()


# -- helpers ---------------------------------------------------------------------------------------------


def invoke(*args: str | Path, **env: str) -> Any:
    """The CLI in-process (cheap commands only: config, stats, prompts, errors)."""
    if "IMGAUDIT_DATA_DIR" in env:
        env = {**db_env(Path(env["IMGAUDIT_DATA_DIR"])), **env}
    return runner.invoke(app, [str(a) for a in args], env=env or None)


def one_line(text: str) -> str:
    return " ".join(text.split())


def json_error(stderr: str) -> dict[str, str]:
    """An error in --json mode: exactly one JSON object on stderr, ``{"error": {"reason", "message"}}``."""
    (line,) = stderr.splitlines()
    row = json.loads(line)
    assert set(row) == {"error"} and set(row["error"]) == {"reason", "message"}, row
    return row["error"]


# -- the sample folder -----------------------------------------------------------------------------------


@dataclass
class Sample:
    root: Path  # holds imgs/ and probes/
    folder: Path  # what gets ingested
    probes: Path  # images that are never ingested
    answers: dict[str, str | None]  # relative name in folder -> original name (None: an original)

    def img(self, name: str) -> str:
        return str((self.folder / name).resolve())


def make_sample(root: Path) -> Sample:
    """6 originals; a byte copy, a downscaled re-encode, a mirror and an 85% crop (in a subfolder);
    a truncated JPEG and a text file named .jpg. Probes: a resized o5 and an unrelated picture."""
    folder, probes = root / "imgs", root / "probes"
    (folder / "nested").mkdir(parents=True)
    probes.mkdir()
    answers: dict[str, str | None] = {}
    for i, seed in enumerate(ORIGINAL_SEEDS):
        (folder / f"o{i}.jpg").write_bytes(jpeg_bytes(textured_image(seed, SIZE), quality=92))
        answers[f"o{i}.jpg"] = None

    def load(name: str) -> Image.Image:
        return Image.open(folder / name).convert("RGB")

    (folder / "z_o0_copy.jpg").write_bytes((folder / "o0.jpg").read_bytes())
    (folder / "z_o1_small.jpg").write_bytes(jpeg_bytes(load("o1.jpg").resize((320, 240)), quality=60))
    (folder / "z_o2_mirror.jpg").write_bytes(jpeg_bytes(ImageOps.mirror(load("o2.jpg")), quality=85))
    w, h = SIZE
    dx, dy = int(w * 0.075), int(h * 0.075)  # keeps 85% of each side
    crop = load("o3.jpg").crop((dx, dy, w - dx, h - dy))
    (folder / "nested" / "z_o3_crop.jpg").write_bytes(jpeg_bytes(crop, quality=90))
    answers.update(
        {
            "z_o0_copy.jpg": "o0.jpg",
            "z_o1_small.jpg": "o1.jpg",
            "z_o2_mirror.jpg": "o2.jpg",
            "nested/z_o3_crop.jpg": "o3.jpg",
        }
    )
    (folder / "zz_truncated.jpg").write_bytes((folder / "o4.jpg").read_bytes()[:600])
    (folder / "zz_text.jpg").write_text("this is not an image\n")
    (probes / "o5_resized.jpg").write_bytes(jpeg_bytes(load("o5.jpg").resize((400, 300)), quality=70))
    (probes / "unrelated.jpg").write_bytes(jpeg_bytes(textured_image(UNRELATED_SEED, SIZE), quality=90))
    return Sample(root, folder, probes, answers)


N_FILES = 12
N_ORIGINALS = len(ORIGINAL_SEEDS)
N_COPIES = 4
N_BROKEN = 2


@dataclass
class Ingested:
    sample: Sample
    data_dir: Path
    first: Run
    second: Run
    stats: dict[str, Any]


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Sample:
    return make_sample(tmp_path_factory.mktemp("cli"))


@pytest.fixture(scope="module")
def ingested(sample: Sample) -> Ingested:
    """The sample folder ingested twice (the second run must find nothing to do), then ``stats``."""
    root = sample.root
    data = root / "data"
    first = cli("ingest", sample.folder, "--json", data_dir=data, cwd=root)
    second = cli("ingest", sample.folder, "--json", "--batch-size", "4", data_dir=data, cwd=root)
    (stats,) = cli("stats", "--json", data_dir=data, cwd=root).rows
    return Ingested(sample, data, first, second, stats)


def copy_data(ingested: Ingested, dest: Path) -> Path:
    """A private copy of the shared data directory (the images themselves stay where they are)."""
    copy = Path(shutil.copytree(ingested.data_dir, dest / "data"))
    data_dirs.copy(ingested.data_dir, copy)  # and of its database, on a server backend
    return copy


# -- ingest ----------------------------------------------------------------------------------------------


@pytest.mark.model
def test_ingest_folder_json(ingested: Ingested) -> None:
    (row,) = ingested.first.rows
    assert row["event"] == "ingest"
    assert row["enqueued"] == row["processed"] == N_FILES and row["skipped_known"] == 0
    assert row["duplicates"] == N_COPIES
    assert row["failed"] == N_BROKEN
    assert row["errors"] == {"corrupt": 1, "not_an_image": 1}
    assert sum(row["duplicate_stages"].values()) == N_COPIES
    assert row["duplicate_stages"]["exact_bytes"] == 1  # the byte-identical copy
    assert set(row["timings"]) >= {"load+decode+hash", "embed", "verify", "decide+store"}
    assert row["seconds"] > 0 and row["images_per_second"] > 0
    # --json: no progress bar anywhere, and nothing but the JSON line on stdout
    assert "img/s" not in ingested.first.stderr and "━" not in ingested.first.stderr


@pytest.mark.model
def test_ingest_again_is_a_no_op(ingested: Ingested) -> None:
    (row,) = ingested.second.rows
    assert row["enqueued"] == 0
    assert row["skipped_known"] == N_FILES
    assert row["processed"] == row["duplicates"] == row["failed"] == 0
    assert row["errors"] == {} and row["duplicate_stages"] == {}


@pytest.mark.model
def test_stats(ingested: Ingested) -> None:
    s = ingested.stats
    assert s["total"] == N_FILES
    assert s["status"] == {"done": N_FILES - N_BROKEN, "failed_permanent": N_BROKEN}
    assert s["decision"] == {"unique": N_ORIGINALS, "duplicate": N_COPIES}
    assert s["error"] == {"corrupt": 1, "not_an_image": 1}
    assert s["indexed"] == N_ORIGINALS
    assert sum(s["duplicate_stage"].values()) == N_COPIES
    assert s["duplicate_rate"] == pytest.approx(N_COPIES / (N_FILES - N_BROKEN), abs=1e-4)


# -- check -----------------------------------------------------------------------------------------------


@pytest.mark.model
def test_check_copies_and_unrelated(ingested: Ingested) -> None:
    sample = ingested.sample
    run = cli(
        "check",
        sample.img("nested/z_o3_crop.jpg"),
        "probes/o5_resized.jpg",
        sample.probes / "unrelated.jpg",
        "--json",
        data_dir=ingested.data_dir,
        cwd=sample.root,
    )
    crop, resized, unrelated = run.rows

    # a known copy: its bytes are in the store, reported against the original (not the copy itself)
    assert crop["image"] == sample.img("nested/z_o3_crop.jpg")
    assert crop["decision"] == "duplicate" and crop["stage"] == "exact_bytes"
    assert crop["original"] == sample.img("o3.jpg") and isinstance(crop["duplicate_of"], int)

    # a new re-encode of o5: found by the perceptual stages; relative paths are resolved against cwd
    assert resized["image"] == str((sample.probes / "o5_resized.jpg").resolve())
    assert resized["decision"] == "duplicate"
    assert resized["stage"] in {"phash", "embedding", "verified"}
    assert resized["original"] == sample.img("o5.jpg")
    assert 0.86 <= resized["score"] <= 1.0 + 1e-6

    assert unrelated["decision"] == "unique" and unrelated["stage"] == "none"
    assert unrelated["duplicate_of"] is None and unrelated["original"] is None
    assert unrelated["score"] < 0.86  # nearest cosine

    (stats,) = cli("stats", "--json", data_dir=ingested.data_dir, cwd=sample.root).rows
    assert stats == ingested.stats  # check stores nothing


@pytest.mark.model
def test_check_failures_exit_1_but_report_every_image(ingested: Ingested) -> None:
    sample = ingested.sample
    missing = sample.root / "no_such_image.jpg"
    run = cli(
        "check",
        missing,
        sample.img("zz_truncated.jpg"),
        sample.img("zz_text.jpg"),
        sample.probes / "o5_resized.jpg",
        "--json",
        data_dir=ingested.data_dir,
        cwd=sample.root,
        expect=1,
    )
    gone, truncated, text, good = run.rows
    assert gone["image"] == str(missing) and gone["status"] == "failed"
    assert gone["error_reason"] and "no such file" in gone["error"]
    assert truncated["status"] == "failed" and truncated["error_reason"] == "corrupt"
    assert text["status"] == "failed" and text["error_reason"] == "not_an_image"
    assert "status" not in good and good["decision"] == "duplicate"  # the others still get an answer
    assert good["original"] == sample.img("o5.jpg")


# -- search ----------------------------------------------------------------------------------------------


@pytest.mark.model
def test_search_ranks_the_original_first(ingested: Ingested) -> None:
    sample = ingested.sample
    run = cli(
        "search",
        "--image",
        sample.folder / "z_o2_mirror.jpg",
        "--top-k",
        "3",
        "--json",
        data_dir=ingested.data_dir,
        cwd=sample.root,
    )
    assert [r["rank"] for r in run.rows] == [1, 2, 3]
    # the original first, then its recorded copy (the probe itself, ingested as a duplicate of o2)
    assert [r["uri"] for r in run.rows[:2]] == [sample.img("o2.jpg"), sample.img("z_o2_mirror.jpg")]
    assert run.rows[0]["similarity"]["visual"] > 0.86
    cosines = [r["similarity"]["visual"] for r in run.rows]
    assert cosines[2] < cosines[0] - 0.1
    scores = [r["score"] for r in run.rows]
    assert scores == sorted(scores, reverse=True) and len({r["id"] for r in run.rows}) == 3
    assert all("visually similar" in " ".join(r["why"]) for r in run.rows)


# -- index rebuild, reset --------------------------------------------------------------------------------


@pytest.mark.model
def test_index_rebuild_after_losing_the_index_files(ingested: Ingested, tmp_path: Path) -> None:
    sample = ingested.sample
    data = copy_data(ingested, tmp_path)
    snapshots = list((data / "index").glob("snapshot-*"))
    assert snapshots
    for snap in snapshots:
        shutil.rmtree(snap)
    (row,) = cli("index", "rebuild", "--json", data_dir=data, cwd=tmp_path).rows
    assert row == {"event": "index_rebuild", "indexed": N_ORIGINALS, "searchable": N_ORIGINALS + N_COPIES}
    assert any((data / "index").iterdir())
    # the rebuilt index still finds a copy that is not in the store (so needs the vector/hash index)
    resized, unrelated = cli(
        "check",
        sample.probes / "o5_resized.jpg",
        sample.probes / "unrelated.jpg",
        "--json",
        data_dir=data,
        cwd=tmp_path,
    ).rows
    assert resized["decision"] == "duplicate" and resized["original"] == sample.img("o5.jpg")
    assert unrelated["decision"] == "unique"


@pytest.mark.model
def test_reset(ingested: Ingested, tmp_path: Path) -> None:
    sample = ingested.sample
    data = copy_data(ingested, tmp_path)
    assert len(list((data / "thumbs").rglob("*.jpg"))) == N_ORIGINALS

    # without --yes it asks; answering no keeps everything
    result = runner.invoke(app, ["reset"], input="n\n", env={"IMGAUDIT_DATA_DIR": str(data), **db_env(data)})
    assert result.exit_code == 1
    assert json.loads(invoke("stats", "--json", IMGAUDIT_DATA_DIR=str(data)).stdout)["total"] == N_FILES

    (row,) = cli("reset", "--yes", "--json", data_dir=data, cwd=tmp_path).rows
    assert row == {"event": "reset", "data_dir": str(data)}
    (stats,) = cli("stats", "--json", data_dir=data, cwd=tmp_path).rows
    assert stats["total"] == stats["indexed"] == 0
    assert stats["status"] == stats["decision"] == stats["error"] == {}
    assert stats["duplicate_rate"] == 0.0
    assert list((data / "thumbs").rglob("*.jpg")) == []
    assert (sample.folder / "o0.jpg").is_file()  # the images themselves are untouched


# -- URL lists -------------------------------------------------------------------------------------------


@dataclass
class Server:
    base: str  # http://127.0.0.1:PORT/
    requests: list[str]  # paths requested so far


@pytest.fixture(scope="module")
def server(sample: Sample) -> Iterator[Server]:
    """The sample folder over HTTP on a loopback port."""
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            super().do_GET()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    handler = functools.partial(Handler, directory=str(sample.folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield Server(f"http://127.0.0.1:{httpd.server_address[1]}/", requests)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def url_list(path: Path, base: str) -> Path:
    """Absolute URLs and CDN-relative paths (with and without a leading slash), a 404, a non-image."""
    path.write_text(
        "# product feed\n"
        f"{base}o0.jpg\n"
        "/o1.jpg\n"
        "o2.jpg\n"
        "  o3.jpg  \n"
        "nested/z_o3_crop.jpg\n"
        f"{base}z_o0_copy.jpg\n"
        f"{base}missing.jpg\n"
        "\n"
        f"{base}zz_text.jpg\n"
    )
    return path


N_URLS = 8


def stats_of(data_dir: Path) -> dict[str, Any]:
    result = invoke("stats", "--json", IMGAUDIT_DATA_DIR=str(data_dir))
    assert result.exit_code == 0, result.output
    (row,) = json_lines(result.stdout)
    return row


@pytest.mark.model
def test_ingest_url_list_with_cdn_base_from_toml(server: Server, tmp_path: Path) -> None:
    data = tmp_path / "urldata"
    config = tmp_path / "conf.toml"
    config.write_text(f'data_dir = "{data}"\n\n[fetch]\nallow_private = true\ncdn_base = "{server.base}"\n')
    urls = url_list(tmp_path / "urls.txt", server.base)

    (row,) = cli(
        "ingest", urls, "--config", config, "--json", data_dir=None, cwd=tmp_path, **db_env(data)
    ).rows
    assert row["enqueued"] == row["processed"] == N_URLS
    assert row["failed"] == 2 and row["errors"] == {"http_status": 1, "not_an_image": 1}
    assert row["duplicates"] == 2 and row["duplicate_stages"].get("exact_bytes") == 1
    for name in ("/o0.jpg", "/o1.jpg", "/o2.jpg", "/o3.jpg", "/nested/z_o3_crop.jpg", "/missing.jpg"):
        assert name in server.requests  # relative entries were joined to cdn_base with one slash

    stats = stats_of(data)  # the data_dir from the TOML file was used
    assert stats["total"] == N_URLS and stats["indexed"] == 4
    assert stats["error"] == {"http_status": 1, "not_an_image": 1}
    assert stats["status"] == {"done": 6, "failed_permanent": 2}  # a 404 is not retried

    # check accepts URLs too, and names the original by its URL
    (mirror,) = cli(
        "check",
        f"{server.base}z_o2_mirror.jpg",
        "--config",
        config,
        "--json",
        data_dir=None,
        cwd=tmp_path,
        **db_env(data),
    ).rows
    assert mirror["decision"] == "duplicate" and mirror["original"] == f"{server.base}o2.jpg"


@pytest.mark.model
def test_url_list_to_loopback_is_refused_without_allow_private(server: Server, tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = tmp_path / "conf.toml"
    config.write_text(f'[fetch]\ncdn_base = "{server.base}"\n')
    urls = url_list(tmp_path / "urls.txt", server.base)
    before = len(server.requests)

    (row,) = cli("ingest", urls, "--config", config, "--json", data_dir=data, cwd=tmp_path).rows
    assert row["processed"] == row["failed"] == N_URLS
    assert row["errors"] == {"blocked_address": N_URLS} and row["duplicates"] == 0
    assert len(server.requests) == before  # refused before connecting

    stats = stats_of(data)
    assert stats["status"] == {"failed_permanent": N_URLS} and stats["error"] == {"blocked_address": N_URLS}


@pytest.mark.model
def test_relative_urls_without_cdn_base_are_refused_line_by_line(server: Server, tmp_path: Path) -> None:
    """Each relative line without fetch.cdn_base is its own recorded failure; the absolute ones proceed."""
    data = tmp_path / "data"
    urls = url_list(tmp_path / "urls.txt", server.base)
    run = cli("enqueue", urls, "--json", data_dir=data, cwd=tmp_path)
    (row,) = json_lines(run.stdout)
    assert row["enqueued"] == 4 and row["refusals"] == {"relative_url": 4}
    assert stats_of(data)["total"] == 8


# -- configuration ---------------------------------------------------------------------------------------


def show(*args: str | Path, **env: str) -> dict[str, Any]:
    result = invoke("config", "show", *args, "--json", **env)
    assert result.exit_code == 0, result.output
    (row,) = json_lines(result.stdout)
    return row


def test_config_show_reflects_file_and_env(tmp_path: Path) -> None:
    config = tmp_path / "conf.toml"
    config.write_text(
        'data_dir = "elsewhere"\n\n[dedup]\nphash_max_distance = 6\nembed_duplicate = 0.9\n\n'
        '[fetch]\ncdn_base = "https://cdn.example.com/img/"\n'
    )
    row = show("--config", config)
    assert row["config_file"] == str(config)
    s = row["settings"]
    assert s["data_dir"] == "elsewhere" and s["fetch"]["cdn_base"] == "https://cdn.example.com/img/"
    assert s["dedup"]["phash_max_distance"] == 6 and s["dedup"]["embed_duplicate"] == 0.9
    assert s["dedup"]["embed_verify"] == 0.6 and s["fetch"]["allow_private"] is False  # defaults

    s = show("--config", config, IMGAUDIT_DEDUP__PHASH_MAX_DISTANCE="2")["settings"]
    assert s["dedup"]["phash_max_distance"] == 2  # the environment wins over the file
    assert s["dedup"]["embed_duplicate"] == 0.9  # the rest of the file still applies

    row = show()
    assert row["config_file"] == "(defaults and environment only)"
    assert row["settings"]["dedup"]["phash_max_distance"] == 4


def test_config_file_lookup_order(tmp_path: Path) -> None:
    (tmp_path / "imgaudit.toml").write_text("[dedup]\ntop_k = 7\n")  # cwd is tmp_path
    other = tmp_path / "other.toml"
    other.write_text("[dedup]\ntop_k = 9\n")
    row = show()
    assert row["config_file"] == "imgaudit.toml" and row["settings"]["dedup"]["top_k"] == 7
    assert show(IMGAUDIT_CONFIG=str(other))["settings"]["dedup"]["top_k"] == 9
    assert show("--config", other)["settings"]["dedup"]["top_k"] == 9
    assert "IMGAUDIT_CONFIG" not in os.environ  # --config does not leak into the environment


def test_invalid_env_value_is_one_clear_error(tmp_path: Path) -> None:
    run = cli(
        "config", "show", "--json", data_dir=None, cwd=tmp_path, expect=1, IMGAUDIT_DEDUP__EMBED_DUPLICATE="5"
    )
    assert run.stdout == ""
    error = json_error(run.stderr)
    assert error["reason"] == "config" and error["message"].startswith("invalid configuration:")
    assert "dedup.embed_duplicate" in error["message"] and "less than or equal to 1" in error["message"]
    # every command validates first (stats needs no model, so this is quick)
    run = cli(
        "stats",
        "--json",
        data_dir=tmp_path / "d",
        cwd=tmp_path,
        expect=1,
        IMGAUDIT_DEDUP__EMBED_DUPLICATE="5",
    )
    assert run.stdout == "" and "dedup.embed_duplicate" in json_error(run.stderr)["message"]
    run = cli("stats", data_dir=tmp_path / "d", cwd=tmp_path, expect=1, IMGAUDIT_DEDUP__EMBED_DUPLICATE="5")
    assert one_line(run.stderr).startswith("error: invalid configuration:")  # text mode: one line


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("bogus = 1\n", "bogus"),
        ("[dedup]\nembed_verify = 0.95\n", "embed_verify"),
        ("[fetch]\nconcurrency = 0\n", "fetch.concurrency"),
    ],
)
def test_invalid_config_file_is_a_clean_error(tmp_path: Path, content: str, needle: str) -> None:
    config = tmp_path / "conf.toml"
    config.write_text(content)
    result = invoke("config", "show", "--config", config, "--json")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert result.stdout == ""
    message = json_error(result.stderr)["message"]
    assert message.startswith("invalid configuration") and needle in message


def test_missing_config_file(tmp_path: Path) -> None:
    result = invoke("config", "show", "--config", tmp_path / "nope.toml")
    assert result.exit_code == 2  # usage error from the option's exists=True
    result = invoke("config", "show", IMGAUDIT_CONFIG=str(tmp_path / "nope.toml"))
    assert result.exit_code == 1 and "config file not found" in one_line(result.stderr)


# -- demo ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Run]:
    root = tmp_path_factory.mktemp("demo")
    # The demo's store is the SQLite file inside --out, whatever the backend under test.
    run = cli(
        "demo", "--out", root / "out", "--json", data_dir=root / "envdata", cwd=root, IMGAUDIT_DATABASE_URL=""
    )
    return root, run


@pytest.mark.model
def test_demo(demo: tuple[Path, Run]) -> None:
    root, run = demo
    (row,) = run.rows
    assert row["event"] == "demo"
    report = Path(row["report"])
    assert report == root / "out" / "report.html" and report.is_file()
    html = report.read_text()
    assert html.count("<img") >= 2 and html.count("<img") >= 2 * min(len(row["pairs"]), 10)
    e = row["evaluation"]
    assert e["false_positives"] == 0
    assert e["missed"] <= 2 and e["true_positives"] == e["expected"] - e["missed"]
    s = row["summary"]
    assert s["processed"] == row["samples"] > 0
    assert s["failed"] == 2 and set(s["errors"]) <= {"corrupt", "not_an_image"}
    assert s["duplicates"] == len(row["pairs"]) >= e["true_positives"]
    assert sum(s["moderation"].values()) == s["processed"] - s["failed"]  # every decoded image moderated
    assert Path(row["sample_dir"]).is_dir() and (root / "out" / "data" / "imgaudit.db").is_file()
    assert not (root / "envdata").exists()  # the demo keeps its data inside --out


# -- regressions: bad options and config files are clean errors ------------------------------------------


def test_config_error_fits_on_one_line() -> None:
    result = invoke("config", "show", IMGAUDIT_DEDUP__EMBED_DUPLICATE="5", COLUMNS="80")
    assert result.exit_code == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_malformed_toml_is_a_clean_error(tmp_path: Path) -> None:
    config = tmp_path / "conf.toml"
    config.write_text("[dedup\nphash_max_distance = 6\n")
    result = invoke("config", "show", "--config", config)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception


def test_unknown_key_in_a_section_is_rejected(tmp_path: Path) -> None:
    config = tmp_path / "conf.toml"
    config.write_text("[dedup]\nphash_max_distnce = 6\n")  # sic
    result = invoke("config", "show", "--config", config)
    assert result.exit_code == 1 and "phash_max_distnce" in result.stderr


@pytest.mark.model
def test_search_top_k_zero_is_a_usage_error(ingested: Ingested) -> None:
    result = runner.invoke(
        app,
        ["search", "--image", ingested.sample.img("o0.jpg"), "--top-k", "0"],
        env={"IMGAUDIT_DATA_DIR": str(ingested.data_dir), **db_env(ingested.data_dir)},
    )
    assert result.exit_code in (1, 2) and isinstance(result.exception, SystemExit), result.exception


@pytest.mark.model
def test_ingest_batch_size_zero_is_refused(sample: Sample, tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["ingest", str(sample.folder), "--json", "--batch-size", "0"],
        env={"IMGAUDIT_DATA_DIR": str(tmp_path / "data"), **db_env(tmp_path / "data")},
    )
    if result.exit_code == 0:
        (row,) = json_lines(result.stdout)
        assert row["processed"] == row["enqueued"]
    else:
        assert result.exit_code == 2


@pytest.mark.model
def test_demo_summary_counts_enqueued(demo: tuple[Path, Run]) -> None:
    (row,) = demo[1].rows
    assert row["summary"]["enqueued"] == row["samples"]


# -- first-hour bugs -------------------------------------------------------------------------------------


def test_config_show_on_default_settings() -> None:
    """The README's own example: unset values (clip paths) are comments in TOML and null in JSON."""
    import tomllib

    result = invoke("config", "show")
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert tomllib.loads(text)["dedup"]["phash_max_distance"] == 4  # valid TOML, comments and all
    clip = text[text.index("[clip]") :]
    assert clip.startswith("[clip]\n# image_model: not set\n# text_model: not set\n")
    assert "# data dir: " in text and "# database: sqlite:///" in text
    assert show()["settings"]["clip"]["image_model"] is None


def test_data_dir_is_per_user_unless_set(tmp_path: Path) -> None:
    """Default: the per-user data directory (XDG_DATA_HOME here, see conftest), whatever the current
    directory; a ./data holding imgaudit.db is still used; IMGAUDIT_DATA_DIR wins over both."""
    xdg = Path(os.environ["XDG_DATA_HOME"])
    assert xdg.is_relative_to(tmp_path)  # conftest keeps tests out of the real user data directory
    row = show()
    assert row["data_dir"] == str(xdg / "imgaudit") and row["data_dir_origin"] == "per-user default"
    assert row["database"] == f"sqlite:///{xdg / 'imgaudit' / 'imgaudit.db'}"
    (tmp_path / "data").mkdir()
    assert show()["data_dir"] == str(xdg / "imgaudit")  # an empty ./data is not a store
    (tmp_path / "data" / "imgaudit.db").touch()
    row = show()
    assert row["data_dir"] == str(tmp_path / "data") and row["data_dir_origin"] == "./data holds imgaudit.db"
    row = show(IMGAUDIT_DATA_DIR=str(tmp_path / "elsewhere"))
    assert row["data_dir"] == str(tmp_path / "elsewhere") and row["data_dir_origin"] == "configured"
    row = show(IMGAUDIT_DATABASE_URL="postgresql://imgaudit:s3cret@db.internal:5432/imgaudit")
    assert row["database"] == "postgresql://imgaudit:***@db.internal:5432/imgaudit"


def test_stats_says_which_store_it_reads(tmp_path: Path) -> None:
    data = tmp_path / "d"
    (row,) = json_lines(invoke("stats", "--json", IMGAUDIT_DATA_DIR=str(data)).stdout)
    server = db_env(data).get("IMGAUDIT_DATABASE_URL")
    if server is None:
        assert row["database"] == f"sqlite:///{data / 'imgaudit.db'}"
    else:  # never the password
        from sqlalchemy.engine import make_url

        assert row["database"] == make_url(server).render_as_string(hide_password=True)
    assert row["data_dir"] == str(data)
    result = invoke("stats", IMGAUDIT_DATA_DIR=str(data))
    assert (
        result.exit_code == 0 and f"data dir {data} (configured); database {row['database']}" in result.stdout
    )


def test_version() -> None:
    from importlib.metadata import version

    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout == f"imgaudit {version('imgaudit')}\n"


def test_help_shows_flags_as_flags() -> None:
    """No ``<bool>`` after --json, --yes, --help...: a flag takes no value."""
    for command in ["", *command_names()]:
        result = invoke(*command.split(), "--help", COLUMNS="200")
        assert result.exit_code == 0, (command, result.output)
        assert "--help" in result.stdout and "<bool>" not in result.stdout, (command, result.stdout)
    assert "<int range>" in invoke("groups", "--help", COLUMNS="200").stdout  # valued options keep theirs


def test_choices_are_validated() -> None:
    result = invoke("groups", "--kind", "foo", COLUMNS="200")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "'foo' is not one of 'duplicates', 'similar'" in one_line(result.stderr)


def test_errors_in_json_mode_are_one_json_object(tmp_path: Path) -> None:
    result = invoke("groups", "--kind", "foo", "--json")  # a usage error, before the command runs
    assert result.exit_code == 2 and result.stdout == ""
    assert json_error(result.stderr)["reason"] == "usage"
    result = invoke("explain", "nope", "--json", IMGAUDIT_DATA_DIR=str(tmp_path / "d"))
    assert result.exit_code == 1 and result.stdout == ""
    assert json_error(result.stderr) == {"reason": "not_found", "message": "no item matches 'nope'"}
    result = invoke("stats", "--since", "yesterday", "--json", IMGAUDIT_DATA_DIR=str(tmp_path / "d"))
    assert result.exit_code == 2 and "yesterday" in json_error(result.stderr)["message"]
    result = invoke("explain", "nope", IMGAUDIT_DATA_DIR=str(tmp_path / "d"))  # text mode: one line
    assert result.exit_code == 1 and one_line(result.stderr) == "error: no item matches 'nope'"


@pytest.mark.model
def test_stats_text_shows_moderation(ingested: Ingested) -> None:
    run = cli("stats", data_dir=ingested.data_dir, cwd=ingested.sample.root)
    moderation = ingested.stats["moderation"]
    assert moderation and sum(moderation.values()) == N_FILES - N_BROKEN
    for decision, n in moderation.items():  # a row of the table: group, key, count
        assert re.search(rf"moderation\W+{decision}\W+{n}\b", run.stdout), run.stdout


@pytest.mark.model
def test_first_json_run_prints_only_json(sample: Sample, tmp_path: Path) -> None:
    """The first command in a fresh cache exports the visual model; the library's chatter must not reach
    stdout in --json mode."""
    cache = tmp_path / "cache"
    run = cli(
        "check",
        sample.img("o0.jpg"),
        "--json",
        data_dir=tmp_path / "d",
        cwd=tmp_path,
        IMGAUDIT_CACHE_DIR=str(cache),
    )
    assert (cache / "efficientnet-lite0-v1.onnx").is_file()  # it did export
    assert len(run.rows) == 1 and "Loaded pretrained weights" not in run.stdout


@pytest.mark.model
def test_models_prepare_is_idempotent(tmp_path: Path) -> None:
    """`make install` runs it; a second run finds everything in place and says so, quickly."""
    first = cli("models", "prepare", "--json", data_dir=None, cwd=tmp_path)
    assert [r["step"] for r in first.rows] == ["visual_model", "label_space"]
    assert all(Path(r["path"]).is_file() for r in first.rows)
    again = cli("models", "prepare", "--json", data_dir=None, cwd=tmp_path)
    assert [r["built"] for r in again.rows] == [False, False]
    assert [r["path"] for r in again.rows] == [r["path"] for r in first.rows]
    text = cli("models", "prepare", data_dir=None, cwd=tmp_path)
    assert "everything is ready" in text.stdout and "embed" not in text.stderr
    assert not (Path(os.environ["XDG_DATA_HOME"]) / "imgaudit").exists()  # it opens no store


def _fake_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """bootstrap with the fake visual and text models: instant, whatever the cache holds."""
    import imgaudit.bootstrap
    from imgaudit.models.visual import VisualEncoder
    from imgaudit.testing.fakes import FakeTextEncoder, FakeVisualSession

    monkeypatch.setattr(imgaudit.bootstrap, "build_encoder", lambda s: VisualEncoder(FakeVisualSession()))
    monkeypatch.setattr(imgaudit.bootstrap, "_text_encoder", lambda threads: FakeTextEncoder())


def test_prepare_reports_progress_and_then_has_nothing_to_do(tmp_path: Path) -> None:
    from imgaudit.bootstrap import prepare
    from imgaudit.config import load_settings
    from imgaudit.models.export import VISUAL_MODEL_NAME
    from imgaudit.testing.fakes import FakeTextEncoder

    settings = load_settings(data_dir=tmp_path / "d", cache_dir=tmp_path / "cache")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / VISUAL_MODEL_NAME).write_bytes(b"exported before")
    calls: list[tuple[str, int, int]] = []
    steps = prepare(settings, lambda *c: calls.append(c), text=FakeTextEncoder())
    assert [(s.step, s.built) for s in steps] == [("visual_model", False), ("label_space", True)]
    assert Path(steps[1].path).is_file() and {c[0] for c in calls} == {"label_space"}
    done = [c[1] for c in calls]
    assert done == sorted(done) and done[-1] == calls[-1][2] > 1000 and len(calls) > 3
    calls.clear()
    again = prepare(settings, lambda *c: calls.append(c), text=FakeTextEncoder())
    assert [s.built for s in again] == [False, False] and not calls
    assert not (tmp_path / "d").exists()


def test_prepare_builds_the_label_space_search_uses(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str
) -> None:
    from imgaudit.bootstrap import label_space, search_service
    from imgaudit.config import load_settings

    _fake_models(monkeypatch)
    settings = load_settings(data_dir=tmp_path / "d", cache_dir=tmp_path / "cache", database_url=database_url)
    from imgaudit.testing.fakes import FakeTextEncoder

    with search_service(settings) as svc:
        assert svc.indexes.label_space.cache_path() == label_space(settings, FakeTextEncoder()).cache_path()
    # and with the real text model, as `models prepare` builds it (its name needs no model load)
    real = label_space(settings).encoder.name
    assert real.startswith("multilingual-e5-small") and str(label_space(settings).cache_path()).endswith(
        ".npy"
    )


def test_search_builds_the_label_space_with_a_progress_bar(
    monkeypatch: pytest.MonkeyPatch, sample_image: Path, tmp_path: Path
) -> None:
    _fake_models(monkeypatch)
    env = {"IMGAUDIT_DATA_DIR": str(tmp_path / "d"), "IMGAUDIT_CACHE_DIR": str(tmp_path / "cache")}
    result = invoke("search", "--image", sample_image, **env)
    assert result.exit_code == 0, result.output
    assert "embed the label space for search" in result.stderr and "models prepare" in result.stderr
    assert list((tmp_path / "cache" / "label_space").glob("*.npy"))
    result = invoke("search", "--image", sample_image, **env)
    assert result.exit_code == 0 and "label space" not in result.stderr  # cached: no bar, no note


@pytest.fixture
def sample_image(tmp_path: Path) -> Path:
    path = tmp_path / "probe.jpg"
    path.write_bytes(jpeg_bytes(textured_image(1, (320, 240))))
    return path
