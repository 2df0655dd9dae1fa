from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from imgaudit.config import Settings, load_settings
from imgaudit.models.visual import VisualEncoder
from imgaudit.testing import FakeVisualSession


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test reads the developer's imgaudit.toml or IMGAUDIT_* variables."""
    import os

    for key in list(os.environ):
        if key.startswith("IMGAUDIT_") and key != "IMGAUDIT_TEST_DATABASE_URL":
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(data_dir=tmp_path / "data")


@pytest.fixture
def fake_encoder() -> VisualEncoder:
    return VisualEncoder(FakeVisualSession(), batch_size=8)


@pytest.fixture(scope="session")
def real_encoder() -> Iterator[VisualEncoder]:
    """The real bundled model, exported once into the normal cache directory."""
    from imgaudit.bootstrap import build_encoder

    yield build_encoder(load_settings(data_dir=Path("/nonexistent")))
