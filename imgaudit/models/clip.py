"""An image-text encoder from CLIP or Chinese-CLIP towers exported to ONNX, loaded from local files.

imgaudit never downloads weights, so by default search uses its own text space; a team that has a CLIP
(OpenAI / open_clip) or Chinese-CLIP (OFA-Sys) export drops the two tower files and the tokenizer files
in and gets text-to-image search in a real shared space.

Expected signatures (names are discovered, so the usual exports fit without renaming):

- image tower: one float32 input ``(N, 3, S, S)`` (``pixel_values`` if there are several, e.g. ``image``
  or ``pixel_values``) -> a float output ``(N, D)``, the projected image embedding;
- text tower: token ids ``(N, L)`` int64 (int32 also works) named ``input_ids`` / ``text`` / ``ids`` /
  ``tokens`` / ``input`` or alone, optionally ``attention_mask`` (1 for tokens, 0 for padding),
  ``token_type_ids`` (zeros) and ``position_ids`` (0..L-1) -> a float output ``(N, D)``.
  When a tower has several ``(N, D)`` outputs the one named like ``*embed*`` / ``*feature*`` wins
  (HF exports also give ``last_hidden_state``, which is 3-D and ignored).

Exports whose batch axis is fixed at 1 (Chinese-CLIP's own ``pytorch_to_onnx.py``) work, one row per call.
Preprocessing follows the reference implementations: bicubic resize of the short side and a centre crop
for CLIP (``framing="crop"``), bicubic resize of the whole image to the square for Chinese-CLIP
(``framing="squash"``), then CLIP's mean/std. Embeddings are L2-normalised, so inner product = cosine.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from imgaudit.errors import ModelError
from imgaudit.models.clip_tokenizer import ClipTokenizer
from imgaudit.models.file_fingerprint import file_fingerprint
from imgaudit.models.session import ModelSession, OrtSession

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
"""OpenAI CLIP's normalisation; Chinese-CLIP uses the same values."""

_IDS_NAMES = ("input_ids", "text", "ids", "tokens", "input", "token_ids")

Framing = Literal["crop", "squash"]


