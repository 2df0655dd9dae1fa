"""Deterministic generator of a copy-detection benchmark set for imgaudit.

Why this exists: the near-duplicate detector has to be measured on the kind of copies that
e-commerce re-uploads actually contain (re-compressed, cropped, re-coloured, watermarked with
Chinese promo text, screenshotted inside a phone app ...) and on hard negatives (different photos
of the same subject). Real photos come from a manifest (see ``build_benchmark``); everything derived
from them is a pure function of the seed so that benchmark numbers are comparable between runs.

Layout written to ``out_dir``::

    bench.jsonl              one JSON object per image (see ``build_benchmark``)
    refs/r0000.jpg           references, ~1 MP JPEG q90 (longest side 1000-1200 px)
    queries/r0000_q0.jpg     transformed copies of a reference (``ref`` field says which)
    distractors/d0000.jpg    images that must NOT match any reference

Ground truth invariant: two images in the set are copies of each other if and only if they share a
reference (the reference itself and its queries). Source photos that are near-duplicates of each
other (the same picture shipped at two sizes, consecutive video frames, a stereo pair, ...) are
grouped first so that such a pair can never end up on both sides of the reference/distractor split,
and every distractor comes from its own group.

Run ``python bench/transforms.py MANIFEST OUT_DIR`` to build a set, or
``python bench/transforms.py --self-check [MANIFEST]`` for a quick smoke test.
"""

from __future__ import annotations

import argparse
import colorsys
import contextvars
import functools
import io
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

Transform = Callable[[Image.Image, random.Random], Image.Image]
FontT = ImageFont.FreeTypeFont | ImageFont.ImageFont

JPEG_QUALITY = 90
REF_LONG_SIDE = (1000, 1200)  # real listing photos are about 1 MP
MIN_SOURCE_SIDE = 200

# Paths tried, in order, when no font_path is given. Noto first (best coverage), then WenQuanYi.
KNOWN_CJK_FONTS: tuple[str, ...] = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/opentype/noto/NotoSerifCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/wenquanyi/wqy-microhei/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
    "/System/Library/Fonts/PingFang.ttc",
    "C:/Windows/Fonts/msyh.ttc",
)

# Overlay phrases seen on re-uploaded listing photos; mostly Chinese because that is where the
# missing-glyph problem would hide.
OVERLAY_PHRASES: tuple[str, ...] = (
    "正品保证 包邮",
    "限时特价 ¥199",
    "微信 13812345678",
    "SALE 50% OFF",
    "假一赔十",
    "全国包邮 七天无理由",
    "官方旗舰店",
    "新品上市 买一送一",
    "扫码加群 领优惠券",
    "VX: shop8888",
    "QQ 2736451890",
    "¥ 59.90",
    "爆款热卖",
    "FREE SHIPPING",
    "NEW ARRIVAL",
    "@好物分享",
    "www.best-deal-shop.cn",
    "厂家直销 批发价",
)

_FONT_PATH_OVERRIDE: contextvars.ContextVar[str | None] = contextvars.ContextVar("font_path", default=None)
_RAW_JPEG_KEY = "imgaudit_bench_jpeg_bytes"
_TRANSFORM_NAME_KEY = "imgaudit_bench_transform"


# --------------------------------------------------------------------------------------------
# Fonts
# --------------------------------------------------------------------------------------------


