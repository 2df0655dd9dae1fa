"""Decode limits on generated hostile files: JPEG scan bombs, polyglots, TIFF tiles, the whole hostile
corpus within a time budget, AVIF/HEIC coverage, and the process sandbox (deadline, crash, memory)."""

from __future__ import annotations

import io
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features

from imgaudit.config import DecodeSettings
from imgaudit.errors import (
    DecodeCrashed,
    DecodeTimeout,
    DecodeUnavailable,
    DecompressionBomb,
    MediaError,
    NotAnImage,
    Polyglot,
    TooManyScans,
)
from imgaudit.media.decode import DEFAULT_MAX_JPEG_SCANS, count_jpeg_scans, decode
from imgaudit.media.sandbox import DecodePool
from imgaudit.testing import hostile
from imgaudit.testing.fakes import jpeg_bytes, textured_image

CASE_BUDGET_S = 2.0  # per hostile file, in process, on a shared 2-core machine


def _decode(data: bytes, **limits: int) -> object:
    return decode(data, **{"max_pixels": 64_000_000, "max_side": 512, **limits})


def _save(im: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, fmt, **params)
    return buffer.getvalue()


# --- counting scans ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "params", "scans"),
    [
        ("RGB", {}, 1),
        ("RGB", {"progressive": True}, 10),
        ("L", {"progressive": True}, 6),
        ("CMYK", {"progressive": True}, 18),
        ("RGB", {"progressive": True, "restart_marker_rows": 1}, 10),  # RSTn inside the scans
        ("RGB", {"restart_marker_blocks": 2}, 1),
    ],
)
def test_scans_of_ordinary_jpegs(mode: str, params: dict[str, object], scans: int) -> None:
    data = _save(textured_image(1, (300, 200)).convert(mode), "JPEG", **params)
    assert count_jpeg_scans(data) == scans
    _decode(data)


def test_sos_bytes_inside_metadata_do_not_count() -> None:
    data = hostile.jpeg_with_exif(padding=2000)
    at = data.index(b"A" * 100)
    tricked = data[:at] + b"\xff\xda\x00\x0c" * 25 + data[at + 100 :]  # same length: EXIF stays valid
    assert tricked.count(b"\xff\xda") == 26
    assert count_jpeg_scans(tricked) == 1
    _decode(tricked)


@pytest.mark.parametrize("scans", [1, 2, 11, 100, 101, 5000])
def test_generated_progressive_jpegs_have_exactly_their_scans(scans: int) -> None:
    data = hostile.progressive_jpeg(64, 48, scans, value=200)
    assert count_jpeg_scans(data) == scans
    assert count_jpeg_scans(data, stop_after=10) == min(scans, 11)


def test_generated_progressive_jpeg_decodes_to_its_value() -> None:
    with Image.open(io.BytesIO(hostile.progressive_jpeg(100, 75, 12, value=30))) as im:
        assert im.info.get("progressive") and im.size == (100, 75)
        assert np.all(np.asarray(im) == 30)


def test_malformed_structure_ends_the_count_quietly() -> None:
    assert count_jpeg_scans(b"\xff\xd8") == 0
    assert count_jpeg_scans(b"\xff\xd8\xff\xda\x00") == 0  # length cut off
    assert count_jpeg_scans(b"\xff\xd8\xff\xda\x00\x08abcdef") == 1  # scan data never ends
    assert count_jpeg_scans(b"\xff\xd8garbage") == 0


def test_junk_between_segments_cannot_hide_scans() -> None:
    """libjpeg skips non-marker bytes between segments (a warning only), so must the count."""
    data = hostile.progressive_jpeg(64, 64, 150)
    first_scan = data.index(b"\xff\xda")
    hidden = data[:first_scan] + b"junk" + data[first_scan:]
    assert count_jpeg_scans(hidden) == 150
    with pytest.raises(TooManyScans):
        _decode(hidden)


# --- refusing scan bombs ----------------------------------------------------------------------------------


def test_scan_bomb_is_refused_before_decoding() -> None:
    data = hostile.progressive_jpeg(8000, 8000, 20_000)  # ~2.5 MB; minutes to decode
    started = time.monotonic()
    with pytest.raises(TooManyScans) as info:
        _decode(data)
    assert time.monotonic() - started < 0.5
    assert info.value.reason == "jpeg_too_many_scans"
    assert isinstance(info.value, DecompressionBomb)
    assert "more than 100 scans" in info.value.message


