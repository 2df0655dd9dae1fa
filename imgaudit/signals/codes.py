"""QR codes and barcodes, read with zxing-cpp.

zxing-cpp reads QR codes about ten times faster than OpenCV's detector (≈0.5 ms on a 512 px photo
against ≈6 ms) and also reads Micro QR, DataMatrix, Aztec, PDF417 and the 1-D formats. A code that is
found but cannot be decoded at analysis size (modules under ~2 px) is retried on a larger decode.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
import zxingcpp

from imgaudit.types import Code, Point

_F = zxingcpp.BarcodeFormat
TWO_D = (_F.QRCode, _F.MicroQRCode, _F.DataMatrix, _F.Aztec, _F.PDF417)
LINEAR = (_F.EAN13, _F.EAN8, _F.UPCA, _F.UPCE, _F.Code128, _F.Code39, _F.Code93, _F.Codabar, _F.ITF)


def _formats(barcodes: bool) -> zxingcpp.BarcodeFormats:
    return zxingcpp.BarcodeFormats(TWO_D + LINEAR if barcodes else TWO_D)


def _quad(pos: zxingcpp.Position, scale: float) -> tuple[Point, Point, Point, Point]:
    def at(p: zxingcpp.Point) -> Point:
        return round(p.x * scale), round(p.y * scale)

    return at(pos.top_left), at(pos.top_right), at(pos.bottom_right), at(pos.bottom_left)


def read_codes(
    rgb: np.ndarray,
    *,
    barcodes: bool = False,
    scale: float = 1.0,
    larger: Callable[[], tuple[np.ndarray, float]] | None = None,
) -> tuple[Code, ...]:
    """Decoded codes in ``rgb``, boxes mapped to original pixels by ``scale``. ``larger`` gives a bigger
    decode of the same image (and its scale) for a second attempt when a code was seen but not read."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    found = zxingcpp.read_barcodes(grey, formats=_formats(barcodes), return_errors=True)
    codes = [_code(b, scale) for b in found if b.valid]
    if larger is not None and any(not b.valid for b in found):
        big, big_scale = larger()
        if big.shape[:2] != rgb.shape[:2]:
            grey = cv2.cvtColor(big, cv2.COLOR_RGB2GRAY)
            again = zxingcpp.read_barcodes(grey, formats=_formats(barcodes))
            codes = [_code(b, big_scale) for b in again if b.valid] or codes
    seen: set[tuple[str, str]] = set()
    unique = []
    for c in codes:
        if (c.format, c.text) not in seen:
            seen.add((c.format, c.text))
            unique.append(c)
    return tuple(unique)


def _code(b: zxingcpp.Barcode, scale: float) -> Code:
    return Code(b.format.name, b.text, _quad(b.position, scale))
