"""Colour names and the bilingual attribute text."""

from __future__ import annotations

import numpy as np
import pytest

from imgaudit.signals.colour import attribute_text, colour_names


@pytest.mark.parametrize(
    ("rgb", "name"),
    [
        ((220, 20, 30), "red"),
        ((250, 140, 10), "orange"),
        ((240, 220, 30), "yellow"),
        ((40, 160, 60), "green"),
        ((20, 60, 200), "blue"),
        ((120, 40, 160), "purple"),
        ((255, 182, 193), "pink"),
        ((120, 70, 30), "brown"),
        ((5, 5, 5), "black"),
        ((128, 128, 128), "grey"),
        ((250, 250, 250), "white"),
    ],
)
def test_solid_colours_are_named(rgb: tuple[int, int, int], name: str) -> None:
    image = np.zeros((60, 90, 3), np.uint8)
    image[:] = rgb
    got = colour_names(image)
    assert got[0][0] == name and got[0][2] == pytest.approx(1.0)


def test_two_colour_image_reports_both_with_shares() -> None:
    image = np.full((120, 300, 3), 255, np.uint8)
    image[:, :200] = (210, 25, 25)
    got = colour_names(image)
    assert [(en, zh) for en, zh, _ in got] == [("red", "红色"), ("white", "白色")]
    assert got[0][2] == pytest.approx(2 / 3, abs=0.05) and got[1][2] == pytest.approx(1 / 3, abs=0.05)


def test_attribute_text_is_bilingual() -> None:
    text = attribute_text([("red", "红色", 0.6), ("white", "白色", 0.3)], True, True, 300, 200)
    assert text == "红色 red 白色 white; 横图 landscape; 有文字 text; 二维码 QR code"
    assert attribute_text([], False, False, 100, 300) == "竖图 portrait"
    assert attribute_text([], False, False, 100, 100) == "方图 square"
