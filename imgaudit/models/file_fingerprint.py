"""A cheap, location-independent fingerprint of a model file, for naming embedding spaces."""

from __future__ import annotations

import hashlib
from pathlib import Path

from imgaudit.errors import ModelError

_FINGERPRINT_BYTES = 1 << 20


def file_fingerprint(path: Path) -> str:
    """Name, size and a hash of the first and last MiB: cheap on a 1 GB tower, yet any re-export or
    fine-tune changes it (weights sit throughout the file). Independent of the directory and mtime, so
    moving or copying the files does not force an index rebuild."""
    path = Path(path)
    try:
        size = path.stat().st_size
        digest = hashlib.sha256(str(size).encode())
        with path.open("rb") as f:
            digest.update(f.read(_FINGERPRINT_BYTES))
            if size > 2 * _FINGERPRINT_BYTES:
                f.seek(-_FINGERPRINT_BYTES, 2)
            digest.update(f.read(_FINGERPRINT_BYTES))
    except OSError as exc:
        raise ModelError(f"cannot read model file {path}: {exc.strerror or exc}") from exc
    return f"{path.name}:{size}:{digest.hexdigest()[:16]}"
