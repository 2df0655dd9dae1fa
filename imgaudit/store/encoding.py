"""How values are kept as database text and bytes, whatever the store: item identities, paths that are not
UTF-8, text and JSON no database column refuses, and descriptors as float16 bytes."""

from __future__ import annotations

import hashlib
import math
from urllib.parse import unquote_to_bytes

import numpy as np

RAW_PATH_PREFIX = "file:"
"""Marks a stored path written as a ``file:`` URI with ``%XX`` escapes (see ``stored_uri``)."""


def uri_hash(uri: str) -> str:
    """The item's identity. A path holding surrogate escapes (a file name that is not valid UTF-8) hashes
    as its real bytes, and every other string as its UTF-8, as always, so existing stores still match."""
    try:
        raw = uri.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate no file name decodes to: any injective form will do
        raw = uri.encode("utf-8", "surrogatepass")
    return hashlib.sha256(raw).hexdigest()


def stored_uri(uri: str, kind: str) -> str:
    """The text the store keeps for ``uri``: itself, except a path that is not valid UTF-8 (or that starts
    with ``file:``), which becomes ``file:`` + the path with each undecodable byte as ``%XX`` and ``%`` as
    ``%25``: no database text column holds surrogate escapes, and ``real_uri`` gives the exact path back.
    Any other string that cannot be stored is returned unchanged (``storable`` says no)."""
    if kind != "path" or (storable(uri) and not uri.startswith(RAW_PATH_PREFIX)):
        return uri
    out = []
    for ch in uri:
        if ch == "%":
            out.append("%25")
        elif "\udc80" <= ch <= "\udcff":  # os.fsdecode's escape of the byte ch - 0xdc00
            out.append(f"%{ord(ch) - 0xDC00:02X}")
        else:
            out.append(ch)
    return RAW_PATH_PREFIX + "".join(out)


def real_uri(stored: str, kind: str) -> str:
    """The inverse of ``stored_uri``: the path to open (with surrogate escapes where it is not UTF-8)."""
    if kind == "path" and stored.startswith(RAW_PATH_PREFIX):
        return unquote_to_bytes(stored[len(RAW_PATH_PREFIX) :]).decode("utf-8", "surrogateescape")
    return stored


def storable(text_: str) -> bool:
    """Whether a database text column takes ``text_`` as it is (no NUL, no lone surrogate)."""
    if "\x00" in text_:
        return False
    try:
        text_.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(text_: str) -> str:
    """PostgreSQL text cannot hold NUL, and no database text holds a lone surrogate (a file name that is
    not UTF-8, quoted in an error message or a caption): both are escaped (``\\x00``, ``\\xff``) so
    that one odd value cannot fail a batch."""
    text_ = text_.replace("\x00", "\\x00")
    if storable(text_):
        return text_
    try:
        raw = text_.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = text_.encode("utf-8", "backslashreplace")
    return raw.decode("utf-8", "backslashreplace")


def json_safe(value: object) -> object:
    """NaN/infinity become null and NUL characters are escaped: PostgreSQL's JSON refuses both."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {printable(str(k)): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def finite(detail: dict[str, float]) -> dict[str, float] | None:
    """The entries JSON on PostgreSQL takes (no NaN, no infinities); None when nothing is left."""
    clean = {k: v for k, v in detail.items() if not (isinstance(v, float) and not math.isfinite(v))}
    return clean or None


def pack_embedding(v: np.ndarray) -> bytes:
    return np.asarray(v, np.float16).tobytes()


def unpack_embedding(b: bytes) -> np.ndarray:
    return np.frombuffer(b, np.float16).astype(np.float32)
