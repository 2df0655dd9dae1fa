"""Writing the classifier registry: new versions, promotions and rollbacks.

The format and its readers are in ``imgaudit.models.classifier_registry`` (the worker's ``ClassifierHub``
reads them too). A version directory is staged and renamed into place, so it appears whole or not at all;
``active.json`` is replaced atomically (``imgaudit.fsio``) under a lock file, so a worker never reads half
a file and two promotions never interleave.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from imgaudit.config import Settings
from imgaudit.errors import ImgauditError, ModelError, RegistryError
from imgaudit.fsio import atomic_write_text
from imgaudit.models.classifier_registry import (
    ACTIVE_FILE,
    META_FILE,
    check_name,
    model_ref,
    parse_ref,
    read_active,
    read_meta,
    version_dir,
    versions,
)
from imgaudit.models.ports import ClassifierHead, HeadModels, ImageEncoder

log = logging.getLogger("imgaudit.training")


def classifiers_dir(settings: Settings) -> Path:
    return settings.data_dir / "classifiers"


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Written durably and atomically: readers see the old file or the new one, never a part."""
    text = json.dumps(data, ensure_ascii=False, indent=2, default=str) + "\n"
    atomic_write_text(path, text, durable=True)


def staging_dir(root: Path, name: str) -> Path:
    folder = root / check_name(name)
    folder.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".staging-", dir=folder))


def commit(root: Path, name: str, staging: Path, meta: dict[str, Any]) -> tuple[int, Path]:
    """Give the staged files the next version number by renaming the folder: a version appears whole or
    not at all, and two trainings finishing together get different numbers."""
    for _ in range(100):
        version = (versions(root, name) or [0])[-1] + 1
        meta["version"] = version
        write_json(staging / META_FILE, meta)
        target = version_dir(root, name, version)
        try:
            os.rename(staging, target)
        except OSError:
            if target.exists():
                continue
            raise
        return version, target
    raise RegistryError(f"could not allocate a version for {name}")


@contextlib.contextmanager
def _registry_lock(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _summary(meta: dict[str, Any]) -> dict[str, Any]:
    m = meta.get("metrics", {})
    split = meta.get("dataset", {}).get("split", {})
    return {
        "kind": meta.get("kind"),
        "classes": meta.get("classes"),
        "created_at": meta.get("created_at"),
        "train": split.get("train"),
        "held_out": split.get("held_out"),
        "accuracy": m.get("accuracy"),
        "roc_auc": m.get("roc_auc"),
        "brier": m.get("brier"),
        "encoder": meta.get("encoder"),
    }


def list_models(settings: Settings) -> list[dict[str, Any]]:
    """Every saved version, oldest first per name, with its held-out metrics and whether it is active."""
    root = classifiers_dir(settings)
    if not root.is_dir():
        return []
    active = read_active(root).get("active")
    rows = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            found = versions(root, folder.name)
        except ModelError:
            continue
        for v in found:
            ref = model_ref(folder.name, v)
            row: dict[str, Any] = {"model": ref, "name": folder.name, "version": v, "active": ref == active}
            try:
                row.update(_summary(read_meta(version_dir(root, folder.name, v))))
            except ModelError as exc:
                row["error"] = exc.message
            rows.append(row)
    return rows


def _resolve(root: Path, ref: str) -> str:
    name, version = parse_ref(ref)
    if version is None:
        found = versions(root, name)
        if not found:
            raise RegistryError(f"no saved classifier named {name!r} (see `imgaudit models list`)")
        version = found[-1]
    if not (version_dir(root, name, version) / META_FILE).is_file():
        raise RegistryError(f"no saved classifier {model_ref(name, version)} (see `imgaudit models list`)")
    return model_ref(name, version)


def _check_loads(root: Path, ref: str, encoder: ImageEncoder | None, heads: HeadModels) -> ClassifierHead:
    """Load the head as a worker would, so a promotion that workers would refuse is refused here."""
    name, version = parse_ref(ref)
    assert version is not None
    return heads.load(
        version_dir(root, name, version), encoder_id=None if encoder is None else encoder.descriptor
    )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def promote(
    settings: Settings, ref: str, encoder: ImageEncoder | None = None, *, heads: HeadModels
) -> dict[str, Any]:
    """Make ``NAME[@vN]`` (default: the latest version) the active head; running workers pick it up
    within ``moderation.reload_every`` seconds. Refused if the head would be refused by the workers."""
    root = classifiers_dir(settings)
    with _registry_lock(root):
        target = _resolve(root, ref)
        _check_loads(root, target, encoder, heads)
        state = read_active(root)
        previous = state.get("active")
        if previous == target:
            return {"active": target, "previous": previous, "changed": False}
        history = _history(state)
        history.append({"model": target, "at": _now(), "action": "promote"})
        write_json(root / ACTIVE_FILE, {"active": target, "history": history, "updated_at": _now()})
    log.info("classifier %s promoted (was %s)", target, previous)
    return {"active": target, "previous": previous, "changed": True}


def rollback(settings: Settings, encoder: ImageEncoder | None = None, *, heads: HeadModels) -> dict[str, Any]:
    """Re-activate the previously active head (the activation history is a stack: each rollback goes one
    further back)."""
    root = classifiers_dir(settings)
    with _registry_lock(root):
        state = read_active(root)
        history = _history(state)
        current = state.get("active")
        if history and history[-1]["model"] == current:
            history.pop()
        if not history:
            raise RegistryError("no previously active classifier to roll back to")
        target = history[-1]["model"]
        try:
            _resolve(root, target)
            _check_loads(root, target, encoder, heads)
        except ImgauditError as exc:
            raise RegistryError(f"cannot roll back to {target}: {exc.message}") from exc
        history[-1] = {"model": target, "at": _now(), "action": "rollback"}
        write_json(root / ACTIVE_FILE, {"active": target, "history": history, "updated_at": _now()})
    log.info("classifier rolled back from %s to %s", current, target)
    return {"active": target, "previous": current, "changed": True}


def _history(state: dict[str, Any]) -> list[dict[str, Any]]:
    history = state.get("history") or []
    return [h for h in history if isinstance(h, dict) and isinstance(h.get("model"), str)]