def _fc_list_zh() -> list[str]:
    """Ask fontconfig for Chinese-capable fonts; the known-path list cannot cover every distro."""
    if shutil.which("fc-list") is None:
        return []
    try:
        out = subprocess.run(
            ["fc-list", ":lang=zh", "file"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    files = sorted({line.split(":")[0].strip() for line in out.splitlines() if line.strip()})
    # Prefer sans regular faces: they are what overlay text on listings looks like.
    return sorted(files, key=lambda f: ("Sans" not in f, "Bold" in f, f))


@functools.lru_cache(maxsize=64)
def _ttc_index(path: str) -> int:
    """Pick the Simplified-Chinese face of a collection so glyph shapes are the mainland ones."""
    if not path.lower().endswith(".ttc"):
        return 0
    for index in range(16):
        try:
            family = ImageFont.truetype(path, 12, index=index).getname()[0] or ""
        except OSError:
            break
        if family.endswith(" SC") or " SC " in family:
            return index
    return 0


def font_has_cjk(font: FontT) -> bool:
    """True if '正' and '品' render as real, distinct glyphs rather than nothing or the tofu box.

    The reference for "missing" is a private-use code point no font maps, so it renders .notdef.
    """
    try:
        tofu = font.getmask("\U0010fffd")
        tofu_sig = (tofu.getbbox(), bytes(tofu))
        sigs = []
        for ch in "正品":
            mask = font.getmask(ch)
            sig = (mask.getbbox(), bytes(mask))
            if not sig[0] or sig == tofu_sig:
                return False
            sigs.append(sig)
        return sigs[0] != sigs[1]
    except Exception:  # any rendering failure means "not usable"
        return False


@functools.lru_cache(maxsize=16)
def resolve_font_path(font_path: str | None = None) -> str | None:
    """Return a font file that really renders Chinese, or None.

    Order: the explicit ``font_path``, then ``KNOWN_CJK_FONTS``, then whatever ``fc-list :lang=zh``
    reports. Each candidate is verified with ``font_has_cjk`` because a font that exists but lacks
    the glyphs would silently turn the text overlays into boxes.
    """
    candidates: list[str] = []
    if font_path:
        candidates.append(font_path)
    candidates += [p for p in KNOWN_CJK_FONTS if p not in candidates]
    for path in [*candidates, *_fc_list_zh()]:
        if not os.path.isfile(path):
            if path == font_path:
                print(f"warning: font_path {path!r} does not exist; searching known fonts", file=sys.stderr)
            continue
        try:
            font = ImageFont.truetype(path, 32, index=_ttc_index(path))
        except OSError:
            continue
        if font_has_cjk(font):
            return path
        if path == font_path:
            print(f"warning: font_path {path!r} has no CJK glyphs; searching known fonts", file=sys.stderr)
    return None


@functools.lru_cache(maxsize=1)
def _warn_no_cjk_font() -> None:
    print(
        "warning: no CJK-capable font found (install fonts-noto-cjk or fonts-wqy-microhei, or pass "
        "font_path); Chinese overlay text will render as boxes with Pillow's default font",
        file=sys.stderr,
    )


@functools.lru_cache(maxsize=512)
def _load_font(path: str | None, size: int) -> FontT:
    if path is None:
        _warn_no_cjk_font()
        return ImageFont.load_default(size=size)
    return ImageFont.truetype(path, size, index=_ttc_index(path))


def get_font(size: int) -> FontT:
    """Font of ``size`` px for overlays, resolved from the active font_path override at call time."""
    return _load_font(resolve_font_path(_FONT_PATH_OVERRIDE.get()), max(6, int(size)))


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def to_rgb(img: Image.Image) -> Image.Image:
    """Flatten alpha onto white (how a marketplace page shows a transparent PNG) and drop palettes."""
    img = ImageOps.exif_transpose(img) or img
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return img.convert("RGB")


def _resize_long_side(img: Image.Image, long_side: int) -> Image.Image:
    scale = long_side / max(img.size)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    return img.resize(size, Image.Resampling.LANCZOS)


def _rand_colour(rng: random.Random, *, bright: bool = False) -> tuple[int, int, int]:
    h = rng.random()
    s = rng.uniform(0.6, 1.0)
    v = rng.uniform(0.85, 1.0) if bright else rng.uniform(0.2, 1.0)
    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return round(r * 255), round(g * 255), round(b * 255)


def _contrast_colour(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    luma = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return (0, 0, 0) if luma > 140 else (255, 255, 255)


def _text_size(draw: ImageDraw.ImageDraw, text: str, font: FontT) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
    return int(x0), int(y0), int(x1 - x0), int(y1 - y0)


def encode_jpeg(img: Image.Image, quality: int = JPEG_QUALITY) -> bytes:
    """JPEG bytes with fixed encoder settings (4:2:0, no optimise) so output is byte-stable."""
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality, subsampling=2, optimize=False)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# Transforms: (RGB image, rng) -> RGB image. All randomness comes from the rng argument.
# --------------------------------------------------------------------------------------------


def downscale(img: Image.Image, rng: random.Random) -> Image.Image:
    """Thumbnails and re-uploads are often much smaller than the original: 25-50 % per side."""
    scale = rng.uniform(0.25, 0.5)
    size = (max(8, round(img.width * scale)), max(8, round(img.height * scale)))
    method = rng.choice([Image.Resampling.BILINEAR, Image.Resampling.BICUBIC, Image.Resampling.LANCZOS])
    return img.resize(size, method)


def crop(img: Image.Image, rng: random.Random) -> Image.Image:
    """Keep 50-90 % of the area at a random position, with the aspect changed by up to 4:3."""
    w, h = img.size
    area = rng.uniform(0.5, 0.9) * w * h
    ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))  # new aspect / old aspect
    cw = min(w, math.sqrt(area * ratio * w / h))
    ch = min(h, area / cw)
    cw = min(w, area / ch)  # if height was clamped, widen to keep the requested area
    cw, ch = max(8, round(cw)), max(8, round(ch))
    x0 = rng.randint(0, w - cw)
    y0 = rng.randint(0, h - ch)
    return img.crop((x0, y0, x0 + cw, y0 + ch))


def jpeg(img: Image.Image, rng: random.Random) -> Image.Image:
    """Heavy re-compression (q 15-50). The encoded bytes ride along so they can be saved unchanged."""
    data = encode_jpeg(img, quality=rng.randint(15, 50))
    out = Image.open(io.BytesIO(data))
    out.load()
    out.info[_RAW_JPEG_KEY] = data
    return out


def _hue_shift(img: Image.Image, shift: float) -> Image.Image:
    hsv = np.asarray(img.convert("HSV")).copy()
    hsv[..., 0] = ((hsv[..., 0].astype(np.int16) + round(shift * 256)) % 256).astype(np.uint8)
    return Image.fromarray(hsv, "HSV").convert("RGB")


def color_jitter(img: Image.Image, rng: random.Random) -> Image.Image:
    """Brightness/contrast/saturation by +-30-40 % each (random order) plus a slight hue rotation."""
    ops: list[Callable[[Image.Image], Image.Image]] = []
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        factor = 1 + rng.choice((-1, 1)) * rng.uniform(0.3, 0.4)
        ops.append(lambda im, e=enhancer, f=factor: e(im).enhance(f))
    hue = rng.choice((-1, 1)) * rng.uniform(0.02, 0.06)  # 7-22 degrees
    ops.append(lambda im, s=hue: _hue_shift(im, s))
    rng.shuffle(ops)
    for op in ops:
        img = op(img)
    return img


def grayscale(img: Image.Image, rng: random.Random) -> Image.Image:
    """Desaturated copy, kept as 3-channel RGB like a re-upload would be."""
    del rng
    return img.convert("L").convert("RGB")


def flip(img: Image.Image, rng: random.Random) -> Image.Image:
    """Horizontal mirror: a cheap trick re-uploaders use to dodge exact-hash matching."""
    del rng
    return ImageOps.mirror(img)


def rotate(img: Image.Image, rng: random.Random) -> Image.Image:
    """A quarter-turn (1 in 4) or a tilt of 5-25 degrees with the corners filled white or black."""
    if rng.random() < 0.25:
        return img.transpose(
            rng.choice([Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270])
        )
    angle = rng.choice((-1, 1)) * rng.uniform(5, 25)
    fill = rng.choice([(255, 255, 255), (0, 0, 0)])
    return img.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=fill)


