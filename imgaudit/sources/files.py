"""Folder and URL-list sources."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from imgaudit.types import ImageRef

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".jfif"}


class Source(Protocol):
    name: str

    def refs(self) -> Iterator[ImageRef]: ...


SIDECAR_MAX_BYTES = 64 * 1024
CAPTION_KEYS = ("title", "caption", "description", "desc", "name")


def read_sidecar(image: Path) -> tuple[str | None, dict[str, object] | None]:
    """What a listing says about an image, from ``photo.jpg.json`` or ``photo.json`` beside it: the
    caption is its title / caption / description joined; the other fields are kept as metadata. A
    missing, oversized or unreadable sidecar is simply no metadata."""
    for candidate in (image.with_name(image.name + ".json"), image.with_suffix(".json")):
        try:
            if not candidate.is_file() or candidate.stat().st_size > SIDECAR_MAX_BYTES:
                continue
            data = json.loads(candidate.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        parts = [str(data[k]).strip() for k in CAPTION_KEYS if isinstance(data.get(k), str | int | float)]
        caption = "\n".join(p for p in parts if p) or None
        meta = {k: v for k, v in data.items() if k not in CAPTION_KEYS} or None
        return caption, meta
    return None, None


class FolderSource:
    """Every file under a folder, recursively, in a stable order. Files are filtered by suffix only to
    skip obvious non-images; the real check is the decoder's magic-byte sniffing. A JSON sidecar
    (``photo.jpg.json``) gives the image a caption and metadata for search."""

    name = "folder"

    def __init__(self, root: Path, all_files: bool = False) -> None:
        self.root = Path(root)
        self.all_files = all_files

    def refs(self) -> Iterator[ImageRef]:
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames.sort()
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                if self.all_files or Path(name).suffix.lower() in IMAGE_SUFFIXES:
                    path = (Path(dirpath) / name).resolve()
                    caption, meta = read_sidecar(path)
                    yield ImageRef(str(path), "path", caption=caption, meta=meta)


class UrlListSource:
    """A text file with one URL (or CDN-relative path) per line; blank lines and # comments skipped."""

    name = "urls"

    def __init__(self, path: Path, cdn_base: str = "") -> None:
        self.path = Path(path)
        self.cdn_base = cdn_base

    def refs(self) -> Iterator[ImageRef]:
        from imgaudit.media.fetch import join_url

        with open(self.path, encoding="utf-8") as f:
            for line in f:
                line = line.strip().replace("\x00", "")  # NUL cannot be part of a URL
                if line and not line.startswith("#"):
                    yield ImageRef(join_url(self.cdn_base, line), "url")


def source_for(target: str, cdn_base: str = "") -> Source:
    """A folder, a single image file, or a text file of URLs."""
    path = Path(target)
    if path.is_dir():
        return FolderSource(path)
    if path.is_file() and path.suffix.lower() in {".txt", ".lst", ".urls", ".csv"}:
        return UrlListSource(path, cdn_base)
    if path.is_file():
        return _SingleFile(path)
    raise FileNotFoundError(f"no such folder or file: {target}")


class _SingleFile:
    name = "file"

    def __init__(self, path: Path) -> None:
        self.path = path

    def refs(self) -> Iterator[ImageRef]:
        path = self.path.resolve()
        caption, meta = read_sidecar(path)
        yield ImageRef(str(path), "path", caption=caption, meta=meta)
