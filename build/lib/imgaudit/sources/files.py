"""Folder and URL-list sources.

One bad entry never costs the others: an entry that cannot become a usable reference (a symlink loop, a
link out of the folder, a directory that cannot be listed, a URL-list line that is not UTF-8, or relative
without ``fetch.cdn_base``) is yielded as a refused ``ImageRef`` carrying a reason and a message, which
the store records as that entry's failure, and the walk goes on.
"""

from __future__ import annotations

import codecs
import errno
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from imgaudit.types import ImageRef

# Reasons of refused entries (``ImageRef.error_reason``, then the item's ``error_reason``).
SYMLINK_LOOP = "symlink_loop"
BROKEN_SYMLINK = "broken_symlink"
OUTSIDE_ROOT = "outside_root"
UNREADABLE_DIR = "unreadable_dir"
UNREADABLE_ENTRY = "unreadable_entry"
BAD_LINE = "bad_line"
RELATIVE_URL = "relative_url"


def _image_suffixes() -> frozenset[str]:
    """The suffixes of every format the decoder accepts, derived from its own table so that the two
    cannot disagree: the decoder's names (``.jpeg``, ``.heic``), Pillow's (``.heif``) and each extension
    Pillow registers for them (``.jpg``, ``.tif``, ``.avifs``...). HEIC stays walked without its plugin:
    such a file then fails with "no decoder installed" instead of being silently left out."""
    from PIL import Image

    from imgaudit.media.decode import _PIL_FORMATS

    names = set(_PIL_FORMATS.values())
    registered = {ext for ext, fmt in Image.registered_extensions().items() if fmt in names}
    return frozenset(registered | {f".{n.lower()}" for pair in _PIL_FORMATS.items() for n in pair})


