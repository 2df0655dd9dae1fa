"""Moderation signals on generated images: quality, codes, NSFW batching, OCR gate and reading."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
import segno
import zxingcpp
from PIL import Image, ImageDraw, ImageFont

from imgaudit.models.nsfw import NsfwScorer
from imgaudit.models.ocr import OcrEngine, resize_longest
from imgaudit.signals.codes import read_codes
from imgaudit.signals.labels import names, top_labels
from imgaudit.signals.quality import measure
from imgaudit.testing.fakes import textured_image


def _rgb(seed: int = 278, size: tuple[int, int] = (640, 480)) -> np.ndarray:
    return np.asarray(textured_image(seed, size).convert("RGB"))


def _qr(payload: str, scale: int) -> np.ndarray:
    buf = io.BytesIO()
    segno.make(payload, error="m").save(buf, kind="png", scale=scale, border=2)
    return np.asarray(Image.open(buf).convert("RGB"))


def _paste(base: np.ndarray, patch: np.ndarray, x: int, y: int) -> np.ndarray:
    out = base.copy()
    out[y : y + patch.shape[0], x : x + patch.shape[1]] = patch
    return out


# -- quality ---------------------------------------------------------------------------------------------


def test_blur_lowers_sharpness_and_scale_does_not_change_it_much() -> None:
    sharp = _rgb()
    blurred = cv2.GaussianBlur(sharp, (0, 0), 4)
    s, b = measure(sharp, 640, 480), measure(blurred, 640, 480)
    assert b.sharpness < s.sharpness / 5
    bigger = cv2.resize(sharp, (1280, 960), interpolation=cv2.INTER_CUBIC)
    assert measure(bigger, 1280, 960).sharpness == pytest.approx(s.sharpness, rel=0.35)


def test_blank_and_one_colour_images() -> None:
    flat = np.full((300, 400, 3), 200, np.uint8)
    q = measure(flat, 400, 300)
    assert q.contrast < 1 and q.dominant_fraction == 1.0
    product = _paste(np.full((400, 400, 3), 255, np.uint8), _rgb(size=(60, 60)), 170, 170)
    assert 0.9 < measure(product, 400, 400).dominant_fraction < 1.0
    assert measure(_rgb(), 640, 480).dominant_fraction < 0.5


# -- codes -----------------------------------------------------------------------------------------------


def test_qr_code_is_decoded_with_its_box_in_original_pixels() -> None:
    img = _paste(_rgb(), _qr("weixin://wxpay/bizpayurl?pr=abc123", 4), 300, 100)
    (code,) = read_codes(img, scale=2.0)
    assert code.format == "QRCode" and code.text == "weixin://wxpay/bizpayurl?pr=abc123"
    xs = [p[0] for p in code.box]
    assert 580 < min(xs) < 640 and max(xs) > min(xs) + 150  # scaled by 2


def test_a_code_too_small_to_read_is_read_on_the_larger_decode() -> None:
    big = _paste(_rgb(size=(1600, 1200)), _qr("https://shop.example.cn/u/889900", 5), 900, 500)
    small, factor = resize_longest(big, 340)
    assert read_codes(small, scale=factor) == ()  # about a pixel per module: seen, not readable
    calls = []

    def larger() -> tuple[np.ndarray, float]:
        calls.append(1)
        return big, 1.0

    (code,) = read_codes(small, scale=factor, larger=larger)
    assert calls and code.text == "https://shop.example.cn/u/889900"


def test_no_code_in_a_photo_and_linear_barcodes_only_when_asked() -> None:
    assert read_codes(_rgb()) == ()
    ean = np.asarray(zxingcpp.create_barcode("5901234123457", zxingcpp.BarcodeFormat.EAN13).to_image(scale=3))
    img = _paste(_rgb(), np.repeat(ean[:, :, None], 3, axis=2), 100, 100)
    assert read_codes(img) == ()
    (code,) = read_codes(img, barcodes=True)
    assert code.format == "EAN13" and code.text == "5901234123457"


# -- NSFW ------------------------------------------------------------------------------------------------


def test_nsfw_batched_equals_one_by_one_and_is_low_on_textures() -> None:
    scorer = NsfwScorer.bundled(batch_size=2)
    images = [_rgb(s, (320, 240)) for s in (278, 371, 246)]
    together = scorer.score(images)
    alone = [scorer.score([im])[0] for im in images]
    assert together == pytest.approx(alone, abs=1e-4)
    assert all(0.0 <= p < 0.5 for p in together)
    assert scorer.score([]) == []


# -- labels ----------------------------------------------------------------------------------------------


def test_label_names_and_top_labels() -> None:
    assert len(names()) == 1000 and names()[0] == "tench"
    probs = np.zeros(1000, np.float32)
    probs[281], probs[285], probs[1] = 0.6, 0.3, 0.01
    assert [n for n, _ in top_labels(probs)] == [names()[281], names()[285]]


# -- OCR -------------------------------------------------------------------------------------------------


def _text_image(text: str, size: int = 36, font: ImageFont.ImageFont | None = None) -> np.ndarray:
    im = textured_image(371, (800, 600)).convert("RGB")
    draw = ImageDraw.Draw(im)
    font = font or ImageFont.load_default(size)
    draw.rectangle((30, 470, 770, 540), fill=(250, 250, 250))
    draw.text((40, 480), text, font=font, fill=(10, 10, 10))
    return np.asarray(im)


@pytest.fixture(scope="module")
def ocr() -> OcrEngine:
    return OcrEngine()


def test_ocr_detects_text_and_nothing_on_a_plain_texture(ocr: OcrEngine) -> None:
    with_text, _ = resize_longest(_text_image("Call 13812345678 today"), 512)
    plain = cv2.GaussianBlur(_rgb(98, (512, 384)), (0, 0), 3)
    found, none = ocr.detect([with_text, plain], 512)
    assert len(found) >= 1 and len(none) == 0


def test_ocr_reads_a_line_and_maps_its_box_to_original_pixels(ocr: OcrEngine) -> None:
    img = _text_image("Call 13812345678 today")
    half, factor = resize_longest(img, 400)
    (lines,) = ocr.read([half], 960, [factor])
    assert lines, "no text read"
    joined = " ".join(line.text for line in lines)
    assert "13812345678" in joined.replace(" ", "")
    xs = [p[0] for line in lines for p in line.box]
    ys = [p[1] for line in lines for p in line.box]
    assert min(ys) > 420 and max(ys) < 580 and min(xs) < 120  # in the 800x600 frame, around the text


def test_ocr_reads_chinese(ocr: OcrEngine, cjk_font_path: str) -> None:
    font = ImageFont.truetype(cjk_font_path, 40)
    (lines,) = ocr.read([_text_image("微信 shop8888 包邮", font=font)], 960, [1.0])
    text = "".join(line.text for line in lines).replace(" ", "")
    assert "微信" in text and "shop8888" in text and "包邮" in text


@pytest.mark.parametrize("angle", [90, -90])
def test_ocr_reads_vertical_text_either_way_round(ocr: OcrEngine, angle: int) -> None:
    canvas = Image.new("RGB", (600, 800), (240, 240, 240))
    line = Image.new("RGB", (500, 60), (255, 255, 255))
    ImageDraw.Draw(line).text((10, 5), "QQ 75624117253", font=ImageFont.load_default(44), fill=(0, 0, 0))
    canvas.paste(line.rotate(angle, expand=True), (250, 100))
    (lines,) = ocr.read([np.asarray(canvas)], 960, [1.0])
    assert [ln.text for ln in lines] == ["QQ 75624117253"]
