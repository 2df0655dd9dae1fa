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


class SlowServer(FetchTimeout):
    """The download was still running well after the rest of its batch had ended."""

    reason = "slow_server"  # retryable: on the item's last attempt it gets the whole total_timeout


class HTTPStatusError(FetchError):
    """The server answered with an error status."""

    reason = "http_status"

    def __init__(self, status: int, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.retry_after = retry_after  # seconds the server asked us to wait (Retry-After), if it did
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


class InternalError(ImgauditError):
    """An unexpected error while handling this item (a bug, or an input no check foresaw)."""

    reason = "internal_error"
    # Permanent: the same bytes would fail the same way; `imgaudit recalc`/requeue retries after a fix.
    retryable = False

    @classmethod
    def during(cls, stage: str, exc: BaseException) -> InternalError:
        """The error recorded for an item whose ``stage`` raised ``exc``; the cause stays attached."""
        error = cls(f"{stage} failed: {type(exc).__name__}: {str(exc)[:300]}")
        error.__cause__ = exc
        return error


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


class StoreUnavailable(StoreError):
    """The database is away (connection refused or lost, locked, timed out): retry later.

    Raised by the store in place of the driver's error, so callers above the store never import
    SQLAlchemy to tell an outage from a refusal."""

    reason = "store_unavailable"
    retryable = True


class InvalidRequest(ImgauditError):
    """The caller asked for something malformed or contradictory (a bad filter, an unknown option value);
    the HTTP API answers it with 400, the CLI with a usage error."""

    reason = "invalid_request"


class NotFound(ImgauditError):
    """No such item."""

    reason = "not_found"


class EncodedBody(MediaError):
    """The server sent a content-encoded (e.g. gzip) body although only identity was accepted."""

    reason = "encoded_body"  # never decoded: a few KB of nested gzip can expand to gigabytes


class TLSFailed(FetchError):
    """The server's TLS certificate was rejected."""

    reason = "tls_failed"
    retryable = False  # a certificate that fails verification now will fail the same way in a second


class OverBudget(MediaError):
    """The batch's byte budget is spent; the item should be queued again once bytes are released."""

    reason = "over_budget"
    retryable = True


class TooManyScans(DecompressionBomb):
    """The progressive JPEG has more scans than decode.max_jpeg_scans (each scan re-reads every pixel)."""

    reason = "jpeg_too_many_scans"


class Polyglot(MediaError):
    """The file is an image and also another format (a ZIP archive appended, GIFAR-style)."""

    reason = "polyglot"


class DecodeTimeout(MediaError):
    """Decoding took longer than decode.timeout_seconds; the decoder process was killed."""

    reason = "decode_timeout"  # not retried: the same bytes take as long again


class DecodeCrashed(MediaError):
    """The decoder process died while decoding (a native crash); the image is refused."""

    reason = "decode_crashed"


class DecodeUnavailable(MediaError):
    """No decoder process could be started or the pool is closed; not the image's fault."""

    reason = "decode_unavailable"
    retryable = True


class FetchRefused(FetchError):
    """The download cannot succeed by retrying (bad URL, too many redirects, not a regular file)."""

    retryable = False


class DatasetError(ImgauditError):
    """The training set cannot be used."""

    reason = "dataset"


class RegistryError(ImgauditError):
    """The classifier registry refused the operation."""

    reason = "registry"


class RemoteError(ModelError):
    """The remote model service failed."""

    reason = "remote"
    retryable = True

    def __init__(
        self,
        message: str | None = None,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        if retryable is not None:
            self.retryable = retryable


class RemoteTimeout(RemoteError):
    """The remote model service was too slow."""

    reason = "remote_timeout"


class RemoteRefused(RemoteError):
    """The remote model service refused the request (bad request, key, quota or model name)."""

    reason = "remote_refused"
    retryable = False


class RemoteBadResponse(RemoteError):
    """The remote model service answered with something that is not the expected JSON."""

    reason = "remote_bad_response"
    retryable = False


class DaemonError(ImgauditError):
    """The worker process could not be managed (started, stopped, or its log read)."""

    reason = "daemon"
