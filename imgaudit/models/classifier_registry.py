"""The classifier registry on disk, as every reader and writer of it must see it.

``<classifiers>/<name>/v<N>/`` holds one saved head (written once by ``imgaudit train``, never modified):
``meta.json`` says what it is, with ``head.npz`` (linear) or ``model.onnx`` (fine-tuned) beside it.
``<classifiers>/active.json`` names the promoted head and the activation history; it is only ever
replaced atomically. The training service writes the registry; ``ClassifierHub`` follows it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from imgaudit.errors import ModelError

ACTIVE_FILE = "active.json"
META_FILE = "meta.json"
HEAD_FILE = "head.npz"
ONNX_FILE = "model.onnx"
KINDS = ("linear", "finetuned")
FORMAT_VERSION = 1
# Names become directory names and appear in "name@vN" references: keep them plain.
_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
_REF = re.compile(rf"^(?P<name>{_NAME})(?:@v(?P<version>[0-9]+))?$")
_VERSION_DIR = re.compile(r"^v([0-9]+)$")


def check_name(name: str) -> str:
    """A head name, refused unless it is safe as a directory name (letters, digits, ``_ . -``)."""
    if not re.fullmatch(_NAME, name) or name in (".", ".."):
        raise ModelError(f"invalid classifier name {name!r}: use letters, digits, '_', '.', '-' (max 64)")
    return name


def parse_ref(ref: str) -> tuple[str, int | None]:
    """``"name"`` -> (name, None); ``"name@v3"`` -> (name, 3)."""
    m = _REF.match(ref.strip())
    if not m:
        raise ModelError(f"invalid classifier reference {ref!r}: expected NAME or NAME@vN")
    return m["name"], int(m["version"]) if m["version"] else None


def model_ref(name: str, version: int) -> str:
    return f"{name}@v{version}"


def version_dir(root: Path, name: str, version: int) -> Path:
    return Path(root) / check_name(name) / f"v{version}"


def versions(root: Path, name: str) -> list[int]:
    """Saved versions of one head, ascending (half-written temporary directories are not versions)."""
    folder = Path(root) / check_name(name)
    if not folder.is_dir():
        return []
    found = []
    for child in folder.iterdir():
        m = _VERSION_DIR.match(child.name)
        if m and (child / META_FILE).is_file():
            found.append(int(m[1]))
    return sorted(found)


def read_meta(vdir: Path) -> dict[str, Any]:
    path = Path(vdir) / META_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelError(f"no classifier at {vdir} ({META_FILE} missing)") from exc
    except (OSError, ValueError) as exc:
        raise ModelError(f"unreadable {path}: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("kind") not in KINDS or not meta.get("classes"):
        raise ModelError(f"{path} is not a classifier description (kind and classes needed)")
    return meta


def read_active(root: Path) -> dict[str, Any]:
    """The registry state: ``{"active": "name@vN" | None, "history": [...]}`` (empty when never promoted)."""
    path = Path(root) / ACTIVE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"active": None, "history": []}
    except (OSError, ValueError) as exc:
        raise ModelError(f"unreadable {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelError(f"{path} is not a classifier registry")
    data.setdefault("active", None)
    data.setdefault("history", [])
    return data
