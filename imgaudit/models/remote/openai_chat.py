"""``RemoteCaptioner``: a short Chinese + English description of an image from an OpenAI-compatible vision
chat endpoint (``POST {base_url}/chat/completions``, the image inlined as a ``data:image/jpeg`` URI)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
import numpy as np

from imgaudit.errors import ConfigError, RemoteBadResponse, RemoteError
from imgaudit.models.remote.client import (
    HttpOptions,
    RemoteEndpoint,
    jpeg_data_uri,
    options_from_settings,
    resolve_api_key,
    secret_text,
)
from imgaudit.models.remote.usage import Prices

DEFAULT_CAPTION_PROMPT = (
    "请用一句简短的中文描述这张商品图片（商品是什么、颜色、材质，以及图中可见的文字），"
    "然后换行，用一句简短的英文写同样的描述。只输出这两行。\n"
    "Describe this product image in one short Chinese sentence, then on a new line in one short English "
    "sentence: what the item is, its colour and material, and any visible text. Output only those two lines."
)


class RemoteCaptioner:
    """A short Chinese + English description per image from an OpenAI-compatible vision chat endpoint."""

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: str | None = None,
        api_key_env: str = "",
        prompt: str = DEFAULT_CAPTION_PROMPT,
        max_tokens: int = 200,
        temperature: float = 0.0,
        max_chars: int = 400,
        image_side: int = 768,
        jpeg_quality: int = 85,
        detail: str = "",
        options: HttpOptions | None = None,
        prices: Prices | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not model.strip():
            raise ConfigError("remote captioner: no model configured")
        key = resolve_api_key(api_key, api_key_env, what="remote captioner")
        self.endpoint = RemoteEndpoint(
            base_url.strip().rstrip("/") + "/chat/completions",
            name="remote captioner",
            api_key=key,
            options=options,
            prices=prices,
            transport=transport,
        )
        self.model = model.strip()
        self.prompt = prompt
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.max_chars = max_chars
        self.image_side = image_side
        self.jpeg_quality = jpeg_quality
        self.detail = detail

    @classmethod
    def from_settings(cls, group: Any, **kwargs: Any) -> RemoteCaptioner:
        """From a ``RemoteCaptionerSettings`` group (``settings.remote.captioner``)."""
        options, prices = options_from_settings(group)
        return cls(
            base_url=group.base_url,
            model=group.model,
            api_key=secret_text(group.api_key),
            api_key_env=group.api_key_env,
            prompt=group.prompt or DEFAULT_CAPTION_PROMPT,
            max_tokens=group.max_tokens,
            temperature=group.temperature,
            max_chars=group.max_chars,
            image_side=group.image_side,
            jpeg_quality=group.jpeg_quality,
            detail=group.detail,
            options=options,
            prices=prices,
            **kwargs,
        )

    def __repr__(self) -> str:
        return f"RemoteCaptioner(model={self.model!r}, endpoint={self.endpoint!r})"

    @property
    def usage(self) -> dict[str, float]:
        return self.endpoint.usage.as_dict()

    def close(self) -> None:
        self.endpoint.close()

    def request_body(self, image: np.ndarray) -> dict[str, Any]:
        image_url: dict[str, str] = {"url": jpeg_data_uri(image, self.image_side, self.jpeg_quality)}
        if self.detail:
            image_url["detail"] = self.detail
        return {
            "model": self.model,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": self.prompt},
                        {"type": "image_url", "image_url": image_url},
                    ],
                }
            ],
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        }

    def caption(self, image: np.ndarray) -> str:
        """The description, whitespace-trimmed and at most ``max_chars`` characters."""
        data = self.endpoint.post(self.request_body(image))
        text = self._parse(data)
        self.endpoint.usage.record(data, images=1)
        return text

    def caption_many(self, images: Sequence[np.ndarray]) -> list[str | RemoteError]:
        """One description per image, concurrently; a failure stays in its slot as the exception, so one
        bad image never sinks the batch."""

        def one(image: np.ndarray) -> str | RemoteError:
            try:
                return self.caption(image)
            except RemoteError as exc:
                return exc

        return list(self.endpoint.map(one, images))

    def _parse(self, data: dict[str, Any]) -> str:
        where = self.endpoint.where
        try:
            choice = data["choices"][0]
            content = choice["message"]["content"]
        except (KeyError, IndexError, TypeError) as exc:
            raise RemoteBadResponse(f"{where}: no choices[0].message.content in the answer") from exc
        if isinstance(content, list):  # some servers answer with content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            content = ""
        lines = [" ".join(line.split()) for line in content.strip().splitlines()]
        text = "\n".join(line for line in lines if line)
        if not text:
            reason = choice.get("finish_reason") if isinstance(choice, dict) else None
            raise RemoteBadResponse(f"{where}: empty description (finish_reason {reason!r})")
        return text[: self.max_chars].rstrip()
