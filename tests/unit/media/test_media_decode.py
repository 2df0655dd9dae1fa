"""Safe decoding of small generated images in every supported format and mode, and of hostile inputs."""

from __future__ import annotations

import hashlib
import io
import struct
import time
import tracemalloc
import zlib
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFile, JpegImagePlugin, features

from imgaudit.errors import CorruptImage, DecompressionBomb, MediaError, NotAnImage
from imgaudit.media.decode import _draft_request, decode

RED = (255, 0, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)


def _save(im: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, fmt, **params)
    return buffer.getvalue()


def _halves(size: tuple[int, int], left: tuple[int, int, int], right: tuple[int, int, int]) -> Image.Image:
    im = Image.new("RGB", size, left)
    im.paste(right, (size[0] // 2, 0, size[0], size[1]))
    return im


def _close(pixel: np.ndarray, expected: tuple[int, ...], tolerance: int = 12) -> bool:
    return bool(np.all(np.abs(pixel.astype(int) - np.array(expected)) <= tolerance))


def _decode(data: bytes, max_side: int = 640, max_pixels: int = 50_000_000) -> Any:
    return decode(data, max_pixels=max_pixels, max_side=max_side)


def _png_header_only(width: int, height: int, bit_depth: int = 1, colour_type: int = 0) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` with a tiny IDAT; decoding it fully would be huge."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + payload))
        return struct.pack(">I", len(payload)) + kind + payload + crc

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# --- formats ----------------------------------------------------------------------------------------------


def test_jpeg() -> None:
    data = _save(_halves((64, 48), RED, BLUE), "JPEG", quality=95)
    decoded = _decode(data)
    assert decoded.format == "jpeg"
    assert (decoded.width, decoded.height) == (64, 48)
    assert decoded.pixels.shape == (48, 64, 3)
    assert decoded.pixels.dtype == np.uint8 and decoded.pixels.flags["C_CONTIGUOUS"]
    assert decoded.sha256 == hashlib.sha256(data).hexdigest()
    assert _close(decoded.pixels[24, 5], RED, 20) and _close(decoded.pixels[24, 60], BLUE, 20)


@pytest.mark.parametrize(("fmt", "name"), [("PNG", "png"), ("BMP", "bmp"), ("TIFF", "tiff")])
def test_lossless_formats_are_exact(fmt: str, name: str) -> None:
    image = _halves((30, 20), RED, BLUE)
    decoded = _decode(_save(image, fmt))
    assert decoded.format == name
    assert np.array_equal(decoded.pixels, np.asarray(image))


def test_webp() -> None:
    image = _halves((30, 20), RED, BLUE)
    decoded = _decode(_save(image, "WEBP", lossless=True))
    assert decoded.format == "webp"
    assert np.array_equal(decoded.pixels, np.asarray(image))


@pytest.mark.skipif(not features.check("avif"), reason="Pillow built without AVIF")
def test_avif() -> None:
    decoded = _decode(_save(Image.new("RGB", (32, 32), RED), "AVIF", quality=90))
    assert decoded.format == "avif"
    assert _close(decoded.pixels[16, 16], RED, 30)


def test_heic_without_a_plugin_is_not_an_image() -> None:
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\0" * 64
    if "HEIF" in Image.OPEN:
        pytest.skip("a HEIF plugin is registered")
    with pytest.raises(NotAnImage, match="heic"):
        _decode(heic)


@pytest.mark.parametrize(("fmt", "params"), [("GIF", {}), ("WEBP", {"lossless": True}), ("PNG", {})])
def test_animation_first_frame_only(fmt: str, params: dict[str, Any]) -> None:
    frames = [Image.new("RGB", (24, 16), colour) for colour in (RED, (0, 255, 0), BLUE)]
    data = _save(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, **params)
    decoded = _decode(data)
    assert (decoded.width, decoded.height) == (24, 16)
    assert _close(decoded.pixels[8, 12], RED)


# --- modes ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["TIFF", "PNG"])
def test_16_bit_is_scaled_not_clipped(fmt: str) -> None:
    gradient = np.tile(np.arange(256, dtype=np.uint16) * 256 + 255, (4, 1))  # 255 .. 65535
    image = Image.fromarray(gradient)
    assert image.mode == "I;16"
    decoded = _decode(_save(image, fmt))
    assert np.array_equal(decoded.pixels[0, :, 0], np.arange(256))
    assert np.array_equal(decoded.pixels[..., 0], decoded.pixels[..., 2])


def test_32_bit_integer_and_float_images() -> None:
    ints = Image.fromarray(np.tile(np.arange(0, 65536, 4096, dtype=np.int32), (2, 1)))
    assert ints.mode == "I"
    decoded = _decode(_save(ints, "TIFF"))
    assert list(decoded.pixels[0, :, 0]) == list(range(0, 256, 16))

    floats = Image.fromarray(np.tile(np.linspace(0, 1, 11, dtype=np.float32), (2, 1)))
    assert floats.mode == "F"
    decoded = _decode(_save(floats, "TIFF"))
    assert decoded.pixels[0, 0, 0] == 0 and decoded.pixels[0, -1, 0] == 255
    assert abs(int(decoded.pixels[0, 5, 0]) - 128) <= 1


def test_cmyk_jpeg() -> None:
    cmyk = Image.new("CMYK", (32, 32), (0, 255, 255, 0))  # red in CMYK
    data = _save(cmyk, "JPEG", quality=95)
    decoded = _decode(data)
    assert decoded.pixels.shape == (32, 32, 3)
    assert _close(decoded.pixels[16, 16], RED, 30)


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency_on_white(fmt: str) -> None:
    image = Image.new("P", (20, 10), 0)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.paste(1, (10, 0, 20, 10))
    decoded = _decode(_save(image, fmt, transparency=1))
    assert tuple(decoded.pixels[5, 2]) == RED
    assert tuple(decoded.pixels[5, 15]) == WHITE


def test_alpha_is_composited_on_white() -> None:
    image = Image.new("RGBA", (20, 10), (0, 0, 0, 0))
    image.paste((0, 0, 0, 128), (10, 0, 20, 10))
    decoded = _decode(_save(image, "PNG"))
    assert tuple(decoded.pixels[5, 2]) == WHITE  # fully transparent black shows the background
    assert _close(decoded.pixels[5, 15], (127, 127, 127), 2)

    grey_alpha = Image.new("LA", (8, 8), (0, 0))
    assert tuple(_decode(_save(grey_alpha, "PNG")).pixels[4, 4]) == WHITE


def test_grey_and_bilevel_become_rgb() -> None:
    grey = _decode(_save(Image.new("L", (8, 8), 77), "PNG"))
    assert tuple(grey.pixels[0, 0]) == (77, 77, 77)
    bilevel = Image.new("1", (8, 8), 0)
    bilevel.paste(1, (4, 0, 8, 8))
    decoded = _decode(_save(bilevel, "PNG"))
    assert tuple(decoded.pixels[0, 0]) == (0, 0, 0) and tuple(decoded.pixels[0, 7]) == WHITE


# --- orientation and size ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_exif_orientation_6_rotates(fmt: str) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    stored = _halves((40, 20), RED, BLUE)  # red left, blue right as stored
    decoded = _decode(_save(stored, fmt, exif=exif))
    assert (decoded.width, decoded.height) == (20, 40)
    assert decoded.pixels.shape == (40, 20, 3)
    assert _close(decoded.pixels[5, 10], RED, 20)  # the stored left edge is now the top
    assert _close(decoded.pixels[35, 10], BLUE, 20)


def test_large_jpeg_is_decoded_in_draft_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _save(_halves((4000, 3000), RED, BLUE), "JPEG", quality=80)
    sizes: list[tuple[int, int]] = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self: JpegImagePlugin.JpegImageFile, mode: str | None, size: tuple[int, int] | None) -> Any:
        result = original(self, mode, size)
        sizes.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    started = time.monotonic()
    decoded = _decode(data, max_side=640)
    assert time.monotonic() - started < 1.0
    assert sizes == [(1000, 750)]  # 1/4 scale: still >= 640 on the longest side
    assert (decoded.width, decoded.height) == (4000, 3000)
    assert decoded.pixels.shape == (480, 640, 3)
    assert _close(decoded.pixels[240, 10], RED, 20) and _close(decoded.pixels[240, 630], BLUE, 20)


def test_draft_request_keeps_the_longest_side() -> None:
    for width, height, max_side in [(4000, 3000, 640), (8000, 1000, 640), (1000, 8000, 300), (1281, 5, 640)]:
        request = _draft_request(width, height, max_side)
        scale = min(width // request[0], height // request[1])
        chosen = next(s for s in (8, 4, 2, 1) if scale >= s)
        assert -(-max(width, height) // chosen) >= max_side
    assert _draft_request(8000, 1000, 640) == (640, 80)  # a panorama can shrink 8x, not 1x


def test_panorama_jpeg_reduces_by_its_long_side(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _save(Image.new("RGB", (8000, 1000), RED), "JPEG")
    sizes: list[tuple[int, int]] = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self: JpegImagePlugin.JpegImageFile, mode: str | None, size: tuple[int, int] | None) -> Any:
        result = original(self, mode, size)
        sizes.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    decoded = _decode(data, max_side=640)
    assert sizes == [(1000, 125)]
    assert decoded.pixels.shape == (80, 640, 3)


def test_large_png_is_resized_and_small_images_are_not_enlarged() -> None:
    big = _decode(_save(Image.new("RGB", (2000, 500), BLUE), "PNG"), max_side=256)
    assert big.pixels.shape == (64, 256, 3) and (big.width, big.height) == (2000, 500)
    assert _close(big.pixels[32, 128], BLUE, 2)
    small = _decode(_save(Image.new("RGB", (100, 50), BLUE), "PNG"), max_side=256)
    assert small.pixels.shape == (50, 100, 3)


# --- hostile input ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("width", "height"), [(20_000, 20_000), (5_000, 5_000)])
def test_decompression_bomb_is_refused_before_decoding(width: int, height: int) -> None:
    data = _png_header_only(width, height)
    assert len(data) < 200
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(DecompressionBomb):
            _decode(data, max_pixels=10_000_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.monotonic() - started < 0.5
    assert peak < 5_000_000


def test_bomb_limit_is_ours_not_only_pillows() -> None:
    with pytest.raises(DecompressionBomb, match="max_pixels 1000"):
        _decode(_save(Image.new("RGB", (40, 40)), "PNG"), max_pixels=1000)


def test_global_pillow_settings_are_untouched() -> None:
    limit = Image.MAX_IMAGE_PIXELS
    with pytest.raises(DecompressionBomb):
        _decode(_png_header_only(20_000, 20_000), max_pixels=10_000_000)
    assert limit == Image.MAX_IMAGE_PIXELS
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def _noise(size: tuple[int, int] = (128, 128)) -> Image.Image:
    rng = np.random.default_rng(7)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP"])
def test_truncated_images_are_corrupt(fmt: str) -> None:
    data = _save(_noise(), fmt)
    with pytest.raises(CorruptImage) as info:
        _decode(data[: len(data) // 2])
    assert info.value.reason == "corrupt"
    if fmt == "JPEG":
        assert "truncated" in info.value.message


def test_signature_followed_by_garbage_is_corrupt() -> None:
    with pytest.raises(CorruptImage):
        _decode(b"\xff\xd8\xff" + b"garbage" * 20)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        np.random.default_rng(3).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        b"Hello, this is a plain text file.\nNothing to see here.\n" * 5,
        b"<!doctype html><html></html>",
        b"%PDF-1.7\n",
        b"%!PS-Adobe-3.0 EPSF-3.0\n",  # Pillow could hand EPS to ghostscript: never offered
    ],
    ids=["empty", "random", "text", "html", "pdf", "eps"],
)
def test_non_images(data: bytes) -> None:
    with pytest.raises(NotAnImage):
        _decode(data)


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about the damaged TIFF tags
def test_mutated_files_only_raise_media_errors() -> None:
    """Flip bytes all over valid files: decoding either works or raises a MediaError, nothing else."""
    rng = np.random.default_rng(11)
    sources = [_save(_noise((24, 24)), fmt) for fmt in ("JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP")]
    for source in sources:
        for _ in range(40):
            mutated = bytearray(source)
            for position in rng.integers(8, len(mutated), 4):
                mutated[position] = int(rng.integers(0, 256))
            try:
                decoded = _decode(bytes(mutated), max_side=64)
            except MediaError:
                continue
            assert decoded.pixels.ndim == 3 and decoded.pixels.shape[2] == 3
