from __future__ import annotations

import imagehash
import numpy as np
import pytest
from PIL import Image

from imgaudit.signals.hashes import from_signed, hamming, phash, pixel_sha256, to_signed
from imgaudit.testing.fakes import textured_image


@pytest.mark.parametrize("seed", range(5))
def test_phash_is_bit_identical_to_imagehash(seed: int) -> None:
    im = textured_image(seed)
    assert phash(np.asarray(im)) == int(str(imagehash.phash(im)), 16)


def test_phash_is_robust_to_resizing_and_separates_different_images() -> None:
    a = textured_image(1, (400, 300))
    small = a.resize((200, 150), Image.Resampling.BILINEAR)
    assert hamming(phash(np.asarray(a)), phash(np.asarray(small))) <= 4
    assert hamming(phash(np.asarray(a)), phash(np.asarray(textured_image(2, (400, 300))))) > 10


def test_pixel_hash_depends_on_shape_and_content() -> None:
    x = np.zeros((4, 6, 3), np.uint8)
    assert pixel_sha256(x) != pixel_sha256(x.reshape(6, 4, 3))
    y = x.copy()
    y[0, 0, 0] = 1
    assert pixel_sha256(x) != pixel_sha256(y)


def test_signed_roundtrip() -> None:
    for h in (0, 1, 2**63 - 1, 2**63, 2**64 - 1):
        assert from_signed(to_signed(h)) == h
        assert -(2**63) <= to_signed(h) < 2**63
