"""Decode untrusted image bytes into a small RGB array without letting the file dictate the cost.

The format is sniffed first and Pillow is only allowed that one plugin (no EPS/ghostscript surprises), the
pixel count is checked before any pixel is decoded, large JPEGs are decoded at 1/2-1/8 scale (draft mode),
only the first frame of an animation is read, and every Pillow failure becomes a MediaError subclass.
Truncated files are refused: ``ImageFile.LOAD_TRUNCATED_IMAGES`` is left alone.

Two costs the pixel count does not bound are checked on the bytes first: a progressive JPEG's scans
(libjpeg makes one pass over the whole image per scan, so 20,000 scans in 2 MB take minutes) and, for
TIFF, the tile size (a 64x64 image can declare 65536x65536 tiles). A file that is also a ZIP archive is
refused as a polyglot. This module still runs in the caller's thread and cannot be interrupted; for a
deadline and a memory bound per decode, use ``imgaudit.media.sandbox.DecodePool``.
"""

from __future__ import annotations

import hashlib
import io
import re
import struct
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from imgaudit.errors import (
    CorruptImage,
    DecompressionBomb,
    MediaError,
    NotAnImage,
    Polyglot,
    TooManyScans,
)
from imgaudit.media.fetch import SNIFF_BYTES, sniff_format
from imgaudit.types import Decoded

_PIL_FORMATS = {
    "jpeg": "JPEG",
    "png": "PNG",
    "gif": "GIF",
    "webp": "WEBP",
    "bmp": "BMP",
    "tiff": "TIFF",
    "avif": "AVIF",
    "heic": "HEIF",  # only with a plugin such as pillow-heif registered
}
_ORIENTATION_TAG = 0x0112
_SWAPS_SIDES = frozenset({5, 6, 7, 8})  # EXIF orientations that rotate by 90 or 270 degrees
_WHITE = (255, 255, 255)
# libjpeg's standard progressive script has 10 scans (6 for greyscale) and encoders that optimise the
# script stay in the tens; libjpeg-turbo's own guard (djpeg -maxscans, TJPARAM_SCANLIMIT) exists because
# each scan re-reads every coefficient. 100 leaves 10x headroom and bounds the worst case at the pixel
# limit (64 MP, ~15-30 ms a scan) to a few seconds.
DEFAULT_MAX_JPEG_SCANS = 100
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})  # TEM, RST0-7, SOI: no length field
_SOS, _EOI = 0xDA, 0xD9
# In entropy-coded data a literal 0xFF is stuffed as FF 00 and RSTn markers may interleave; anything else
# after 0xFF ends the scan. Fill bytes (FF FF ...) match too and are skipped by the marker loop.
_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7]")
_ZIP_EOCD = b"PK\x05\x06"
_ZIP_CENTRAL = b"PK\x01\x02"
_ZIP_TAIL = 22 + 65535  # end-of-central-directory record plus its longest comment
_TIFF_TILE_TAGS = (322, 323)  # TileWidth, TileLength


