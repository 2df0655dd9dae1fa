"""One exception root. Each class's docstring is its default message.

Errors carry a short machine-readable ``reason`` (stored with failed items) and a ``retryable`` flag that
the queue uses to choose between *failed retryable* and *failed permanent*.
"""

from __future__ import annotations


class ImgauditError(Exception):
    """imgaudit failed."""

    reason: str = "error"
    retryable: bool = False

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or self.reason).strip())

    @property
    def message(self) -> str:
        return str(self.args[0])


class ConfigError(ImgauditError):
    """The configuration is invalid."""

    reason = "config"


class MediaError(ImgauditError):
    """The image could not be obtained or decoded."""

    reason = "media"


class FetchError(MediaError):
    """The download failed."""

    reason = "fetch_failed"
    retryable = True


class FetchTimeout(FetchError):
    """The server was too slow."""

    reason = "timeout"


class HTTPStatusError(FetchError):
    """The server answered with an error status."""

    reason = "http_status"

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        # Client errors other than 408/429 will not heal by retrying.
        self.retryable = status >= 500 or status in (408, 429)


class BlockedAddress(MediaError):
    """The URL points at an internal address (loopback, private, link-local or metadata)."""

    reason = "blocked_address"


class TooLarge(MediaError):
    """The download is larger than allowed."""

    reason = "too_large"


class NotAnImage(MediaError):
    """The bytes are not an image in a supported format."""

    reason = "not_an_image"


class DecompressionBomb(MediaError):
    """The image has more pixels than allowed."""

    reason = "decompression_bomb"


class CorruptImage(MediaError):
    """The image is corrupt or truncated."""

    reason = "corrupt"


class ExternalUnavailable(ImgauditError):
    """The external business database is unavailable."""

    reason = "external_unavailable"
    retryable = True


class ModelError(ImgauditError):
    """A model could not be loaded or run."""

    reason = "model"
    retryable = True  # not the image's fault: once the model is fixed, the image deserves another try


class StoreError(ImgauditError):
    """The store refused the operation."""

    reason = "store"


class NotFound(ImgauditError):
    """No such item."""

    reason = "not_found"
