"""Geometric verification and framed-photo detection on generated images."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from imgaudit.signals import local_features as lf
from imgaudit.signals.framing import content_box
from imgaudit.testing.fakes import textured_image


def arr(im: Image.Image) -> np.ndarray:
    return np.asarray(im.convert("RGB"))


def test_copies_are_confirmed() -> None:
    original = textured_image(11, (480, 360))
    copies = {
        "crop": original.crop((40, 30, 440, 330)),
        "scaled": original.resize((240, 180)),
        "rotated": original.rotate(12, expand=True, fillcolor=(255, 255, 255)),
        "mirrored": ImageOps.mirror(original),
    }
    for name, copy in copies.items():
        v = lf.verify([arr(copy)], arr(original))
        assert v.confirms(12, 0.8, 10.0), (name, v)


def test_different_images_are_not_confirmed() -> None:
    v = lf.verify([arr(textured_image(12, (480, 360)))], arr(textured_image(13, (480, 360))))
    assert not v.confirms(12, 0.8, 10.0), v


def test_perspective_view_is_measured_as_distortion() -> None:
    original = arr(textured_image(14, (480, 360)))
    import cv2

    src = np.float32([[0, 0], [480, 0], [480, 360], [0, 360]])
    dst = np.float32([[60, 20], [420, 0], [480, 360], [0, 330]])
    warped = cv2.warpPerspective(original, cv2.getPerspectiveTransform(src, dst), (480, 360))
    v = lf.verify([warped], original)
    assert v.inliers >= 12 and v.distortion > 10.0, v


def test_content_box_finds_a_photo_in_a_screenshot() -> None:
    photo = textured_image(15, (400, 300))
    canvas = Image.new("RGB", (540, 1100), (250, 250, 250))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((0, 0, 540, 60), fill=(20, 20, 20))  # status bar
    canvas.paste(photo, (70, 200))
    for y in (540, 580, 620):  # description lines
        draw.rectangle((70, y, 400, y + 10), fill=(200, 200, 200))
    box = content_box(arr(canvas))
    assert box is not None
    x0, y0, x1, y1 = box
    assert abs(x0 - 70) < 20 and abs(y0 - 200) < 20 and abs(x1 - 470) < 20 and abs(y1 - 500) < 40


def test_content_box_leaves_ordinary_photos_alone() -> None:
    assert content_box(arr(textured_image(16, (400, 300)))) is None
    assert content_box(np.full((300, 400, 3), 128, np.uint8)) is None


def _png(size: tuple[int, int], colour: tuple[int, int, int]) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def test_one_pixel_images_and_thin_strips_are_not_verified() -> None:
    """As ingest sees them: decoded files of 1x1 and 1xN pixels (ORB used to raise inv_scale_x > 0)."""
    from imgaudit.media.decode import decode

    def pixels(size: tuple[int, int]) -> np.ndarray:
        return decode(_png(size, (10, 200, 30)), max_pixels=10_000_000, max_side=512).pixels

    pairs = [((1, 1), (1, 1)), ((800, 1), (200, 1)), ((1, 800), (1, 200)), ((2, 2), (640, 2))]
    for query, candidate in pairs:
        v = lf.verify([pixels(query)], pixels(candidate))
        assert v == lf.NOT_VERIFIED, (query, candidate, v)
