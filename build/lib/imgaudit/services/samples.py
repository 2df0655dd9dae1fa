"""An offline sample set: scikit-image's bundled photos plus near-duplicate variants with known answers.

Variants are the re-uploads a platform sees every day: re-compressed, downscaled, cropped, mirrored,
watermarked with text, framed like a phone screenshot, greyscale. Two deliberately broken files show
that bad input becomes a recorded failure, not a crash.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw, ImageEnhance, ImageOps

# Photographic images shipped inside the scikit-image wheel (no download needed).
PHOTOS = [
    "astronaut.png",
    "brick.png",
    "camera.png",
    "chelsea.png",
    "coffee.png",
    "coins.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "moon.png",
    "motorcycle_left.png",
    "page.png",
    "retina.jpg",
    "rocket.jpg",
    "text.png",
]


def _skimage_data_dir() -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data"


def _recompress(im: Image.Image, rng: random.Random) -> Image.Image:
    w, h = im.size
    f = rng.uniform(0.4, 0.7)
    return im.resize((int(w * f), int(h * f)), Image.Resampling.BILINEAR)


def _crop(im: Image.Image, rng: random.Random) -> Image.Image:
    w, h = im.size
    keep = rng.uniform(0.75, 0.9)
    cw, ch = int(w * keep), int(h * keep)
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    return im.crop((x, y, x + cw, y + ch))


def _caption(im: Image.Image, rng: random.Random) -> Image.Image:
    im = im.copy()
    draw = ImageDraw.Draw(im)
    w, h = im.size
    size = max(12, h // 12)
    draw.rectangle((0, h - size * 2, w, h), fill=(0, 0, 0))
    draw.text((size // 2, h - size * 1.7), "SALE -50% www.example.shop", fill=(255, 255, 0), font_size=size)
    return im


def _screenshot(im: Image.Image, rng: random.Random) -> Image.Image:
    w, h = im.size
    canvas = Image.new("RGB", (int(w * 1.1), int(h * 1.5)), (245, 245, 245))
    ImageDraw.Draw(canvas).rectangle((0, 0, canvas.width, int(h * 0.12)), fill=(30, 30, 30))
    canvas.paste(im, ((canvas.width - w) // 2, int(h * 0.2)))
    return canvas


VARIANTS: dict[str, Callable[[Image.Image, random.Random], Image.Image]] = {
    "recompressed": _recompress,
    "cropped": _crop,
    "mirrored": lambda im, rng: ImageOps.mirror(im),
    "captioned": _caption,
    "screenshot": _screenshot,
    "greyscale": lambda im, rng: ImageOps.grayscale(im).convert("RGB"),
    "brightened": lambda im, rng: ImageEnhance.Brightness(im).enhance(1.3),
}


def build_samples(dest: Path, seed: int = 7) -> dict[str, str | None]:
    """Write originals and variants to ``dest``; return {file name: expected original file or None}."""
    rng = random.Random(seed)
    dest.mkdir(parents=True, exist_ok=True)
    answers: dict[str, str | None] = {}
    data = _skimage_data_dir()
    names = [p for p in PHOTOS if (data / p).is_file()]
    variant_names = list(VARIANTS)
    for i, name in enumerate(names):
        im = Image.open(data / name).convert("RGB")
        stem = Path(name).stem
        original = f"{stem}.jpg"
        im.save(dest / original, quality=92)
        answers[original] = None
        for j in range(2):
            kind = variant_names[(2 * i + j) % len(variant_names)]
            variant = VARIANTS[kind](im, rng)
            fname = f"{stem}~{kind}.jpg"
            variant.save(dest / fname, quality=rng.randint(55, 85))
            answers[fname] = original
    (dest / "broken~truncated.jpg").write_bytes((dest / answers_first(answers)).read_bytes()[:2000])
    (dest / "broken~not-an-image.jpg").write_text("<html>this is not an image</html>")
    answers["broken~truncated.jpg"] = answers["broken~not-an-image.jpg"] = "failure"
    (dest / "answers.json").write_text(json.dumps(answers, indent=1, sort_keys=True))
    return answers


def answers_first(answers: dict[str, str | None]) -> str:
    return next(k for k, v in answers.items() if v is None)
