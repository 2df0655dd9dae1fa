"""Generated labelled pictures for the classifier tests (fast and real-model tiers): a "violate" class
with a big red disc, a "normal" class without."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from imgaudit.testing.fakes import jpeg_bytes, textured_image

SIZE = (96, 72)


def picture(seed: int, disc: bool, size: tuple[int, int] = SIZE) -> Image.Image:
    """A random textured picture, with a big red disc in the middle for the "violate" class."""
    im = textured_image(seed, size)
    if disc:
        w, h = size
        r = int(min(w, h) * 0.38)
        jitter = np.random.default_rng(seed).integers(-w // 10, w // 10 + 1, 2)
        cx, cy = w // 2 + int(jitter[0]), h // 2 + int(jitter[1])
        ImageDraw.Draw(im).ellipse((cx - r, cy - r, cx + r, cy + r), fill=(225, 20, 25))
    return im


def plain_picture(seed: int, disc: bool, size: tuple[int, int] = SIZE) -> Image.Image:
    """A noisy two-colour gradient, with a big red disc for "violate": for the real network, to which a red
    disc among textured_image's many coloured shapes is just one more shape."""
    rng = np.random.default_rng(seed)
    w, h = size
    a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    ramp = np.linspace(0, 1, w)[None, :, None] if seed % 2 else np.linspace(0, 1, h)[:, None, None]
    base = a + (b - a) * ramp + rng.normal(0, 12, (h, w, 3))
    im = Image.fromarray(np.clip(np.broadcast_to(base, (h, w, 3)), 0, 255).astype(np.uint8))
    if disc:
        r = int(min(w, h) * rng.uniform(0.25, 0.4))
        cx, cy = int(rng.integers(r, w - r)), int(rng.integers(r, h - r))
        ImageDraw.Draw(im).ellipse((cx - r, cy - r, cx + r, cy + r), fill=(225, 20, 25))
    return im


def make_dataset(
    root: Path, n_normal: int = 12, n_violate: int = 12, size: tuple[int, int] = SIZE, draw=picture
) -> Path:
    for label, n, disc, base in (("normal", n_normal, False, 0), ("violate", n_violate, True, 1000)):
        folder = root / label
        (folder / "nested").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            target = folder / "nested" if i % 3 == 0 else folder
            (target / f"{label}-{i}.jpg").write_bytes(jpeg_bytes(draw(base + i, disc, size)))
    return root