def text_overlay(img: Image.Image, rng: random.Random) -> Image.Image:
    """1-3 lines of promo text (mostly Chinese), 4-12 % of the height, optional translucent box."""
    w, h = img.size
    overlay = Image.new("RGBA", img.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    lines = rng.sample(OVERLAY_PHRASES, rng.randint(1, 3))
    stacked = rng.random() < 0.6  # one block of lines vs lines scattered independently
    size = round(h * rng.uniform(0.04, 0.12))
    colour = rng.choice([(230, 20, 20), (255, 255, 255), (255, 220, 0), (0, 0, 0), _rand_colour(rng)])
    alpha = 255 if rng.random() < 0.7 else rng.randint(120, 210)  # sometimes a watermark
    stroke = max(1, size // 14) if rng.random() < 0.4 else 0
    with_box = rng.random() < 0.5
    box_colour = rng.choice([(0, 0, 0), (255, 255, 255), (200, 0, 0), _contrast_colour(colour)])
    box_alpha = rng.randint(90, 200)

    def fitted(text: str, px: int) -> tuple[FontT, tuple[int, int, int, int]]:
        font = get_font(px)
        dims = _text_size(draw, text, font)
        if dims[2] > 0.95 * w:  # shrink to fit the width rather than running off the image
            font = get_font(max(6, int(px * 0.95 * w / dims[2])))
            dims = _text_size(draw, text, font)
        return font, dims

    rendered = []
    for text in lines:
        px = size if stacked else round(h * rng.uniform(0.04, 0.12))
        font, dims = fitted(text, px)
        rendered.append((text, font, dims))
    pad = max(2, size // 5)
    if stacked:
        block_w = max(d[2] for _, _, d in rendered) + 2 * pad
        block_h = sum(d[3] + pad for _, _, d in rendered) + pad
        bx = rng.randint(0, max(0, w - block_w))
        by = rng.randint(0, max(0, h - block_h))
        positions = []
        y = by + pad
        for _, _, d in rendered:
            positions.append((bx + pad, y))
            y += d[3] + pad
    else:
        positions = [
            (
                rng.randint(0, max(0, w - d[2] - 2 * pad)) + pad,
                rng.randint(0, max(0, h - d[3] - 2 * pad)) + pad,
            )
            for _, _, d in rendered
        ]
    for (text, font, (ox, oy, tw, th)), (x, y) in zip(rendered, positions, strict=True):
        if with_box:
            draw.rectangle((x - pad, y - pad, x + tw + pad, y + th + pad), fill=(*box_colour, box_alpha))
        draw.text(
            (x - ox, y - oy),
            text,
            font=font,
            fill=(*colour, alpha),
            stroke_width=stroke,
            stroke_fill=(*_contrast_colour(colour), alpha),
        )
    return Image.alpha_composite(img.convert("RGBA"), overlay).convert("RGB")


def _star(cx: float, cy: float, r: float, points: int, rot: float) -> list[tuple[float, float]]:
    out = []
    for i in range(points * 2):
        rad = r if i % 2 == 0 else r * 0.45
        a = rot + math.pi * i / points
        out.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return out


def _heart(x0: float, y0: float, x1: float, y1: float) -> list[tuple[float, float]]:
    cx, cy, sx, sy = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 34, (y1 - y0) / 30
    pts = []
    for i in range(48):
        t = 2 * math.pi * i / 48
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        pts.append((cx + sx * x, cy - sy * (y + 2)))
    return pts


def sticker_overlay(img: Image.Image, rng: random.Random) -> Image.Image:
    """1-4 stickers (smileys, stars, hearts, blobs, logo badges) covering 5-20 % of the area."""
    w, h = img.size
    out = img.convert("RGBA")
    n = rng.randint(1, 4)
    weights = [rng.uniform(0.5, 1.5) for _ in range(n)]
    total = rng.uniform(0.05, 0.20) * w * h
    # Approximate fill factor of each shape inside its bounding box, to hit the covered area.
    fill_factor = {"smiley": math.pi / 4, "star": 0.42, "heart": 0.62, "blob": 0.7, "logo": 0.95}
    for weight in weights:
        kind = rng.choice(list(fill_factor))
        bbox_area = total * weight / sum(weights) / fill_factor[kind]
        aspect = 1.0 if kind in ("smiley", "star") else rng.uniform(0.6, 1.7)
        bw = min(w, math.sqrt(bbox_area * aspect))
        bh = min(h, bbox_area / max(bw, 1))
        bw, bh = max(4, round(bw)), max(4, round(bh))
        x0, y0 = rng.randint(0, w - bw), rng.randint(0, h - bh)
        x1, y1 = x0 + bw, y0 + bh
        alpha = 255 if rng.random() < 0.6 else rng.randint(110, 220)
        colour = _rand_colour(rng, bright=True)
        layer = Image.new("RGBA", img.size, (0, 0, 0, 0))
        d = ImageDraw.Draw(layer)
        if kind == "smiley":
            d.ellipse(
                (x0, y0, x1, y1), fill=(255, 204, 0, 255), outline=(120, 70, 0, 255), width=max(1, bw // 30)
            )
            ex, ey, er = bw * 0.18, bh * 0.35, max(1, bw * 0.07)
            for cx in (x0 + bw / 2 - ex, x0 + bw / 2 + ex):
                d.ellipse((cx - er, y0 + ey - er * 1.4, cx + er, y0 + ey + er * 1.4), fill=(60, 30, 0, 255))
            d.arc(
                (x0 + bw * 0.25, y0 + bh * 0.35, x1 - bw * 0.25, y1 - bh * 0.2),
                20,
                160,
                fill=(60, 30, 0, 255),
                width=max(1, bw // 18),
            )
        elif kind == "star":
            r = min(bw, bh) / 2
            d.polygon(
                _star(x0 + bw / 2, y0 + bh / 2, r, rng.choice([5, 6, 8]), rng.uniform(0, math.pi)),
                fill=(*colour, 255),
            )
        elif kind == "heart":
            d.polygon(_heart(x0, y0, x1, y1), fill=(*colour, 255))
        elif kind == "blob":
            for _ in range(rng.randint(3, 6)):
                rx, ry = bw * rng.uniform(0.25, 0.45), bh * rng.uniform(0.25, 0.45)
                cx, cy = rng.uniform(x0 + rx, x1 - rx), rng.uniform(y0 + ry, y1 - ry)
                d.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=(*colour, 255))
        else:  # logo badge: rounded rectangle with a short word
            d.rounded_rectangle((x0, y0, x1, y1), radius=min(bw, bh) // 5, fill=(*colour, 255))
            word = rng.choice(["HOT", "NEW", "店", "LOGO", "热卖", "VIP", "促销"])
            font = get_font(round(bh * 0.55))
            ox, oy, tw, th = _text_size(d, word, font)
            if tw > bw * 0.9:
                font = get_font(max(6, int(bh * 0.55 * bw * 0.9 / tw)))
                ox, oy, tw, th = _text_size(d, word, font)
            d.text(
                (x0 + (bw - tw) / 2 - ox, y0 + (bh - th) / 2 - oy),
                word,
                font=font,
                fill=(*_contrast_colour(colour), 255),
            )
        if alpha < 255:
            a = layer.getchannel("A").point(lambda v, k=alpha: v * k // 255)
            layer.putalpha(a)
        out = Image.alpha_composite(out, layer)
    return out.convert("RGB")


def _draw_status_bar(
    d: ImageDraw.ImageDraw, width: int, height: int, fg: tuple[int, int, int], rng: random.Random
) -> None:
    font = get_font(round(height * 0.45))
    clock = f"{rng.randint(7, 23)}:{rng.randint(0, 59):02d}"
    ox, oy, _, th = _text_size(d, clock, font)
    d.text((round(width * 0.07) - ox, (height - th) // 2 - oy), clock, font=font, fill=fg)
    # signal bars, then battery
    unit = height * 0.1
    bx = width * 0.70
    for i in range(4):
        bar_h = unit * (1.2 + i * 0.8)
        d.rectangle(
            (bx + i * unit * 1.6, height * 0.7 - bar_h, bx + i * unit * 1.6 + unit, height * 0.7), fill=fg
        )
    batt_x = width * 0.84
    d.rounded_rectangle(
        (batt_x, height * 0.35, batt_x + unit * 6, height * 0.68),
        radius=unit * 0.6,
        outline=fg,
        width=max(1, round(unit * 0.3)),
    )
    level = rng.uniform(0.2, 1.0)
    d.rectangle(
        (
            batt_x + unit * 0.6,
            height * 0.35 + unit * 0.6,
            batt_x + unit * 0.6 + unit * 4.8 * level,
            height * 0.68 - unit * 0.6,
        ),
        fill=fg,
    )


def pad_frame(img: Image.Image, rng: random.Random) -> Image.Image:
    """Screenshot-style framing: the photo inside a phone app page, or inside a plain border."""
    if rng.random() < 0.3:
        # Plain border / letterbox: 3-20 % padding per side, sometimes a caption strip.
        colour = rng.choice([(255, 255, 255), (0, 0, 0), (240, 240, 240), (30, 30, 30), _rand_colour(rng)])
        w, h = img.size
        left, right = (round(w * rng.uniform(0.03, 0.2)) for _ in range(2))
        top, bottom = (round(h * rng.uniform(0.03, 0.2)) for _ in range(2))
        canvas = Image.new("RGB", (w + left + right, h + top + bottom), colour)
        canvas.paste(img, (left, top))
        if bottom > h * 0.08 and rng.random() < 0.6:
            d = ImageDraw.Draw(canvas)
            text = rng.choice(OVERLAY_PHRASES)
            font = get_font(round(bottom * 0.5))
            ox, oy, tw, th = _text_size(d, text, font)
            if tw < canvas.width * 0.95:
                d.text(
                    ((canvas.width - tw) / 2 - ox, top + h + (bottom - th) / 2 - oy),
                    text,
                    font=font,
                    fill=_contrast_colour(colour),
                )
        return canvas

    dark = rng.random() < 0.35
    bg = (
        rng.choice([(0, 0, 0), (18, 18, 18), (28, 28, 30)])
        if dark
        else rng.choice([(255, 255, 255), (245, 245, 245)])
    )
    fg = (235, 235, 235) if dark else (20, 20, 20)
    cw = rng.choice([720, 750, 828, 1080, 1170, 1242])
    ch = round(cw * rng.uniform(1.78, 2.17))
    canvas = Image.new("RGB", (cw, ch), bg)
    d = ImageDraw.Draw(canvas)
    status_h = round(cw * rng.uniform(0.07, 0.12))
    _draw_status_bar(d, cw, status_h, fg, rng)
    y = status_h
    if rng.random() < 0.75:  # app header: back arrow and page title
        header_h = round(cw * rng.uniform(0.10, 0.14))
        d.line(
            (cw * 0.06, y + header_h * 0.3, cw * 0.035, y + header_h * 0.5, cw * 0.06, y + header_h * 0.7),
            fill=fg,
            width=max(2, cw // 200),
        )
        title = rng.choice(["商品详情", "宝贝详情", "Product details", "图片", "聊天"])
        font = get_font(round(header_h * 0.36))
        ox, oy, tw, th = _text_size(d, title, font)
        d.text(((cw - tw) / 2 - ox, y + (header_h - th) / 2 - oy), title, font=font, fill=fg)
        d.line((0, y + header_h - 1, cw, y + header_h - 1), fill=(60, 60, 60) if dark else (220, 220, 220))
        y += header_h
    bottom_h = round(cw * rng.uniform(0.12, 0.2))
    avail_h = ch - y - bottom_h - round(cw * 0.05)
    frac = 1.0 if rng.random() < 0.35 else rng.uniform(0.6, 0.9)
    iw = round(cw * frac)
    ih = round(img.height * iw / img.width)
    if ih > avail_h:
        iw, ih = max(8, round(iw * avail_h / ih)), avail_h
    shown = img.resize((iw, ih), Image.Resampling.LANCZOS)
    ix = (cw - iw) // 2 if rng.random() < 0.7 else round(cw * 0.04)
    iy = y + rng.randint(0, max(0, min(round(cw * 0.08), avail_h - ih)))
    canvas.paste(shown, (ix, iy))
    # Listing text under the photo: a red price and grey placeholder lines for the title.
    ty = iy + ih + round(cw * 0.04)
    if ty < ch - bottom_h - cw * 0.08:
        font = get_font(round(cw * 0.06))
        price = f"¥{rng.randint(9, 999)}.{rng.choice(['00', '90', '99'])}"
        ox, oy, _, th = _text_size(d, price, font)
        d.text((round(cw * 0.05) - ox, ty - oy), price, font=font, fill=(230, 40, 30))
        ty += th + round(cw * 0.03)
        grey = (90, 90, 90) if dark else (200, 200, 200)
        while ty < ch - bottom_h - cw * 0.05 and rng.random() < 0.8:
            d.rounded_rectangle(
                (cw * 0.05, ty, cw * rng.uniform(0.4, 0.95), ty + cw * 0.025), radius=cw * 0.01, fill=grey
            )
            ty += round(cw * 0.05)
    by = ch - bottom_h
    d.line((0, by, cw, by), fill=(60, 60, 60) if dark else (220, 220, 220))
    if rng.random() < 0.6:  # shop buttons
        font = get_font(round(bottom_h * 0.22))
        for label, x0, x1, col in (
            ("加入购物车", 0.42, 0.70, (255, 150, 0)),
            ("立即购买", 0.70, 0.96, (240, 40, 30)),
        ):
            d.rounded_rectangle(
                (cw * x0, by + bottom_h * 0.15, cw * x1, by + bottom_h * 0.6), radius=bottom_h * 0.2, fill=col
            )
            ox, oy, tw, th = _text_size(d, label, font)
            d.text(
                (cw * (x0 + x1) / 2 - tw / 2 - ox, by + bottom_h * 0.375 - th / 2 - oy),
                label,
                font=font,
                fill=(255, 255, 255),
            )
    d.rounded_rectangle(
        (cw * 0.35, ch - bottom_h * 0.18, cw * 0.65, ch - bottom_h * 0.18 + max(3, cw // 160)),
        radius=cw // 300 + 1,
        fill=fg,
    )  # home indicator
    return canvas


def blur(img: Image.Image, rng: random.Random) -> Image.Image:
    """Gaussian blur, radius 1.5-4 px (out-of-focus re-photograph or aggressive denoise)."""
    return img.filter(ImageFilter.GaussianBlur(radius=rng.uniform(1.5, 4.0)))


BASE_TRANSFORMS: dict[str, Transform] = {
    "downscale": downscale,
    "crop": crop,
    "jpeg": jpeg,
    "color_jitter": color_jitter,
    "grayscale": grayscale,
    "flip": flip,
    "rotate": rotate,
    "text_overlay": text_overlay,
    "sticker_overlay": sticker_overlay,
    "pad_frame": pad_frame,
    "blur": blur,
}


def apply_chain(img: Image.Image, rng: random.Random) -> tuple[Image.Image, str]:
    """2-3 distinct base transforms in sequence; returns the image and its record name 'chain:a+b'."""
    names = rng.sample(list(BASE_TRANSFORMS), rng.choice((2, 3)))
    for name in names:
        img = BASE_TRANSFORMS[name](img, rng)
    return img, "chain:" + "+".join(names)


def chain(img: Image.Image, rng: random.Random) -> Image.Image:
    """``apply_chain`` with the TRANSFORMS signature; the chosen name is left in ``img.info``."""
    out, name = apply_chain(img, rng)
    out.info[_TRANSFORM_NAME_KEY] = name
    return out


TRANSFORMS: dict[str, Transform] = {**BASE_TRANSFORMS, "chain": chain}


def apply_transform(name: str, img: Image.Image, rng: random.Random) -> tuple[Image.Image, str, bytes | None]:
    """Apply a named transform; returns (image, record name, JPEG bytes to keep or None).

    The bytes are only returned when the last step was the ``jpeg`` re-encode, because saving that
    image again at q90 would hide exactly the artefacts the transform is meant to produce.
    """
    if name == "chain":
        out, record = apply_chain(img, rng)
        last = record.rsplit("+", 1)[-1]
    else:
        out, record, last = TRANSFORMS[name](img, rng), name, name
    raw = out.info.get(_RAW_JPEG_KEY) if last == "jpeg" else None
    return out.convert("RGB") if out.mode != "RGB" else out, record, raw


def query_schedule(n_queries: int) -> list[str]:
    """Transform name for each query index: every 6th is a chain, the rest cycle the 11 base ones.

    Cycling (rather than sampling) gives every transform the same count up to one, and consecutive
    indices, i.e. the queries of one reference, get different transforms.
    """
    names = list(BASE_TRANSFORMS)
    out, base_i = [], 0
    for k in range(n_queries):
        if k % 6 == 5:
            out.append("chain")
        else:
            out.append(names[base_i % len(names)])
            base_i += 1
    return out


# Mild edits for "other_photo" distractors: enough that they are not pristine files, far from the
# strength of the query transforms.
def _mild(img: Image.Image, rng: random.Random) -> Image.Image:
    kind = rng.choice(["jpeg", "jitter", "crop", "scale", "blur", "flip"])
    if kind == "jpeg":
        out = Image.open(io.BytesIO(encode_jpeg(img, rng.randint(60, 85))))
        out.load()
        return out.convert("RGB")
    if kind == "jitter":
        img = ImageEnhance.Brightness(img).enhance(1 + rng.uniform(-0.15, 0.15))
        return ImageEnhance.Contrast(img).enhance(1 + rng.uniform(-0.15, 0.15))
    if kind == "crop":
        w, h = img.size
        fx, fy = rng.uniform(0.9, 0.98), rng.uniform(0.9, 0.98)
        cw, ch = round(w * fx), round(h * fy)
        x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
        return img.crop((x0, y0, x0 + cw, y0 + ch))
    if kind == "scale":
        s = rng.uniform(0.7, 0.9)
        return img.resize((round(img.width * s), round(img.height * s)), Image.Resampling.BICUBIC)
    if kind == "blur":
        return img.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.5, 1.0)))
    return ImageOps.mirror(img)


def _cover_resize(img: Image.Image, size: tuple[int, int], rng: random.Random) -> Image.Image:
    """Scale to cover ``size`` and crop the overflow at a random offset (keeps the aspect honest)."""
    tw, th = size
    scale = max(tw / img.width, th / img.height)
    rw, rh = max(tw, round(img.width * scale)), max(th, round(img.height * scale))
    img = img.resize((rw, rh), Image.Resampling.LANCZOS)
    x0, y0 = rng.randint(0, rw - tw), rng.randint(0, rh - th)
    return img.crop((x0, y0, x0 + tw, y0 + th))


def _colour_match(img: Image.Image, mean: np.ndarray, std: np.ndarray, strength: float) -> Image.Image:
    """Move per-channel mean/std toward target statistics (6 numbers, no spatial content)."""
    a = np.asarray(img, dtype=np.float32)
    m, s = a.reshape(-1, 3).mean(0), a.reshape(-1, 3).std(0) + 1e-3
    tm = m + strength * (mean - m)
    ts = s + strength * (std - s)
    out = (a - m) / s * ts + tm
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8), "RGB")


# --------------------------------------------------------------------------------------------
# Source photos and near-duplicate grouping
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Photo:
    """One eligible manifest row."""

    path: str  # relative to the manifest's directory, as written in the manifest
    source: str
    w: int
    h: int
    md5: str

    @property
    def parent(self) -> str:
        return os.path.dirname(self.path)

    @property
    def stem(self) -> str:
        """Lower-case file stem without trailing digits/separators: 'giraffe', 'hammer', 'colosseum'."""
        stem = os.path.splitext(os.path.basename(self.path))[0].lower()
        return stem.rstrip("0123456789_- ") or stem


def load_photos(manifest: Path) -> list[Photo]:
    """Rows with photo_like, not duplicate_of_earlier, min side >= 200 and present on disk, by path."""
    root = manifest.parent
    photos: dict[str, Photo] = {}
    missing = 0
    with manifest.open(encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            row = json.loads(line)
            if not row.get("photo_like") or row.get("duplicate_of_earlier"):
                continue
            if min(int(row["w"]), int(row["h"])) < MIN_SOURCE_SIDE:
                continue
            if not (root / row["path"]).is_file():
                missing += 1
                continue
            photos[row["path"]] = Photo(
                row["path"], str(row.get("source", "")), int(row["w"]), int(row["h"]), str(row.get("md5", ""))
            )
    if missing:
        print(f"warning: {missing} eligible manifest rows point to missing files; skipped", file=sys.stderr)
    return [photos[p] for p in sorted(photos)]


def open_photo(path: Path, draft: tuple[int, int] | None = None) -> Image.Image:
    with Image.open(path) as im:
        if draft is not None and im.format == "JPEG":
            im.draft("RGB", draft)
        im.load()
        return to_rgb(im)


def _dhash(gray: Image.Image) -> np.ndarray:
    a = np.asarray(gray.resize((17, 16), Image.Resampling.LANCZOS), dtype=np.int16)
    return (a[:, 1:] > a[:, :-1]).ravel()


@functools.lru_cache(maxsize=4)
def _near_duplicate_groups_cached(
    root: str, paths: tuple[str, ...], md5s: tuple[str, ...]
) -> tuple[int, ...]:
    del md5s  # part of the cache key only: a changed file must not reuse an old grouping
    n = len(paths)
    orb = cv2.ORB_create(nfeatures=200)
    kps: list[np.ndarray] = []
    descs: list[np.ndarray] = []
    hashes, hashes_flipped = [], []
    for rel in paths:
        gray = open_photo(Path(root) / rel, draft=(720, 720)).convert("L")
        scale = 360 / max(gray.size)
        small = gray.resize(
            (max(1, round(gray.width * scale)), max(1, round(gray.height * scale))),
            Image.Resampling.LANCZOS,
            reducing_gap=3.0,
        )
        hashes.append(_dhash(small))
        hashes_flipped.append(_dhash(ImageOps.mirror(small)))
        kp, d = orb.detectAndCompute(np.asarray(small), None)
        if d is None:
            kp, d = (), np.zeros((0, 32), np.uint8)
        kps.append(np.array([p.pt for p in kp], np.float32).reshape(-1, 2))
        descs.append(d)

    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        a, b = find(i), find(j)
        if a != b:
            parent[max(a, b)] = min(a, b)

    # 1) Whole-image rescales/re-encodes (also of flat images with too few ORB keypoints).
    hm = np.array(hashes)
    hf = np.array(hashes_flipped)
    dist = np.minimum((hm[:, None, :] != hm[None, :, :]).sum(-1), (hm[:, None, :] != hf[None, :, :]).sum(-1))
    for i, j in zip(*np.nonzero(np.triu(dist <= 40, k=1)), strict=True):
        union(int(i), int(j))

    # 2) Crops / partial overlaps: approximate candidate pairs by LSH voting, then an exact,
    #    deterministic check (cross-checked brute-force matches + RANSAC homography) per pair.
    owner = np.concatenate([np.full(len(d), i) for i, d in enumerate(descs)]) if n else np.zeros(0, int)
    all_d = np.vstack(descs) if n else np.zeros((0, 32), np.uint8)
    if len(all_d) > 0:
        flann = cv2.FlannBasedMatcher(
            {"algorithm": 6, "table_number": 8, "key_size": 16, "multi_probe_level": 1}, {"checks": 32}
        )
        flann.add([all_d])
        flann.train()
        votes: Counter[tuple[int, int]] = Counter()
        for qi, matches in enumerate(flann.knnMatch(all_d, k=4)):
            i = int(owner[qi])
            seen = set()
            for m in matches:
                j = int(owner[m.trainIdx])
                if j != i and j not in seen and m.distance <= 50:
                    seen.add(j)
                    votes[(min(i, j), max(i, j))] += 1
        bf = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True)
        for (i, j), count in sorted(votes.items()):
            if count < 8 or find(i) == find(j):
                continue
            good = [m for m in bf.match(descs[i], descs[j]) if m.distance <= 50]
            if len(good) < 12:
                continue
            src = kps[i][[m.queryIdx for m in good]]
            dst = kps[j][[m.trainIdx for m in good]]
            _, mask = cv2.findHomography(src, dst, cv2.RANSAC, 5.0)
            if mask is not None and int(mask.sum()) >= 18:
                union(i, j)
    return tuple(find(i) for i in range(n))


def near_duplicate_groups(root: Path, photos: Sequence[Photo]) -> list[int]:
    """Group id per photo (the smallest index in its group).

    Pairs are grouped when they are the same picture at another size/encoding (dHash) or share a
    large planar region (ORB + RANSAC, catches crops, consecutive frames, stereo pairs, edited
    copies). Deliberately conservative: a wrongly merged pair only costs a candidate photo, while a
    missed pair would put a copy of a reference among the distractors.
    """
    return list(
        _near_duplicate_groups_cached(str(root), tuple(p.path for p in photos), tuple(p.md5 for p in photos))
    )


# --------------------------------------------------------------------------------------------
# Benchmark builder
# --------------------------------------------------------------------------------------------


def _item_rng(seed: int, item_id: str) -> random.Random:
    """Per-item generator: items do not consume each other's random numbers (str seeds are stable)."""
    return random.Random(f"imgaudit-bench:{seed}:{item_id}")


def _write(path: Path, img: Image.Image, raw: bytes | None = None) -> None:
    path.write_bytes(raw if raw is not None else encode_jpeg(img))


def build_benchmark(
    manifest: Path,
    out_dir: Path,
    *,
    n_refs: int = 200,
    queries_per_ref: int = 2,
    n_distractors: int = 200,
    seed: int = 0,
    font_path: str | None = None,
) -> Path:
    """Build the benchmark in ``out_dir`` and return the path of ``out_dir/bench.jsonl``.

    Each line: ``{"id", "role": "ref"|"query"|"distractor", "path" (relative to out_dir),
    "ref" (reference id for queries, else null), "transform" (query transform name, or the
    distractor kind "other_photo"/"similar", null for refs), "source_photo" (manifest path)}``.

    Split: near-duplicate groups of source photos are shuffled with ``random.Random(seed)``; the first
    ``n_refs`` groups give one reference each. Distractors come only from the other groups, one per
    group, so they are never a transform of (or a near-copy of) a reference. If fewer groups are left
    than ``n_distractors``, fewer distractors are written (with a warning) rather than reusing a
    photo, which would create distractor-distractor duplicates.

    About half the distractors are "similar" hard negatives: a photo sharing its file stem
    (e.g. another giraffe) or directory (same series) with a reference, resized (cover-crop) to that
    reference's exact size and often pulled toward its global colour statistics (per-channel
    mean/std only, never its pixels). The rest are "other_photo": a reference-sized photo with one
    mild edit (light JPEG, small crop, ...).
    """
    manifest, out_dir = Path(manifest), Path(out_dir)
    if n_refs < 1 or queries_per_ref < 0 or n_distractors < 0:
        raise ValueError("n_refs must be >= 1, queries_per_ref and n_distractors >= 0")
    photos = load_photos(manifest)
    root = manifest.parent
    groups = near_duplicate_groups(root, photos)
    members: dict[int, list[Photo]] = {}
    for photo, g in zip(photos, groups, strict=True):
        members.setdefault(g, []).append(photo)
    group_ids = sorted(members)
    if n_refs > len(group_ids):
        raise ValueError(f"n_refs={n_refs} but only {len(group_ids)} distinct eligible photos in {manifest}")

    rng = random.Random(seed)
    rng.shuffle(group_ids)
    refs = [rng.choice(members[g]) for g in group_ids[:n_refs]]
    rest_groups = group_ids[n_refs:]

    # --- choose distractor photos (one per non-reference group) --------------------------------
    ref_by_stem: dict[str, list[int]] = {}
    ref_by_dir: dict[str, list[int]] = {}
    ref_by_source: dict[str, list[int]] = {}
    for k, p in enumerate(refs):
        ref_by_stem.setdefault(p.stem, []).append(k)
        ref_by_dir.setdefault(p.parent, []).append(k)
        ref_by_source.setdefault(p.source, []).append(k)

    def relation(p: Photo) -> tuple[int, list[int]]:
        """(priority, partner refs): 0 same subject name, 1 same directory, 2 same source, 3 none."""
        for prio, table, key in (
            (0, ref_by_stem, p.stem),
            (1, ref_by_dir, p.parent),
            (2, ref_by_source, p.source),
        ):
            if key in table:
                return prio, table[key]
        return 3, []

    candidates = []  # (priority, tiebreak, photo, partners)
    for g in rest_groups:
        scored = sorted(((relation(p), rng.random(), p) for p in members[g]), key=lambda t: (t[0][0], t[1]))
        (prio, partners), tie, photo = scored[0]
        candidates.append((prio, tie, photo, partners))
    n_similar_target = (n_distractors + 1) // 2
    by_relatedness = sorted(candidates, key=lambda c: (c[0], c[1]))
    similar = [c for c in by_relatedness if c[0] <= 2][:n_similar_target]
    chosen = {id(c) for c in similar}
    others = [c for c in sorted(candidates, key=lambda c: (-c[0], c[1])) if id(c) not in chosen]
    others = others[: n_distractors - len(similar)]
    if len(similar) + len(others) < n_distractors:
        print(
            f"warning: only {len(candidates)} non-reference photo groups available; writing "
            f"{len(similar) + len(others)} distractors instead of {n_distractors}",
            file=sys.stderr,
        )

    # --- write ---------------------------------------------------------------------------------
    out_dir.mkdir(parents=True, exist_ok=True)
    for sub in ("refs", "queries", "distractors"):
        d = out_dir / sub
        d.mkdir(exist_ok=True)
        for stale in d.glob("*.jpg"):  # only our own naming pattern; a rebuild must not mix runs
            stale.unlink()

    records: list[dict[str, object]] = []
    ref_ids: list[str] = []
    ref_sizes: list[tuple[int, int]] = []
    ref_stats: list[tuple[np.ndarray, np.ndarray]] = []
    schedule = query_schedule(n_refs * queries_per_ref)
    token = _FONT_PATH_OVERRIDE.set(font_path)
    try:
        resolve_font_path(font_path)
        for k, photo in enumerate(refs):
            ref_id = f"r{k:04d}"
            irng = _item_rng(seed, ref_id)
            src = open_photo(root / photo.path)
            ref_img = _resize_long_side(src, irng.randint(*REF_LONG_SIDE))
            data = encode_jpeg(ref_img)
            rel = f"refs/{ref_id}.jpg"
            (out_dir / rel).write_bytes(data)
            records.append(
                {
                    "id": ref_id,
                    "role": "ref",
                    "path": rel,
                    "ref": None,
                    "transform": None,
                    "source_photo": photo.path,
                }
            )
            # Queries are made from the published JPEG, as a re-uploader would get it.
            decoded = Image.open(io.BytesIO(data))
            decoded.load()
            decoded = decoded.convert("RGB")
            arr = np.asarray(decoded, dtype=np.float32).reshape(-1, 3)
            ref_ids.append(ref_id)
            ref_sizes.append(decoded.size)
            ref_stats.append((arr.mean(0), arr.std(0)))
            for j in range(queries_per_ref):
                q_id = f"{ref_id}_q{j}"
                name = schedule[k * queries_per_ref + j]
                q_img, record_name, raw = apply_transform(name, decoded.copy(), _item_rng(seed, q_id))
                rel = f"queries/{q_id}.jpg"
                _write(out_dir / rel, q_img, raw)
                records.append(
                    {
                        "id": q_id,
                        "role": "query",
                        "path": rel,
                        "ref": ref_id,
                        "transform": record_name,
                        "source_photo": photo.path,
                    }
                )

        distractors = [("similar", c) for c in similar] + [("other_photo", c) for c in others]
        for n, (kind, (_, _, photo, partners)) in enumerate(distractors):
            d_id = f"d{n:04d}"
            irng = _item_rng(seed, d_id)
            img = open_photo(root / photo.path)
            if kind == "similar":
                partner = irng.choice(partners)
                img = _cover_resize(img, ref_sizes[partner], irng)
                if irng.random() < 0.6:
                    mean, std = ref_stats[partner]
                    img = _colour_match(img, mean, std, irng.uniform(0.5, 0.9))
            else:
                img = _mild(_resize_long_side(img, irng.randint(*REF_LONG_SIDE)), irng)
            rel = f"distractors/{d_id}.jpg"
            _write(out_dir / rel, img)
            records.append(
                {
                    "id": d_id,
                    "role": "distractor",
                    "path": rel,
                    "ref": None,
                    "transform": kind,
                    "source_photo": photo.path,
                }
            )
    finally:
        _FONT_PATH_OVERRIDE.reset(token)

    bench = out_dir / "bench.jsonl"
    tmp = bench.with_suffix(".jsonl.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    tmp.replace(bench)
    return bench


# --------------------------------------------------------------------------------------------
# CLI and self-check
# --------------------------------------------------------------------------------------------


def summarise(bench: Path) -> dict[str, int]:
    """Counts per role and per transform name (chains folded into 'chain' plus 'chain:<step>')."""
    counts: Counter[str] = Counter()
    for line in bench.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        counts[f"role:{rec['role']}"] += 1
        t = rec["transform"]
        if rec["role"] == "query":
            if t.startswith("chain:"):
                counts["query:chain"] += 1
                for step in t.split(":", 1)[1].split("+"):
                    counts[f"  chain_step:{step}"] += 1
            else:
                counts[f"query:{t}"] += 1
        elif rec["role"] == "distractor":
            counts[f"distractor:{t}"] += 1
    return dict(sorted(counts.items(), key=lambda kv: (kv[0].startswith(" "), kv[0])))


def _print_counts(bench: Path) -> None:
    for key, value in summarise(bench).items():
        print(f"{key:32s} {value:5d}")


def self_check(manifest: Path) -> None:
    """Fast smoke test (not pytest): font coverage, every transform once, a tiny build twice."""
    t0 = time.perf_counter()
    font_path = resolve_font_path(None)
    print(f"CJK font: {font_path}")
    if font_path is not None:
        font = _load_font(font_path, 48)
        assert font_has_cjk(font), "resolved font cannot render 正品"
        print(f"  face: {font.getname()}; '正' bbox {font.getmask('正').getbbox()}")

    rng = random.Random(1)
    base = Image.new("RGB", (640, 480))
    base.putdata([(x % 256, y % 256, (x * y) % 256) for y in range(480) for x in range(640)])
    for name in TRANSFORMS:
        out, record, raw = apply_transform(name, base.copy(), rng)
        assert out.mode == "RGB" and min(out.size) >= 8, name
        assert (raw is not None) == (record.rsplit("+", 1)[-1].split(":")[-1] == "jpeg"), record
        print(f"  {record:45s} -> {out.size}")

    with tempfile.TemporaryDirectory() as tmp:
        a = build_benchmark(manifest, Path(tmp) / "a", n_refs=5, queries_per_ref=3, n_distractors=6, seed=3)
        b = build_benchmark(manifest, Path(tmp) / "b", n_refs=5, queries_per_ref=3, n_distractors=6, seed=3)
        assert a.read_text() == b.read_text(), "bench.jsonl differs between identical builds"
        recs = [json.loads(x) for x in a.read_text().splitlines()]
        for rec in recs:
            pa, pb = a.parent / rec["path"], b.parent / rec["path"]
            assert pa.read_bytes() == pb.read_bytes(), f"{rec['path']} differs between identical builds"
        ref_sources = {r["source_photo"] for r in recs if r["role"] == "ref"}
        assert not ref_sources & {r["source_photo"] for r in recs if r["role"] == "distractor"}
        _print_counts(a)
    print(f"self-check OK in {time.perf_counter() - t0:.1f} s")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("manifest", type=Path, nargs="?", help="manifest.jsonl of the source photos")
    parser.add_argument("out_dir", type=Path, nargs="?", help="output directory")
    parser.add_argument("--n-refs", type=int, default=200)
    parser.add_argument("--queries-per-ref", type=int, default=2)
    parser.add_argument("--n-distractors", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--font-path", default=None)
    parser.add_argument("--self-check", action="store_true", help="run the quick smoke test and exit")
    args = parser.parse_args(argv)
    if args.self_check:
        if args.manifest is None:
            parser.error("--self-check needs MANIFEST (made by fetch-dev-photos.sh)")
        self_check(args.manifest)
        return 0
    if args.manifest is None or args.out_dir is None:
        parser.error("MANIFEST and OUT_DIR are required (or use --self-check)")
    t0 = time.perf_counter()
    bench = build_benchmark(
        args.manifest,
        args.out_dir,
        n_refs=args.n_refs,
        queries_per_ref=args.queries_per_ref,
        n_distractors=args.n_distractors,
        seed=args.seed,
        font_path=args.font_path,
    )
    print(f"wrote {bench} in {time.perf_counter() - t0:.1f} s")
    _print_counts(bench)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