def test_scan_limit_boundary_and_setting() -> None:
    assert DecodeSettings().max_jpeg_scans == DEFAULT_MAX_JPEG_SCANS == 100
    _decode(hostile.progressive_jpeg(64, 64, 100))
    with pytest.raises(TooManyScans):
        _decode(hostile.progressive_jpeg(64, 64, 101))
    _decode(hostile.progressive_jpeg(64, 64, 101), max_jpeg_scans=200)
    with pytest.raises(TooManyScans, match="more than 5 scans"):
        _decode(_save(textured_image(2, (64, 64)), "JPEG", progressive=True), max_jpeg_scans=5)


# --- polyglots and TIFF tiles ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP"])
def test_image_with_a_zip_appended_is_a_polyglot(fmt: str) -> None:
    image = _save(Image.new("RGB", (32, 32), (1, 2, 3)), fmt)
    with pytest.raises(Polyglot) as info:
        _decode(hostile.zip_polyglot(image))
    assert info.value.reason == "polyglot"


def test_trailing_bytes_that_only_look_like_zip_are_fine() -> None:
    image = _save(Image.new("RGB", (32, 32), (1, 2, 3)), "JPEG")
    fake = b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, 1, 1, 46, 0, 0)  # points at no central directory
    _decode(image + b"\0" * 100 + fake)
    _decode(image + b"motion photo trailer, not a zip" * 10)


def test_tiff_with_huge_tiles_is_refused() -> None:
    with pytest.raises(DecompressionBomb, match="tiles of 65536x65536"):
        _decode(hostile.tiff_huge_tiles())
    _decode(_save(Image.new("RGB", (300, 200), (9, 9, 9)), "TIFF", tile=(64, 64)))  # normal tiles


# --- the hostile corpus ------------------------------------------------------------------------------------

CORPUS = hostile.corpus()


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about damaged TIFF/EXIF tags
@pytest.mark.parametrize("name", sorted(CORPUS))
def test_hostile_file_ends_as_expected_within_budget(name: str) -> None:
    data, reason = CORPUS[name]
    started = time.monotonic()
    try:
        decoded = _decode(data)
        got = None
    except MediaError as exc:
        got = exc.reason
    elapsed = time.monotonic() - started
    assert elapsed < CASE_BUDGET_S, f"{elapsed:.2f} s"
    if reason == "*":
        assert got is not None
    else:
        assert got == reason
    if got is None:
        assert decoded.pixels.ndim == 3 and decoded.pixels.shape[2] == 3  # type: ignore[attr-defined]


def test_write_file_corpus(tmp_path: Path) -> None:
    expected = hostile.write_file_corpus(tmp_path / "corpus")
    assert set(expected) == set(CORPUS)
    assert {p.name for p in (tmp_path / "corpus").iterdir()} == set(expected)
    assert (tmp_path / "corpus" / "zero_bytes.jpg").read_bytes() == b""
    assert None in expected.values() and "jpeg_too_many_scans" in expected.values()


def test_animations_read_one_frame_only() -> None:
    for fmt, count in [("GIF", 5000), ("PNG", 3000), ("WEBP", 3000)]:
        data = hostile.animated(fmt, count)
        started = time.monotonic()
        decoded = _decode(data)
        assert time.monotonic() - started < 0.5, fmt
        assert tuple(decoded.pixels[8, 8]) == (0, 0, 90), fmt  # frame 0's colour


# --- format coverage ---------------------------------------------------------------------------------------