IMAGE_SUFFIXES = _image_suffixes()


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
        except (OSError, ValueError, RecursionError):  # RecursionError: absurdly nested JSON
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
    (``photo.jpg.json``) gives the image a caption and metadata for search.

    Links: one to a file or folder inside the folder is not walked again (the target is walked as
    itself); one pointing outside is refused as ``outside_root`` unless ``follow_symlinks``; loops end,
    since no directory is entered twice. A refused link is recorded by its own path; what is read, by
    its real path (a link's target), as before.
    """

    name = "folder"

    def __init__(self, root: Path, all_files: bool = False, follow_symlinks: bool = False) -> None:
        self.root = Path(root)
        self.all_files = all_files
        self.follow_symlinks = follow_symlinks

    def refs(self) -> Iterator[ImageRef]:
        """The files of each directory in name order, then its subdirectories, as ``os.walk`` gave them,
        walked with an explicit stack (no recursion limit on deep trees)."""
        root = os.path.realpath(self.root)
        entered: set[tuple[int, int]] = set()  # (device, inode) of each directory listed: loops end
        linked: set[str] = set()  # real paths reached through a link: each is yielded once
        stack: list[tuple[str, bool]] = [(root, False)]  # (directory, reached through a followed link)
        while stack:
            directory, via_link = stack.pop()
            try:
                info = os.stat(directory)
                if (info.st_dev, info.st_ino) in entered:
                    continue
                entered.add((info.st_dev, info.st_ino))
                with os.scandir(directory) as listing:
                    entries = sorted(listing, key=lambda e: e.name)
            except OSError as exc:
                yield ImageRef.refused(
                    directory, "path", UNREADABLE_DIR, f"cannot list {directory}: {_why(exc)}"
                )
                continue
            subdirs: list[tuple[str, bool]] = []
            for entry in entries:
                found = self._entry(entry, root, via_link, linked)
                if isinstance(found, ImageRef):
                    yield found
                elif found is not None:
                    subdirs.append(found)
            stack.extend(reversed(subdirs))

    def _wanted(self, name: str) -> bool:
        return not name.startswith(".") and (self.all_files or Path(name).suffix.lower() in IMAGE_SUFFIXES)

    def _entry(
        self, entry: os.DirEntry[str], root: str, via_link: bool, linked: set[str]
    ) -> ImageRef | tuple[str, bool] | None:
        """What one directory entry gives: a reference, a directory to walk, or nothing."""
        try:
            if entry.is_symlink():
                return self._link(entry.path, entry.name, root, linked)
            if entry.is_dir(follow_symlinks=False):
                return entry.path, via_link
        except OSError as exc:
            if not self._wanted(entry.name):
                return None
            return ImageRef.refused(entry.path, "path", UNREADABLE_ENTRY, f"{entry.path}: {_why(exc)}")
        if not self._wanted(entry.name):
            return None
        if via_link:  # another link may lead to the same file
            if entry.path in linked:
                return None
            linked.add(entry.path)
        return _file_ref(entry.path)

    def _link(self, path: str, name: str, root: str, linked: set[str]) -> ImageRef | tuple[str, bool] | None:
        try:
            target = os.path.realpath(path, strict=True)
            is_dir = os.path.isdir(target)
        except OSError as exc:
            if not self._wanted(name):  # a dangling link that does not even look like an image
                return None
            if exc.errno == errno.ELOOP:
                return ImageRef.refused(path, "path", SYMLINK_LOOP, f"{path}: symlink loop")
            if isinstance(exc, FileNotFoundError):
                return ImageRef.refused(path, "path", BROKEN_SYMLINK, f"{path}: link to nothing")
            return ImageRef.refused(path, "path", UNREADABLE_ENTRY, f"{path}: {_why(exc)}")
        inside = target == root or target.startswith(root.rstrip(os.sep) + os.sep)
        if is_dir and inside:
            return None  # walked as itself
        if not is_dir and not self._wanted(name):
            return None
        if not inside and not self.follow_symlinks:
            return ImageRef.refused(
                path,
                "path",
                OUTSIDE_ROOT,
                f"{path} links to {target}, outside {root} (sources.follow_symlinks is off)",
            )
        if is_dir:
            return target, True
        if (inside and self._wanted(os.path.basename(target))) or target in linked:
            return None  # yielded as itself, or through another link
        linked.add(target)
        return _file_ref(target)


def _file_ref(path: str) -> ImageRef:
    caption, meta = read_sidecar(Path(path))
    return ImageRef(path, "path", caption=caption, meta=meta)


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


class UrlListSource:
    """A text file with one URL (or CDN-relative path) per line; blank lines and # comments skipped.

    Lines are decoded one by one, so a line that is not UTF-8, or a relative one without ``cdn_base``,
    is that line's recorded failure (``bad_line``, ``relative_url``) and the others are still queued."""

    name = "urls"

    def __init__(self, path: Path, cdn_base: str = "") -> None:
        self.path = Path(path)
        self.cdn_base = cdn_base

    def refs(self) -> Iterator[ImageRef]:
        from imgaudit.errors import MediaError
        from imgaudit.media.fetch import join_url

        with open(self.path, "rb") as f:
            for number, raw in enumerate(f, 1):
                if number == 1 and raw.startswith(codecs.BOM_UTF8):
                    raw = raw[len(codecs.BOM_UTF8) :]
                where = f"line {number} of {self.path.name}"
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    shown = raw.decode("utf-8", "backslashreplace").strip()
                    if shown and not shown.startswith("#"):
                        why = f"{where} is not UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"
                        yield ImageRef.refused(shown, "url", BAD_LINE, why)
                    continue
                line = line.strip().replace("\x00", "")  # NUL cannot be part of a URL
                if not line or line.startswith("#"):
                    continue
                try:
                    ref = ImageRef(join_url(self.cdn_base, line), "url")
                except MediaError as exc:
                    ref = ImageRef.refused(line, "url", RELATIVE_URL, f"{where}: {exc.message}")
                yield ref


def source_for(target: str, cdn_base: str = "", *, follow_symlinks: bool = False) -> Source:
    """A folder, a single image file, or a text file of URLs. ``follow_symlinks`` is
    ``sources.follow_symlinks``: whether a folder's links to outside it are followed."""
    path = Path(target)
    if path.is_dir():
        return FolderSource(path, follow_symlinks=follow_symlinks)
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
        yield _file_ref(os.path.realpath(self.path))  # named by the user: a link is followed anywhere
