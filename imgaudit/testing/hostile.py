"""Hostile image files, generated (nothing is committed): for the decode limit tests and for the
end-to-end hostile-corpus test, which ingests ``write_file_corpus``'s folder and checks each file's
recorded reason.

Pure Python plus Pillow, so CI needs no image tools. The JPEG scan bomb is written by hand: Pillow
cannot emit custom scan scripts, and a greyscale image of flat blocks lets every AC scan be a handful of
end-of-band runs, so 20,000 scans of an 8000x8000 image take about 1.7 MB.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, features

# --- a progressive JPEG with any number of scans ----------------------------------------------------------

_EOB_SYMBOLS = [r << 4 for r in range(15)]  # EOBr: a run of 2**r .. 2**(r+1)-1 empty blocks


class _Bits:
    """An entropy-coded segment: MSB first, 0xFF stuffed with 0x00, padded with 1 bits."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.acc = 0
        self.n = 0

    def put(self, value: int, length: int) -> None:
        self.acc = (self.acc << length) | (value & ((1 << length) - 1))
        self.n += length
        while self.n >= 8:
            self.n -= 8
            byte = (self.acc >> self.n) & 0xFF
            self.out.append(byte)
            if byte == 0xFF:
                self.out.append(0x00)
        self.acc &= (1 << self.n) - 1

    def zeros(self, count: int) -> None:
        """``count`` zero bits, fast (a DC scan of a flat image is one 0 bit per block)."""
        while self.n and count:
            self.put(0, 1)
            count -= 1
        self.out += bytes(count // 8)
        if count % 8:
            self.put(0, count % 8)

    def flush(self) -> bytes:
        if self.n:
            self.put((1 << (8 - self.n)) - 1, 8 - self.n)
        return bytes(self.out)


def _segment(marker: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", 0xFF, marker, len(payload) + 2) + payload


def progressive_jpeg(width: int, height: int, scans: int, value: int = 128) -> bytes:
    """A valid greyscale progressive JPEG of one flat ``value`` with exactly ``scans`` SOS segments:
    the DC scan, then ``scans - 1`` identical full-band AC scans (each a few EOB runs). libjpeg decodes
    it without warnings (a repeated first AC scan with Ah=Al=0 is legal), one pass per scan."""
    if scans < 1 or width < 1 or height < 1:
        raise ValueError("need at least one scan and one pixel")
    blocks = -(-width // 8) * -(-height // 8)
    head = b"\xff\xd8" + _segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
    head += _segment(0xDB, b"\x00" + bytes([1]) * 64)  # table 0, all quantisers 1
    head += _segment(0xC2, struct.pack(">BHHB", 8, height, width, 1) + b"\x01\x11\x00")
    # DC: the first block carries the difference from 0 (8 * (value - 128) with quantiser 1), every
    # later block a difference of 0. Codes: "0" alone, or "00" (zero) and "01" (the first difference).
    dc_diff = (value - 128) * 8
    category = abs(dc_diff).bit_length()
    if category == 0:
        dc_table, dc_codes = bytes([1] + [0] * 15) + b"\x00", {0: (0, 1)}
    else:
        dc_table, dc_codes = bytes([0, 2] + [0] * 14) + bytes([0, category]), {0: (0, 2), category: (1, 2)}
    head += _segment(0xC4, bytes([0x00]) + dc_table)
    ac_counts = [0, 0, 0, len(_EOB_SYMBOLS)] + [0] * 12  # 15 codes of 4 bits (1111 stays unused)
    head += _segment(0xC4, bytes([0x10]) + bytes(ac_counts) + bytes(_EOB_SYMBOLS))
    ac_codes = {s: (i, 4) for i, s in enumerate(_EOB_SYMBOLS)}

    dc = _Bits()
    dc.put(*dc_codes[category])
    if category:
        dc.put(dc_diff if dc_diff > 0 else dc_diff + (1 << category) - 1, category)
    if category == 0:
        dc.zeros(blocks - 1)
    else:
        for _ in range(blocks - 1):
            dc.put(*dc_codes[0])
    sos_dc = _segment(0xDA, b"\x01\x01\x00" + bytes([0, 0, 0x00]))
    ac = _Bits()
    left = blocks
    while left:
        run = min(left, 32767)
        r = run.bit_length() - 1
        code, length = ac_codes[r << 4]
        ac.put(code, length)
        if r:
            ac.put(run - (1 << r), r)
        left -= run
    sos_ac = _segment(0xDA, b"\x01\x01\x00" + bytes([1, 63, 0x00])) + ac.flush()
    return head + sos_dc + dc.flush() + sos_ac * (scans - 1) + b"\xff\xd9"


# --- small builders ---------------------------------------------------------------------------------------


def _save(im: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, fmt, **params)
    return buffer.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_header_bomb(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` (1-bit grey) with a tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 1024))
        + _png_chunk(b"IEND", b"")
    )


def gif_header_bomb(width: int = 65535, height: int = 65535) -> bytes:
    """A GIF whose screen and only image descriptor claim ``width`` x ``height``; a few LZW bytes."""
    screen = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
    image = b"," + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00"
    return screen + image + b";"


def webp_header_bomb(width: int = 16384, height: int = 16384) -> bytes:
    """A lossless WebP (VP8L) header claiming ``width`` x ``height`` (its maximum) with no image data."""
    bits = (width - 1) | ((height - 1) << 14)  # 14 bits each, then alpha hint and version 0
    vp8l = b"\x2f" + struct.pack("<I", bits) + b"\0" * 16
    chunk = b"VP8L" + struct.pack("<I", len(vp8l)) + vp8l
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def _tiff(entries: list[tuple[int, int, int, int]], data: bytes = b"", next_ifds: int = 0) -> bytes:
    """A little-endian TIFF with one IFD of (tag, type, count, value) entries; ``data`` follows it."""
    ifd_offset = 8
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in sorted(entries):
        ifd += struct.pack("<HHII", tag, kind, count, value)
    ifd += struct.pack("<I", next_ifds)
    return b"II*\x00" + struct.pack("<I", ifd_offset) + ifd + data


def tiff_header_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A TIFF whose first IFD claims ``width`` x ``height`` 8-bit grey in one tiny strip."""
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1)]
    data_offset = 8 + 2 + 12 * 8 + 4
    entries += [(273, 4, 1, data_offset), (277, 3, 1, 1), (278, 4, 1, height), (279, 4, 1, 16)]
    return _tiff(entries, b"\0" * 16)


def tiff_huge_tiles(width: int = 64, height: int = 64, tile: int = 65536) -> bytes:
    """A small TIFF whose tiles claim to be ``tile`` x ``tile`` (a 4 GiB tile buffer for 64x64 pixels)."""
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1)]
    data_offset = 8 + 2 + 12 * 9 + 4
    entries += [(277, 3, 1, 1), (322, 4, 1, tile), (323, 4, 1, tile), (324, 4, 1, data_offset)]
    entries += [(325, 4, 1, 64)]
    return _tiff(entries, b"\0" * 64)


def tiff_many_pages(pages: int = 5000) -> bytes:
    """A TIFF of ``pages`` chained 8x8 grey IFDs sharing one strip; only the first must be read."""
    strip_offset = 8
    entries = 9
    ifd_size = 2 + 12 * entries + 4
    first_ifd = strip_offset + 64
    out = bytearray(b"II*\x00" + struct.pack("<I", first_ifd) + bytes([90]) * 64)
    for page in range(pages):
        next_ifd = first_ifd + (page + 1) * ifd_size if page + 1 < pages else 0
        tags = [(256, 3, 1, 8), (257, 3, 1, 8), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1)]
        tags += [(273, 4, 1, strip_offset), (277, 3, 1, 1), (278, 3, 1, 8), (279, 4, 1, 64)]
        out += struct.pack("<H", entries)
        for tag, kind, count, value in tags:
            out += struct.pack("<HHII", tag, kind, count, value)
        out += struct.pack("<I", next_ifd)
    return bytes(out)


def bmp_header_bomb(width: int = 60_000, height: int = 60_000) -> bytes:
    """A 24-bit BMP whose header claims ``width`` x ``height`` with 64 bytes of pixels."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    header = b"BM" + struct.pack("<IHHI", 14 + 40 + 64, 0, 0, 14 + 40)
    return header + info + b"\0" * 64


def _frames(count: int, size: tuple[int, int] = (16, 16)) -> list[Image.Image]:
    return [Image.new("RGB", size, (i % 256, (i * 7) % 256, 90)) for i in range(count)]


def animated(fmt: str, count: int) -> bytes:
    """An animation of ``count`` frames (GIF, PNG i.e. APNG, or WEBP)."""
    frames = _frames(count)
    params: dict[str, object] = {"lossless": True} if fmt == "WEBP" else {}
    return _save(frames[0], fmt, save_all=True, append_images=frames[1:], duration=20, loop=0, **params)


def jpeg_with_exif(orientation_entry: bytes | None = None, padding: int = 0) -> bytes:
    """A small JPEG whose APP1 EXIF has ``orientation_entry`` (raw 12-byte IFD entry) and ``padding``
    bytes of filler data (a huge EXIF block, up to the 64 KB segment limit)."""
    body = _save(Image.new("RGB", (32, 24), (200, 30, 30)), "JPEG", quality=90)
    entries = [orientation_entry] if orientation_entry else []
    filler_offset = 8 + 2 + 12 * (len(entries) + 1) + 4
    entries.append(struct.pack("<HHII", 0x010E, 2, padding or 1, filler_offset))  # ImageDescription
    ifd = struct.pack("<H", len(entries)) + b"".join(entries) + b"\0\0\0\0"
    tiff = b"II*\x00" + struct.pack("<I", 8) + ifd + b"A" * (padding or 1)
    app1 = _segment(0xE1, b"Exif\x00\x00" + tiff)
    return body[:2] + app1 + body[2:]


def png_with_huge_exif(size: int = 8 * 1024 * 1024) -> bytes:
    """A PNG with an eXIf chunk of ``size`` bytes of garbage after a valid TIFF header."""
    png = _save(Image.new("RGB", (16, 16), (30, 200, 30)), "PNG")
    exif = b"MM\x00*\x00\x00\x00\x08" + b"\xff" * size
    return png[:33] + _png_chunk(b"eXIf", exif) + png[33:]


def zip_polyglot(image: bytes) -> bytes:
    """``image`` followed by a ZIP archive: a valid image and a valid ZIP (GIFAR-style)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("payload.html", "<script>alert(1)</script>")
    return image + buffer.getvalue()


def heic_stub() -> bytes:
    """The start of a HEIC file (ftyp box with heic brands); no decoder is installed for it."""
    return b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\0" * 64


# --- the corpus -------------------------------------------------------------------------------------------


def _cases() -> dict[str, tuple[Callable[[], bytes], str | None]]:
    """File name -> (builder, expected failure reason, or None when the file must decode)."""
    red = Image.new("RGB", (64, 48), (200, 30, 30))
    jpeg = _save(red, "JPEG", quality=90)
    png = _save(red, "PNG")
    garbage_orientation = struct.pack("<HHII", 0x0112, 3, 1, 9999)
    wrong_type_orientation = struct.pack("<HHII", 0x0112, 2, 40, 0x7FFFFFF0)  # ASCII, offset past the end
    cases: dict[str, tuple[Callable[[], bytes], str | None]] = {
        "ok_baseline.jpg": (lambda: jpeg, None),
        "ok_progressive.jpg": (lambda: _save(red, "JPEG", quality=90, progressive=True), None),
        "ok_ten_scans.jpg": (lambda: progressive_jpeg(2000, 1500, 10), None),
        "zero_bytes.jpg": (lambda: b"", "not_an_image"),
        "truncated.jpg": (lambda: jpeg[: len(jpeg) // 2], "corrupt"),
        "truncated.png": (lambda: png[: len(png) // 2], "corrupt"),
        "signature_only.png": (lambda: png[:8], "corrupt"),
        "scan_bomb_8000.jpg": (lambda: progressive_jpeg(8000, 8000, 20_000), "jpeg_too_many_scans"),
        "scan_bomb_small.jpg": (lambda: progressive_jpeg(64, 64, 101), "jpeg_too_many_scans"),
        "bomb_20000.png": (lambda: png_header_bomb(20_000, 20_000), "decompression_bomb"),
        "bomb.gif": (lambda: gif_header_bomb(), "decompression_bomb"),
        "bomb.webp": (lambda: webp_header_bomb(), "decompression_bomb"),
        "bomb.tiff": (lambda: tiff_header_bomb(), "decompression_bomb"),
        "bomb.bmp": (lambda: bmp_header_bomb(), "decompression_bomb"),
        "huge_tiles.tiff": (lambda: tiff_huge_tiles(), "decompression_bomb"),
        "many_pages.tiff": (lambda: tiff_many_pages(), None),
        "frames_5000.gif": (lambda: animated("GIF", 5000), None),
        "frames_3000.png": (lambda: animated("PNG", 3000), None),
        "frames_3000.webp": (lambda: animated("WEBP", 3000), None),
        "exif_orientation_9999.jpg": (lambda: jpeg_with_exif(garbage_orientation), None),
        "exif_orientation_ascii.jpg": (lambda: jpeg_with_exif(wrong_type_orientation), None),
        "exif_60k.jpg": (lambda: jpeg_with_exif(padding=60_000), None),
        "exif_8mb.png": (lambda: png_with_huge_exif(), None),
        "html_as_gif.gif": (lambda: b"GIF89a<html><body>not a picture</body></html>\n" * 3, "*"),
        "zip_polyglot.jpg": (lambda: zip_polyglot(jpeg), "polyglot"),
        "zip_polyglot.png": (lambda: zip_polyglot(png), "polyglot"),
        "html.jpg": (lambda: b"<!doctype html><html><body>hi</body></html>", "not_an_image"),
        "photo.heic": (heic_stub, "not_an_image"),
    }
    if features.check("avif"):
        cases["ok.avif"] = (lambda: _save(red, "AVIF", quality=80), None)
    return cases


def corpus() -> dict[str, tuple[bytes, str | None]]:
    """Every hostile file in memory: name -> (bytes, expected reason or None, "*" for any failure)."""
    return {name: (build(), reason) for name, (build, reason) in _cases().items()}


def write_file_corpus(folder: Path) -> dict[str, str | None]:
    """Write every hostile file into ``folder``; return file name -> the failure reason it must be
    recorded with, None for files that must decode, or "*" where any failure reason will do."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    expected = {}
    for name, (build, reason) in _cases().items():
        (folder / name).write_bytes(build())
        expected[name] = reason
    return expected


def noise(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """Random RGB pixels: the worst case for compression, a fair stand-in for a detailed photo's cost."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