def decode(
    data: bytes | bytearray, *, max_pixels: int, max_side: int, max_jpeg_scans: int = DEFAULT_MAX_JPEG_SCANS
) -> Decoded:
    """Decode ``data`` to an HxWx3 uint8 RGB array whose longest side is at most ``max_side``.

    ``width``/``height`` are the original dimensions as displayed (after the EXIF orientation). Raises
    NotAnImage (Polyglot), DecompressionBomb (TooManyScans) or CorruptImage; no other exception escapes.

    Pillow's own guard (``Image.MAX_IMAGE_PIXELS``, turned into an error here) still applies, so the
    effective limit is the smaller of ``max_pixels`` and that global, which is read but never changed.
    """
    fmt = sniff_format(bytes(data[:SNIFF_BYTES])) if data else None
    if fmt is None:
        raise NotAnImage("empty input" if not data else "not a supported image format (by magic bytes)")
    pil_format = _PIL_FORMATS[fmt]
    Image.init()
    if pil_format not in Image.OPEN:
        raise NotAnImage(f"{fmt} images are not supported (no decoder installed)")
    data = bytes(data)
    if _has_zip_trailer(data):
        raise Polyglot(f"{fmt} file that is also a ZIP archive")
    if fmt == "jpeg":
        scans = count_jpeg_scans(data, stop_after=max_jpeg_scans)
        if scans > max_jpeg_scans:
            raise TooManyScans(f"progressive jpeg with more than {max_jpeg_scans} scans (max_jpeg_scans)")
    digest = hashlib.sha256(data).hexdigest()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            pixels, width, height = _decode(data, pil_format, max_pixels, max_side)
    except MediaError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DecompressionBomb(f"{fmt}: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise CorruptImage(f"{fmt} signature but unreadable: {exc}") from exc
    except MemoryError as exc:
        raise DecompressionBomb(f"{fmt}: out of memory while decoding") from exc
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, struct.error, zlib.error, ...
        raise CorruptImage(f"corrupt or truncated {fmt}: {type(exc).__name__}: {exc}") from exc
    return Decoded(pixels=pixels, width=width, height=height, format=fmt, sha256=digest)


def _decode(data: bytes, pil_format: str, max_pixels: int, max_side: int) -> tuple[np.ndarray, int, int]:
    with Image.open(io.BytesIO(data), formats=[pil_format]) as im:
        width, height = im.size
        if width <= 0 or height <= 0:
            raise CorruptImage(f"image claims size {width}x{height}")
        if width * height > max_pixels:
            raise DecompressionBomb(
                f"{width}x{height} = {width * height} pixels exceeds max_pixels {max_pixels}"
            )
        if pil_format == "TIFF":
            _check_tiles(im, max_pixels)
        im.seek(0)  # animations: the first frame only
        if pil_format == "JPEG":
            _draft(im, max_side)
        im.load()
        orientation = _orientation(im)
        frame = ImageOps.exif_transpose(im) if orientation != 1 else im
        if orientation in _SWAPS_SIDES:
            width, height = height, width
        rgb = _shrink(_to_rgb(frame), max_side)
        pixels = np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise CorruptImage(f"unexpected pixel array shape {pixels.shape}")
    return pixels, width, height


def count_jpeg_scans(data: bytes, stop_after: int | None = None) -> int:
    """The number of SOS markers in a JPEG, found by walking its marker segments (so bytes inside APPn
    payloads such as EXIF thumbnails never count) and skipping each scan's entropy-coded data.

    Stops counting once past ``stop_after``. Junk between segments is skipped as libjpeg skips it, so it
    cannot hide scans; a cut-off segment ends the walk with the count so far (the decoder judges it).
    """
    n, pos, scans = len(data), 2, 0
    while pos + 1 < n:
        if data[pos] != 0xFF:  # junk between segments: libjpeg skips to the next 0xFF (with a warning)
            pos = data.find(b"\xff", pos)
            if pos < 0 or pos + 1 >= n:
                break
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        pos += 2
        if marker == _EOI:
            break
        if marker in _JPEG_STANDALONE:
            continue
        if pos + 2 > n:
            break
        (length,) = struct.unpack_from(">H", data, pos)
        if length < 2:
            break
        pos += length
        if marker == _SOS:
            scans += 1
            if stop_after is not None and scans > stop_after:
                break
            end = _SCAN_END.search(data, pos)
            if end is None:
                break
            pos = end.start()
    return scans


def _has_zip_trailer(data: bytes) -> bool:
    """Whether ``data`` ends with a ZIP archive (an image with a ZIP appended, GIFAR-style).

    Needs an end-of-central-directory record near the end whose central directory starts with its
    signature, so four stray signature bytes in compressed pixels are not enough.
    """
    at = data.rfind(_ZIP_EOCD, max(0, len(data) - _ZIP_TAIL))
    if at < 0 or at + 22 > len(data):
        return False
    cd_size, cd_offset, comment = struct.unpack_from("<IIH", data, at + 12)
    start = at - cd_size
    if start < 0 or at + 22 + comment > len(data):
        return False
    return data[start : start + 4] == _ZIP_CENTRAL or data[cd_offset : cd_offset + 4] == _ZIP_CENTRAL


def _check_tiles(im: Image.Image, max_pixels: int) -> None:
    """libtiff allocates one whole tile before decoding it: refuse tiles larger than the pixel budget."""
    tag = getattr(im, "tag_v2", None)
    if tag is None:
        return
    tw, th = (tag.get(t) for t in _TIFF_TILE_TAGS)
    if isinstance(tw, int) and isinstance(th, int) and tw * th > max_pixels:
        raise DecompressionBomb(f"tiff tiles of {tw}x{th} exceed max_pixels {max_pixels}")


def _draft_request(width: int, height: int, max_side: int) -> tuple[int, int]:
    """The size to pass to ``draft`` so the reduced image's longest side stays >= ``max_side``.

    ``draft`` picks the largest scale ``s`` in 8, 4, 2, 1 with ``s <= min(w // rw, h // rh)``. Requesting
    the longest side as ``max_side`` and the other side in proportion (rounded up) gives
    ``s <= longest // max_side``, hence ``ceil(longest / s) >= max_side``, and lets panoramas shrink too
    (a square request would be limited by the short side).
    """
    longest = max(width, height)
    return (
        max(1, -(-width * max_side // longest)),
        max(1, -(-height * max_side // longest)),
    )


def _draft(im: Image.Image, max_side: int) -> None:
    if max(im.size) >= 2 * max_side:  # below that no reduction is possible
        im.draft("RGB", _draft_request(im.width, im.height, max_side))


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation, 1 when absent or unreadable (bad EXIF is no reason to refuse the picture)."""
    try:
        value = int(im.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:
        return 1
    return value if 1 <= value <= 8 else 1


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB: alpha composited on white, high bit depths scaled rather than clipped."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return Image.fromarray(_to_uint8(np.asarray(im), im.mode)).convert("RGB")
    if im.has_transparency_data:
        rgba = im.convert("RGBA")
        background = Image.new("RGB", rgba.size, _WHITE)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if im.mode == "RGB":
        return im
    return im.convert("RGB")  # L, 1, P, CMYK (Adobe-inverted handled by Pillow), YCbCr, LAB, HSV


def _to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """Scale one high-depth channel to 0..255.

    16-bit data keeps its meaning (value / 256); ``I`` data within 0..65535 is taken as 16-bit; float data
    in 0..1 is scaled by 255; anything else is stretched from its own minimum to maximum.
    """
    if mode.startswith("I;16"):
        return (values.astype(np.uint16) >> 8).astype(np.uint8)
    data = values.astype(np.float64)
    finite = np.isfinite(data)
    if not finite.any():
        return np.zeros(values.shape, dtype=np.uint8)
    data = np.where(finite, data, 0.0)
    lo, hi = float(data.min()), float(data.max())
    if mode == "I" and lo >= 0 and hi <= 65535:
        return (data.astype(np.uint32) >> 8).astype(np.uint8)
    if mode == "F" and lo >= 0 and hi <= 1:
        return np.round(data * 255).astype(np.uint8)
    if hi == lo:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round((data - lo) * (255 / (hi - lo))).astype(np.uint8)


def _shrink(im: Image.Image, max_side: int) -> Image.Image:
    """Reduce so the longest side is ``max_side``; never enlarge. reducing_gap keeps big reductions fast."""
    longest = max(im.size)
    if longest <= max_side:
        return im
    scale = max_side / longest
    size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
    return im.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