@pytest.mark.skipif(not features.check("avif"), reason="Pillow built without AVIF")
@pytest.mark.parametrize(("mode", "size"), [("RGB", (64, 48)), ("RGBA", (33, 17)), ("L", (40, 40))])
def test_avif_decodes(mode: str, size: tuple[int, int]) -> None:
    colour = {"RGB": (200, 30, 30), "RGBA": (200, 30, 30, 255), "L": 120}[mode]
    decoded = _decode(_save(Image.new(mode, size, colour), "AVIF", quality=90))
    assert decoded.format == "avif" and (decoded.width, decoded.height) == size  # type: ignore[attr-defined]
    expected = (120, 120, 120) if mode == "L" else (200, 30, 30)
    assert np.all(np.abs(decoded.pixels[size[1] // 2, size[0] // 2].astype(int) - expected) < 30)  # type: ignore[attr-defined]


def test_heic_is_refused_with_a_clear_reason_without_a_plugin() -> None:
    if "HEIF" in Image.OPEN:
        pytest.skip("a HEIF plugin is registered")
    with pytest.raises(NotAnImage, match="heic images are not supported \\(no decoder installed\\)"):
        _decode(hostile.heic_stub())


# --- the process sandbox -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pool() -> Iterator[DecodePool]:
    with DecodePool(DecodeSettings(timeout_seconds=5.0), workers=2) as p:
        yield p


def test_process_and_thread_modes_give_the_same_result(pool: DecodePool) -> None:
    data = jpeg_bytes(textured_image(8, (1200, 900)), quality=90)
    threaded = DecodePool(DecodeSettings(isolation="thread"))
    for side in (512, 1600):
        a, b = pool.decode(data, max_side=side), threaded.decode(data, max_side=side)
        assert np.array_equal(a.pixels, b.pixels) and a.pixels.flags["C_CONTIGUOUS"]
        assert (a.width, a.height, a.format, a.sha256) == (b.width, b.height, b.format, b.sha256)


@pytest.mark.parametrize("name", ["zero_bytes.jpg", "truncated.jpg", "bomb.gif", "scan_bomb_small.jpg"])
def test_errors_cross_the_process_boundary(pool: DecodePool, name: str) -> None:
    data, reason = CORPUS[name]
    with pytest.raises(MediaError) as info:
        pool.decode(data)
    assert info.value.reason == reason
    with pytest.raises(type(info.value)):
        _decode(data)


def test_deadline_kills_a_slow_decode_and_the_pool_recovers() -> None:
    """A real slow decode: a scan bomb let past the scan limit, ~15 ms a scan at 8000x8000."""
    bomb = hostile.progressive_jpeg(8000, 8000, 2000)
    settings = DecodeSettings(timeout_seconds=1.0, max_jpeg_scans=100_000)
    with DecodePool(settings, workers=1) as pool:
        pool.decode(jpeg_bytes(textured_image(9, (200, 150))))  # the worker is up
        started = time.monotonic()
        with pytest.raises(DecodeTimeout) as info:
            pool.decode(bomb)
        assert time.monotonic() - started < 2.0
        assert info.value.reason == "decode_timeout" and not info.value.retryable
        assert pool.decode(jpeg_bytes(textured_image(9, (200, 150)))).width == 200


def test_native_crash_fails_one_item_and_the_pool_recovers() -> None:
    with DecodePool(DecodeSettings(), workers=1) as pool:
        with pytest.raises(DecodeCrashed, match="SIGSEGV") as info:
            pool._call(("crash",), b"", 5.0)
        assert info.value.reason == "decode_crashed"
        assert pool.decode(jpeg_bytes(textured_image(10, (200, 150)))).height == 150


def test_memory_limit_turns_an_allocation_into_an_error() -> None:
    """A flat 8000x8000 PNG is 60 KB; decoding it needs ~260 MB (grey, then RGB)."""
    data = _save(Image.new("L", (8000, 8000), 7), "PNG")
    with DecodePool(DecodeSettings(max_memory_mb=300), workers=1) as small:
        with pytest.raises(DecompressionBomb, match="out of memory"):
            small.decode(data)
        assert small.decode(jpeg_bytes(textured_image(11, (200, 150)))).width == 200  # same worker lives
    with DecodePool(DecodeSettings(), workers=1) as default:
        assert default.decode(data).width == 8000


def test_many_threads_share_the_workers(pool: DecodePool) -> None:
    data = jpeg_bytes(textured_image(12, (640, 480)))
    results: list[tuple[int, ...]] = []
    failures: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(5):
                results.append(pool.decode(data).pixels.shape)
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not failures and len(results) == 20 and set(results) == {(384, 512, 3)}
    assert pool._live <= 2


def test_workers_do_not_load_the_parents_libraries(pool: DecodePool) -> None:
    import cv2  # loaded here, in the parent

    assert cv2
    pool.decode(jpeg_bytes(textured_image(13, (64, 64))))
    worker = pool._idle[0]
    maps = Path(f"/proc/{worker.proc.pid}/maps").read_text()
    assert "opencv" not in maps and "onnxruntime" not in maps


def test_closed_pool_refuses_and_stops_its_workers() -> None:
    pool = DecodePool(DecodeSettings(), workers=1)
    pool.decode(jpeg_bytes(textured_image(14, (64, 64))))
    (worker,) = pool._idle
    pool.close()
    assert worker.proc.poll() is not None
    with pytest.raises(DecodeUnavailable) as info:
        pool.decode(b"\xff\xd8\xff")
    assert info.value.retryable
