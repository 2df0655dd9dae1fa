"""``RemoteEmbedder``: image and text embeddings from a DashScope-style multimodal embedding endpoint
(``POST {url}`` with ``{"model", "input": {"contents": [{"text"} | {"image"}]}}``), usable wherever a
``ClipEncoder`` is (``encode_images``, ``encode_texts``, ``dim``, ``model_id``)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import httpx
import numpy as np

from imgaudit.errors import ConfigError, RemoteBadResponse
from imgaudit.models.remote.client import (
    HttpOptions,
    RemoteEndpoint,
    jpeg_data_uri,
    options_from_settings,
    public_url,
    resolve_api_key,
    secret_text,
)
from imgaudit.models.remote.usage import Prices


class RemoteEmbedder:
    """Image and text embeddings from a DashScope-style multimodal embedding endpoint, with the
    ``ClipEncoder`` interface. One content per request by default: some models accept only one input per
    call (or fuse several into one vector); raise ``batch_size`` where the provider embeds each separately.
    """

    def __init__(
        self,
        *,
        url: str,
        model: str,
        dim: int = 1024,
        api_key: str | None = None,
        api_key_env: str = "",
        batch_size: int = 1,
        image_side: int = 512,
        jpeg_quality: int = 90,
        parameters: dict[str, Any] | None = None,
        options: HttpOptions | None = None,
        prices: Prices | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not model.strip():
            raise ConfigError("remote embedder: no model configured")
        if dim < 1:
            raise ConfigError("remote embedder: dim must be positive")
        key = resolve_api_key(api_key, api_key_env, what="remote embedder")
        self.endpoint = RemoteEndpoint(
            url, name="remote embedder", api_key=key, options=options, prices=prices, transport=transport
        )
        self.model = model.strip()
        self._dim = int(dim)
        self.batch_size = max(1, int(batch_size))
        self.image_side = image_side
        self.jpeg_quality = jpeg_quality
        self.parameters = dict(parameters or {})

    @classmethod
    def from_settings(cls, group: Any, **kwargs: Any) -> RemoteEmbedder:
        """From a ``RemoteEmbedderSettings`` group (``settings.remote.embedder``)."""
        options, prices = options_from_settings(group)
        return cls(
            url=group.url,
            model=group.model,
            dim=group.dim,
            api_key=secret_text(group.api_key),
            api_key_env=group.api_key_env,
            batch_size=group.batch_size,
            image_side=group.image_side,
            jpeg_quality=group.jpeg_quality,
            parameters=group.parameters,
            options=options,
            prices=prices,
            **kwargs,
        )

    def __repr__(self) -> str:
        return f"RemoteEmbedder(model={self.model!r}, dim={self._dim}, endpoint={self.endpoint!r})"

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def model_id(self) -> str:
        """Names the embedding space (model, size, endpoint, parameters; never the key)."""
        spec = json.dumps(
            [public_url(self.endpoint.url), self.model, self._dim, self.parameters], sort_keys=True
        )
        digest = hashlib.sha256(spec.encode()).hexdigest()[:12]
        return f"remote/{self.model[:60]}/{self._dim}/{digest}"

    @property
    def usage(self) -> dict[str, float]:
        return self.endpoint.usage.as_dict()

    def close(self) -> None:
        self.endpoint.close()

    def request_body(self, contents: list[dict[str, str]]) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "input": {"contents": contents}}
        if self.parameters:
            body["parameters"] = self.parameters
        return body

    def encode_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """``(len(images), dim)`` float32, L2-normalised."""
        contents = [{"image": jpeg_data_uri(im, self.image_side, self.jpeg_quality)} for im in images]
        return self._encode(contents, "images")

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """``(len(texts), dim)`` float32, L2-normalised."""
        return self._encode([{"text": t} for t in texts], "texts")

    def _encode(self, contents: list[dict[str, str]], kind: str) -> np.ndarray:
        if not contents:
            return np.zeros((0, self._dim), np.float32)
        chunks = [contents[i : i + self.batch_size] for i in range(0, len(contents), self.batch_size)]

        def one(chunk: list[dict[str, str]]) -> np.ndarray:
            data = self.endpoint.post(self.request_body(chunk))
            vectors = self._parse(data, len(chunk))
            self.endpoint.usage.record(data, **{kind: len(chunk)})
            return vectors

        out = np.concatenate(list(self.endpoint.map(one, chunks))).astype(np.float32)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    def _parse(self, data: dict[str, Any], expected: int) -> np.ndarray:
        where = self.endpoint.where
        try:
            items = data["output"]["embeddings"]
            if not isinstance(items, list):
                raise TypeError
            pairs = [(int(item.get("index", i)), item["embedding"]) for i, item in enumerate(items)]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise RemoteBadResponse(f"{where}: no output.embeddings[].embedding in the answer") from exc
        if sorted(i for i, _ in pairs) != list(range(expected)):
            raise RemoteBadResponse(
                f"{where}: asked for {expected} embeddings, got indexes {sorted(i for i, _ in pairs)}"
                + ("; this model may accept one input per request (batch_size = 1)" if expected > 1 else "")
            )
        try:
            vectors = np.asarray([v for _, v in sorted(pairs, key=lambda p: p[0])], np.float32)
        except (TypeError, ValueError) as exc:
            raise RemoteBadResponse(f"{where}: an embedding is not a list of numbers") from exc
        if vectors.ndim != 2 or vectors.shape[1] != self._dim:
            got = vectors.shape[1] if vectors.ndim == 2 else "ragged"
            raise RemoteBadResponse(f"{where}: embeddings have {got} dimensions, expected dim = {self._dim}")
        if not np.isfinite(vectors).all():
            raise RemoteBadResponse(f"{where}: an embedding has non-finite values")
        return vectors