def l2n(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@dataclass(frozen=True, slots=True)
class TowerSignature:
    """What was found in a tower and how it is fed."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    feed: dict[str, str]  # input name -> role (pixels, ids, mask, token_types, positions)
    output: str
    batch: int  # largest batch the model accepts per call (1 for fixed-batch exports), 0: any
    ids_dtype: str = ""


class ClipEncoder:
    """Batched, L2-normalised image and text embeddings in one CLIP space. Load once per process.

    Loading is lazy and happens once (thread-safe): the first call discovers the towers' inputs and
    outputs and runs a one-row probe through each, so a model that does not fit fails then with a
    ModelError naming what was found, rather than deep inside a batch.
    """

    def __init__(
        self,
        image_session: ModelSession,
        text_session: ModelSession,
        tokenizer: ClipTokenizer,
        *,
        image_size: int = 224,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
        framing: Framing = "crop",
        batch_size: int = 32,
        image_output: str | None = None,
        text_output: str | None = None,
        model_id: str | None = None,
    ) -> None:
        if framing not in ("crop", "squash"):
            raise ModelError(f"unknown framing {framing!r}: expected crop (CLIP) or squash (Chinese-CLIP)")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ModelError("mean and std are three numbers per channel, std positive")
        self.image_session = image_session
        self.text_session = text_session
        self.tokenizer = tokenizer
        self.image_size = int(image_size)
        self.mean = np.asarray(mean, np.float32).reshape(3, 1, 1)
        self.std = np.asarray(std, np.float32).reshape(3, 1, 1)
        self.framing: Framing = framing
        self.batch_size = max(1, int(batch_size))
        self.image_output = image_output
        self.text_output = text_output
        self._model_id = model_id
        self._image_sig: TowerSignature | None = None
        self._text_sig: TowerSignature | None = None
        self._dim = 0
        self._lock = threading.Lock()

    @classmethod
    def from_files(
        cls,
        image_model: Path,
        text_model: Path,
        *,
        vocab: Path | None = None,
        merges: Path | None = None,
        tokenizer: str = "auto",
        context_length: int | None = None,
        threads: int = 0,
        **kwargs: Any,
    ) -> ClipEncoder:
        """The towers and tokenizer files on disk; nothing is loaded until the first encode."""
        files = {"image_model": image_model, "text_model": text_model, "vocab": vocab, "merges": merges}
        for name, path in files.items():
            if path is not None and not Path(path).is_file():
                raise ModelError(f"{name} {path} is not a file")
        tok = ClipTokenizer.from_files(vocab, merges, kind=tokenizer, context_length=context_length)
        return cls(
            OrtSession(Path(image_model), threads=threads),
            OrtSession(Path(text_model), threads=threads),
            tok,
            **kwargs,
        )

    @classmethod
    def from_settings(cls, group: Any, *, threads: int = 0) -> ClipEncoder:
        """From a ``ClipSettings`` group (``settings.clip``)."""
        return cls.from_files(
            group.image_model,
            group.text_model,
            vocab=group.vocab,
            merges=group.merges,
            tokenizer=group.tokenizer,
            context_length=group.context_length or None,
            threads=threads,
            image_size=group.image_size,
            mean=group.mean,
            std=group.std,
            framing=group.framing,
            batch_size=group.batch_size,
            image_output=group.image_output or None,
            text_output=group.text_output or None,
        )

    # --- identity -------------------------------------------------------------------------------------

    @property
    def model_id(self) -> str:
        """Names the embedding space: towers, tokenizer and preprocessing (file contents, not paths).

        Indexes built for another model_id are rebuilt, never mixed. Computed without loading the model.
        """
        if self._model_id is None:
            parts = [
                _session_fingerprint(self.image_session),
                _session_fingerprint(self.text_session),
                self.tokenizer.fingerprint(),
                f"{self.framing}/{self.image_size}",
                ",".join(f"{v:.6g}" for v in [*self.mean.ravel(), *self.std.ravel()]),
                f"{self.image_output}/{self.text_output}",
            ]
            digest = hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
            stem = getattr(self.image_session, "path", None)
            name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(stem).stem if stem else "session")[:40]
            self._model_id = f"clip-onnx/{name}/{self.framing}{self.image_size}/{digest}"
        return self._model_id

    @property
    def dim(self) -> int:
        """Embedding size (loads the model)."""
        self.load()
        return self._dim

    def signature(self) -> dict[str, Any]:
        """The discovered inputs, outputs and feeding of both towers (for diagnostics)."""
        self.load()
        return {"image": self._image_sig, "text": self._text_sig, "dim": self._dim}

    # --- loading --------------------------------------------------------------------------------------

    def load(self) -> None:
        """Discover and check both towers once; raises ModelError when a tower does not fit."""
        if self._text_sig is not None:
            return
        with self._lock:
            if self._text_sig is not None:
                return
            image_sig, image_dim = self._discover_image()
            text_sig, text_dim = self._discover_text()
            if image_dim != text_dim:
                raise ModelError(
                    f"the towers disagree: the image tower gives {image_dim}-d embeddings "
                    f"({image_sig.output}), the text tower {text_dim}-d ({text_sig.output}); export both "
                    "from the same CLIP model, with the projection"
                )
            self._image_sig, self._dim = image_sig, image_dim
            self._text_sig = text_sig

    def _discover_image(self) -> tuple[TowerSignature, int]:
        inputs, outputs = _names(self.image_session, "image")
        if "pixel_values" in inputs:
            pixels = "pixel_values"
        elif len(inputs) == 1:
            pixels = inputs[0]
        else:
            raise ModelError(
                f"the image tower has inputs {inputs}; expected one float (N, 3, S, S) input, or one named "
                "pixel_values (a combined image+text export does not fit: export the towers separately)"
            )
        extra = [n for n in inputs if n != pixels]
        if extra:
            raise ModelError(
                f"the image tower also wants inputs {extra}; expected only {pixels!r} (N, 3, S, S)"
            )
        s = self.image_size

        def feed(n: int, _dtype: Any) -> dict[str, np.ndarray]:
            return {pixels: np.zeros((n, 3, s, s), np.float32)}

        batch, _, out = _probe(
            self.image_session, feed, [np.float32], "image", inputs, outputs, self._expect_image()
        )
        name = _pick_output(out, self.image_output, "image", inputs, outputs)
        sig = TowerSignature(tuple(inputs), tuple(outputs), {pixels: "pixels"}, name, batch)
        return sig, int(out[name].shape[1])

    def _discover_text(self) -> tuple[TowerSignature, int]:
        inputs, outputs = _names(self.text_session, "text")
        roles: dict[str, str] = {}
        for name in inputs:
            low = name.lower()
            if "mask" in low:
                roles[name] = "mask"
            elif "token_type" in low or "segment" in low:
                roles[name] = "token_types"
            elif "position" in low:
                roles[name] = "positions"
        rest = [n for n in inputs if n not in roles]
        named = [n for n in rest if n.lower() in _IDS_NAMES]
        ids_name = named[0] if named else (rest[0] if len(rest) == 1 else None)
        unknown = [n for n in rest if n != ids_name]
        if ids_name is None or unknown:
            raise ModelError(
                f"the text tower has inputs {inputs}; expected token ids (N, L) named one of "
                f"{list(_IDS_NAMES)} or alone, plus optional attention_mask / token_type_ids / position_ids"
            )
        roles[ids_name] = "ids"
        ids1, mask1 = self.tokenizer.encode(["a photo"])
        length = ids1.shape[1]

        def feed(n: int, dtype: Any) -> dict[str, np.ndarray]:
            return _text_feed(roles, np.repeat(ids1, n, 0), np.repeat(mask1, n, 0), dtype)

        expect = self._expect_text(length)
        batch, dtype, out = _probe(
            self.text_session, feed, [np.int64, np.int32], "text", inputs, outputs, expect
        )
        name = _pick_output(out, self.text_output, "text", inputs, outputs)
        sig = TowerSignature(tuple(inputs), tuple(outputs), roles, name, batch, np.dtype(dtype).name)
        return sig, int(out[name].shape[1])

    def _expect_image(self) -> str:
        s = self.image_size
        return f"a float32 (N, 3, {s}, {s}) input (image_size {s}, NCHW) and an (N, D) embedding output"

    def _expect_text(self, length: int) -> str:
        return (
            f"int64 token ids (N, {length}) (context_length {length}, {self.tokenizer.kind}) and an (N, D) "
            "embedding output"
        )

    # --- encoding -------------------------------------------------------------------------------------

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """RGB uint8 (H, W, 3) -> normalised float32 (3, S, S), as the reference CLIP transforms do."""
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an RGB (H, W, 3) image, got shape {image.shape}")
        s = self.image_size
        im = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
        if self.framing == "squash":
            im = im.resize((s, s), Image.Resampling.BICUBIC)
        else:  # torchvision Resize(int) + CenterCrop
            w, h = im.size
            size = (s, max(s, int(s * h / w))) if w <= h else (max(s, int(s * w / h)), s)
            im = im.resize(size, Image.Resampling.BICUBIC)
            left, top = round((size[0] - s) / 2.0), round((size[1] - s) / 2.0)
            im = im.crop((left, top, left + s, top + s))
        x = np.asarray(im, np.float32).transpose(2, 0, 1) / 255.0
        return (x - self.mean) / self.std

    def encode_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """``(len(images), dim)`` float32, L2-normalised."""
        self.load()
        sig = self._image_sig
        assert sig is not None
        pixels = next(iter(sig.feed))
        chunks = []
        for start, stop in _spans(len(images), self._batch(sig)):
            batch = np.stack([self.preprocess(im) for im in images[start:stop]])
            chunks.append(self._run(self.image_session, {pixels: batch}, sig.output, "image"))
        return _concat(chunks, self._dim)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """``(len(texts), dim)`` float32, L2-normalised."""
        self.load()
        sig = self._text_sig
        assert sig is not None
        ids, mask = self.tokenizer.encode(list(texts))
        dtype = np.dtype(sig.ids_dtype)
        chunks = []
        for start, stop in _spans(len(texts), self._batch(sig)):
            feed = _text_feed(sig.feed, ids[start:stop], mask[start:stop], dtype)
            chunks.append(self._run(self.text_session, feed, sig.output, "text"))
        return _concat(chunks, self._dim)

    def _batch(self, sig: TowerSignature) -> int:
        return min(self.batch_size, sig.batch) if sig.batch else self.batch_size

    @staticmethod
    def _run(session: ModelSession, feed: dict[str, np.ndarray], output: str, tower: str) -> np.ndarray:
        try:
            out = session.run(feed)[output]
        except ModelError:
            raise
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelError(f"the {tower} tower failed: {exc}") from exc
        return l2n(np.asarray(out, np.float32).reshape(len(next(iter(feed.values()))), -1))


def _session_fingerprint(session: ModelSession) -> str:
    path = getattr(session, "path", None)
    return file_fingerprint(Path(path)) if path is not None else type(session).__name__


def _names(session: ModelSession, tower: str) -> tuple[list[str], list[str]]:
    try:
        return list(session.input_names()), list(session.output_names())
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"cannot open the {tower} tower: {exc}") from exc


def _text_feed(roles: dict[str, str], ids: np.ndarray, mask: np.ndarray, dtype: Any) -> dict[str, np.ndarray]:
    feed: dict[str, np.ndarray] = {}
    for name, role in roles.items():
        if role == "ids":
            feed[name] = ids.astype(dtype)
        elif role == "mask":
            feed[name] = mask.astype(dtype)
        elif role == "token_types":
            feed[name] = np.zeros_like(ids, dtype=dtype)
        elif role == "positions":
            feed[name] = np.broadcast_to(np.arange(ids.shape[1], dtype=dtype), ids.shape).copy()
    return feed


def _probe(
    session: ModelSession,
    feed: Callable[[int, Any], dict[str, np.ndarray]],
    dtypes: Sequence[Any],
    tower: str,
    inputs: list[str],
    outputs: list[str],
    expected: str,
) -> tuple[int, Any, dict[str, np.ndarray]]:
    """Run two rows, then one row (fixed-batch exports), with each id dtype; the first that works wins.

    Returns (largest batch per call, 0 for any; dtype; the outputs of the working run).
    """
    failure: Exception | None = None
    for rows in (2, 1):
        for dtype in dtypes:
            try:
                out = session.run(feed(rows, dtype))
            except Exception as exc:
                if failure is None or (rows, dtype) == (1, dtypes[0]):
                    failure = exc  # the most lenient attempt explains best; else the first one
                continue
            shapes = {k: np.shape(v) for k, v in out.items()}
            if not any(len(s) == 2 and s[0] == rows for s in shapes.values()):
                raise ModelError(
                    f"the {tower} tower gives no (N, D) output: outputs {shapes}; expected {expected}"
                )
            return (0 if rows == 2 else 1), dtype, {k: v for k, v in out.items() if np.ndim(v) == 2}
    raise ModelError(
        f"the {tower} tower does not fit: {str(failure).strip().rstrip('.')}. Found inputs {inputs} and "
        f"outputs {outputs}; expected {expected}"
    )


def _pick_output(
    out: dict[str, np.ndarray], wanted: str | None, tower: str, inputs: list[str], outputs: list[str]
) -> str:
    if wanted:
        if wanted not in out:
            raise ModelError(f"the {tower} tower has no 2-D output {wanted!r}; its outputs are {outputs}")
        return wanted
    if len(out) == 1:
        return next(iter(out))
    preferred = [n for n in out if "embed" in n.lower() or "feature" in n.lower()]
    if len(preferred) == 1:
        return preferred[0]
    raise ModelError(
        f"the {tower} tower has several (N, D) outputs {sorted(out)}: name the embedding with "
        f"{tower}_output (inputs {inputs})"
    )


def _spans(n: int, size: int) -> list[tuple[int, int]]:
    return [(start, min(n, start + size)) for start in range(0, n, size)]


def _concat(chunks: list[np.ndarray], dim: int) -> np.ndarray:
    return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros((0, dim), np.float32)
