"""The real bundled EfficientNet-Lite0 descriptor on real photos (from the dedup service tests)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from imgaudit.models.visual import VisualEncoder


@pytest.mark.model
def test_real_model_separates_copies_from_other_photos(real_encoder: VisualEncoder) -> None:
    """The bundled EfficientNet-Lite0 descriptor: copies score far above unrelated photos."""
    from skimage import data

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    copies = [np.asarray(Image.fromarray(p).resize((p.shape[1] // 2, p.shape[0] // 2))) for p in photos]
    copies[1] = np.ascontiguousarray(photos[1][:, ::-1])  # mirrored
    buf = io.BytesIO()
    Image.fromarray(photos[2]).save(buf, "JPEG", quality=20)
    copies[2] = np.asarray(Image.open(buf))
    a = real_encoder.encode(photos)
    b = real_encoder.encode(copies)
    sims = a.descriptors @ b.descriptors.T
    assert np.all(np.diag(sims) > 0.9)
    assert np.all(sims[~np.eye(4, dtype=bool)] < 0.6)
    assert a.probabilities.argmax(axis=1)[1] == 967  # espresso
    assert np.allclose(np.linalg.norm(a.descriptors, axis=1), 1, atol=1e-5)
