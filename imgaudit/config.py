"""Settings: one TOML file plus ``IMGAUDIT_*`` environment overrides, validated once at start-up.

Precedence, highest first: explicit keyword arguments, environment (``IMGAUDIT_DEDUP__PHASH_MAX_DISTANCE=4``;
nested groups use ``__``), the TOML file (``--config``, else ``$IMGAUDIT_CONFIG``, else ``./imgaudit.toml``
when present), then the defaults below. Settings are built once by the entry point and passed down; no
module reads a global settings object.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from imgaudit.errors import ConfigError

DEFAULT_CONFIG_FILE = "imgaudit.toml"
LEGACY_DATA_DIR = Path("data")


def default_data_dir() -> Path:
    """Where the data lives when ``data_dir`` is not set: one place per user, whatever the current
    directory (a relative ``./data`` made every other directory look like an empty store). A ``./data``
    that already holds ``imgaudit.db`` (the default before) is still used, so existing setups keep
    their data."""
    if (LEGACY_DATA_DIR / "imgaudit.db").is_file():
        return LEGACY_DATA_DIR
    from platformdirs import user_data_dir

    return Path(user_data_dir("imgaudit", appauthor=False))


class _Group(BaseModel):
    """A settings group: a misspelt key is an error, not a silently ignored line."""

    model_config = ConfigDict(extra="forbid")


class FetchSettings(_Group):
    """Downloading images over HTTP(S)."""

    concurrency: int = Field(default=10, ge=1, le=256, description="Parallel downloads.")
    connect_timeout: float = Field(default=5.0, gt=0, description="Seconds to establish a connection.")
    read_timeout: float = Field(default=15.0, gt=0, description="Seconds to wait for each chunk of the body.")
    total_timeout: float = Field(
        default=60.0,
        gt=0,
        description="Seconds for a whole download, so a server that trickles bytes is cut off.",
    )
    retries: int = Field(
        default=2,
        ge=0,
        le=10,
        description="Extra attempts for retryable failures (5xx, 408, 429, timeouts, connection errors); "
        "a rejected TLS certificate is not retried.",
    )
    backoff: float = Field(
        default=0.5,
        ge=0,
        description="Base of the exponential back-off between attempts (backoff * 2**attempt), seconds; a "
        "longer Retry-After is honoured up to 10 s.",
    )
    max_bytes: int = Field(
        default=30 * 1024 * 1024,
        ge=1024,
        description="Refuse bodies larger than this, counted on the wire while streaming (and early on "
        "Content-Length); local files and training images too.",
    )
    straggler_seconds: float = Field(
        default=5.0,
        gt=0,
        description="Once all but a tenth of a batch's downloads have ended, the rest get this long, then "
        "are cut off as slow_server and retried later (on an item's last attempt: the whole total_timeout).",
    )
    max_redirects: int = Field(
        default=5, ge=0, le=20, description="Redirects followed; every target passes the SSRF guard again."
    )
    cdn_base: str = Field(
        default="", description="Prefix joined to relative image URLs (cdn_base + image_url)."
    )
    allow_private: bool = Field(
        default=False,
        description="Switch the SSRF guard's address check off, so loopback, private, link-local and "
        "cloud metadata targets are fetched (tests, internal deployments); off: refused.",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host names (exact, or .example.com / *.example.com for subdomains) or CIDRs exempt "
        "from the SSRF guard's address check.",
    )
    user_agent: str = Field(default="imgaudit/0.1", description="User-Agent header sent with downloads.")


class SourcesSettings(_Group):
    """Reading folders for ingest."""

    follow_symlinks: bool = Field(
        default=False,
        description="Follow links in an ingested folder that point outside it (off: each such link is "
        "recorded as an outside_root failure, so a link to /etc/passwd is never read).",
    )


class DecodeSettings(_Group):
    """Safe image decoding."""

    max_pixels: int = Field(
        default=64_000_000,
        ge=1,
        description="Images with more pixels (or TIFF tiles larger than this) are refused as "
        "decompression bombs, before any pixel is decoded.",
    )
    max_side: int = Field(
        default=512,
        ge=64,
        description="Longest side kept for analysis after decoding; large JPEGs are decoded at reduced "
        "size (draft mode, 1/2 to 1/8 scale).",
    )
    max_jpeg_scans: int = Field(
        default=100,
        ge=1,
        description="Progressive JPEGs with more scans are refused (jpeg_too_many_scans): each scan is a "
        "pass over the whole image. libjpeg's standard progressive script has 10 (6 for greyscale).",
    )
    isolation: str = Field(
        default="process",
        pattern="^(process|thread)$",
        description="'process': decode in worker processes with a deadline and a memory limit, so a "
        "native crash fails only that image; 'thread': in the caller's thread (faster, but no deadline, "
        "no memory limit, and a crash takes the whole process).",
    )
    timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        description="Wall-clock deadline for one decode in process isolation (decode_timeout). The "
        "slowest normal case measured, a 64 MP progressive JPEG, takes about 1 s on one core.",
    )
    max_memory_mb: int = Field(
        default=2048,
        ge=0,
        description="Address-space limit (RLIMIT_AS) of each decode worker process: an allocation past it "
        "fails that image as decompression_bomb instead of exhausting the machine. 0 turns it off.",
    )
    workers: int = Field(
        default=0,
        ge=0,
        le=64,
        description="Decode worker processes in process isolation; 0: one per CPU core.",
    )
    batch_max_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=1024,
        description="Image bytes one batch may hold at once (downloads and files together); items past it "
        "wait for the next batch, losing no attempt (over_budget is never recorded). With fetch.max_bytes "
        "it bounds a batch's memory.",
    )


class DedupSettings(_Group):
    """The decision cascade: exact -> pHash -> embedding -> geometric verification.

    Defaults come from ``bench/dedup.py`` (docs/benchmarks.md: "Choosing the thresholds").
    """

    phash_max_distance: int = Field(
        default=4,
        ge=0,
        le=32,
        description="pHash Hamming distance at or below which an image is a duplicate.",
    )
    phash_candidates: int = Field(default=8, ge=1, description="Hash neighbours examined per image.")
    embed_duplicate: float = Field(
        default=0.92,
        ge=-1,
        le=1,
        description="Descriptor cosine at or above which an image is a duplicate outright.",
    )
    embed_verify: float = Field(
        default=0.60,
        ge=-1,
        le=1,
        description="Cosine from which (up to embed_duplicate) geometric verification decides.",
    )
    verify_min_inliers: int = Field(
        default=12, ge=4, description="RANSAC homography inliers needed to confirm a match in the band."
    )
    verify_min_agreement: float = Field(
        default=0.80,
        ge=-1,
        le=1,
        description="Median correlation of the aligned pixels needed to confirm a match.",
    )
    verify_max_distortion: float = Field(
        default=10.0,
        ge=0,
        le=90,
        description="Largest corner-angle change (degrees) of the mapping between the two: digital copies "
        "(crop, scale, rotate, mirror, pad) keep right angles; another viewpoint of the same scene does not.",
    )
    verify_candidates: int = Field(
        default=3,
        ge=1,
        description="Candidates in the verification band (embed_verify up to embed_duplicate) verified "
        "per image, most similar first.",
    )
    top_k: int = Field(default=10, ge=1, description="Descriptor neighbours retrieved per image.")
    index_duplicates: bool = Field(
        default=False,
        description="Also add duplicates to the indexes (descriptor and hash); off: only unique images "
        "join them.",
    )


class IndexSettings(_Group):
    """The in-process vector and hash indexes."""

    backend: str = Field(
        default="faiss",
        description="Backend of the dedup indexes and the search indexes: 'faiss' (FAISS vectors and a "
        "tantivy BM25 index, saved under data_dir/index and data_dir/search) or 'memory' (the brute-force "
        "and exact-BM25 references, not saved: rebuilt from the store at each start, which re-embeds the "
        "search feed; for tests and small stores).",
    )
    exact_below: int = Field(
        default=50_000,
        ge=0,
        description="Below this many vectors a FAISS index searches exactly; on reaching it, it becomes "
        "an IVF index with 8-bit codes (0: always exact).",
    )
    nprobe: int = Field(
        default=16, ge=1, description="Inverted lists probed per query by the approximate index."
    )


class ModelSettings(_Group):
    """Model files and inference."""

    batch_size: int = Field(default=32, ge=1, le=512, description="Images per model call.")
    threads: int = Field(default=0, ge=0, description="ONNX Runtime intra-op threads (0: one per core).")
    input_size: int = Field(
        default=224, ge=64, le=640, description="Side of the square visual encoder input."
    )


class WorkerSettings(_Group):
    """The always-on worker (``imgaudit worker``)."""

    batch_size: int = Field(default=100, ge=1, le=10_000, description="Items a worker claims per batch.")
    idle_sleep: float = Field(
        default=2.0,
        ge=0.05,
        description="Seconds a worker sleeps when there is nothing to do; also the base of its back-off "
        "while the database is unavailable (doubling, at most 30 s).",
    )
    save_every: float = Field(
        default=60.0,
        ge=1,
        description="Seconds between index snapshots while working (one is also saved on stop).",
    )
    status_every: float = Field(
        default=2.0,
        ge=0.1,
        description="Seconds between updates of the worker's status file (what `imgaudit worker status` "
        "reads).",
    )
    stop_timeout: float = Field(
        default=60.0,
        ge=1,
        description="Seconds `worker stop` and `worker restart` wait for the worker to finish its batch "
        "and exit; past it they give up with exit code 1 and the worker keeps running (--timeout "
        "overrides).",
    )


class LogSettings(_Group):
    """Worker logs."""

    json_lines: bool = Field(
        default=False, description="Write the worker log as JSON lines (one object per line) instead of text."
    )
    level: str = Field(
        default="INFO",
        description="Level of imgaudit's own log lines: DEBUG, INFO, WARNING or ERROR (other libraries "
        "log WARNING and above only).",
    )
    max_bytes: int = Field(
        default=10 * 1024 * 1024,
        ge=1024,
        description="The worker log (data_dir/logs/worker-NAME.log) rotates at this size.",
    )
    backups: int = Field(default=5, ge=0, description="Rotated log files kept.")


class ExternalTableSettings(_Group):
    """An existing business table used as the queue (the legacy MySQL contract). Off when url is empty."""

    url: str = Field(
        default="",
        description="SQLAlchemy URL of a business database whose table is the queue (e.g. "
        "mysql+pymysql://...; mysql:// means PyMySQL); empty: off.",
    )
    name: str = Field(
        default="",
        max_length=64,
        description="Stable name of this source (keys its cursor and items); empty: table@host/db.",
    )
    table: str = Field(default="", description="The content table.")
    key_column: str = Field(
        default="id",
        description="Unique, increasing key column: the read cursor, compared in the column's type.",
    )
    image_column: str = Field(
        default="image_url", description="Column with the image URL, or a path joined to fetch.cdn_base."
    )
    select_where: str = Field(
        default="status = 'draft' AND similarity = 'draft'",
        description="SQL condition selecting rows waiting for work, inserted exactly as written "
        "(operator-trusted).",
    )
    batch_size: int = Field(
        default=100,
        ge=1,
        le=10_000,
        description="Rows read per poll: one short read, no transaction left open.",
    )
    caption_columns: list[str] = Field(
        default_factory=list,
        description="Columns (title, description...) whose text is stored with the image and indexed for "
        "search.",
    )
    on_unique: dict[str, str] = Field(
        default_factory=lambda: {"status": "tag_extension"},
        description="Columns set when an image is unique.",
    )
    on_duplicate: dict[str, str] = Field(
        default_factory=lambda: {"status": "similarity"},
        description="Columns set when an image is a duplicate.",
    )
    on_failure: dict[str, str] = Field(
        default_factory=lambda: {"similarity": "recalc"},
        description="Columns set when an image failed permanently.",
    )
    on_review: dict[str, str] = Field(
        default_factory=dict,
        description="Columns set when moderation sends an image to review (applied after "
        "on_unique/on_duplicate, so they win).",
    )
    on_violate: dict[str, str] = Field(
        default_factory=dict,
        description="Columns set when moderation finds a violation (applied after on_unique/on_duplicate, "
        "so they win).",
    )
    moderation_column: str = Field(
        default="",
        description="Column receiving the moderation verdict: pass, review or violate (empty: not written).",
    )
    reasons_column: str = Field(
        default="",
        description="Column receiving the moderation reasons as one line of text, cut to the column's "
        "length (empty: not written).",
    )
    score_column: str = Field(
        default="", description="Column receiving the duplicate score (empty: not written)."
    )
    original_column: str = Field(
        default="", description="Column receiving the matched original's key (empty: not written)."
    )
    error_column: str = Field(
        default="",
        description="Column receiving the short failure reason, cut to the column's length (empty: not "
        "written).",
    )


class ModerationSettings(_Group):
    """Moderation signals and the policy that turns them into pass / review / violate.

    Each signal can be switched off; a switched-off signal is recorded as not computed, never as clean.
    Thresholds come from ``bench/moderation.py`` (docs/benchmarks.md, docs/moderation.md).
    """

    enabled: bool = Field(default=True, description="Run moderation in the pipeline (off: dedup only).")
    ocr: bool = Field(default=True, description="Read text with OCR (PP-OCRv4, Chinese + English).")
    qr: bool = Field(default=True, description="Detect and decode QR codes and other 2-D codes.")
    barcodes: bool = Field(
        default=False, description="Also decode 1-D barcodes (EAN, Code 128...; about 5 ms more per image)."
    )
    nsfw: bool = Field(default=True, description="Score nudity with the open_nsfw model.")
    quality: bool = Field(default=True, description="Measure sharpness, contrast and flatness.")
    classifier: bool = Field(
        default=True, description="Apply the promoted classifier head, when there is one."
    )
    ocr_det_side: int = Field(
        default=512,
        ge=128,
        le=2048,
        description="Longest side at which text is detected, on the pixels already decoded for analysis "
        "(so at most decode.max_side); 320 is 3x cheaper but misses small print.",
    )
    ocr_read_side: int = Field(
        default=1280,
        ge=320,
        le=4096,
        description="Longest side of the larger decode on which detected lines are read (only for images "
        "where text was detected).",
    )
    ocr_min_score: float = Field(
        default=0.5, ge=0, le=1, description="Recognised lines with a lower OCR confidence are dropped."
    )
    ocr_confident: float = Field(
        default=0.80,
        ge=0,
        le=1,
        description="A contact detail read from a line with a lower OCR score goes to review, not violate.",
    )
    rules: list[Path] = Field(
        default_factory=list, description="Extra text-rule files (TOML) added to the built-in rules."
    )
    words: list[Path] = Field(
        default_factory=list,
        description="Prohibited-word lists: text files, one word per line; the file name is the category.",
    )
    nsfw_min_skin: float = Field(
        default=0.10,
        ge=0,
        le=1,
        description="The NSFW model runs only on images with at least this share of skin-coloured pixels "
        "(grey images always); 0 runs it on every image.",
    )
    nsfw_violate: float = Field(
        default=0.90, ge=0, le=1, description="NSFW score at or above which an image violates."
    )
    nsfw_review: float = Field(
        default=0.60, ge=0, le=1, description="NSFW score from which an image goes to review."
    )
    classifier_violate: float = Field(
        default=0.90,
        ge=0,
        le=1,
        description="Highest probability among the classes not in pass_classes at or above which an image "
        "violates.",
    )
    classifier_review: float = Field(
        default=0.50,
        ge=0,
        le=1,
        description="Highest probability among the classes not in pass_classes from which an image goes "
        "to review.",
    )
    pass_classes: list[str] = Field(
        default_factory=lambda: ["normal", "ok", "pass", "clean"],
        description="Classifier classes that are not violations (compared case-insensitively); every "
        "other class is.",
    )
    min_sharpness: float = Field(
        default=60.0,
        ge=0,
        description="Variance of the Laplacian (at 384 px) below which an image is blurry (review).",
    )
    min_side: int = Field(default=64, ge=1, description="Images with a shorter side are too small (review).")
    min_contrast: float = Field(
        default=4.0,
        ge=0,
        description="Grey-level standard deviation below which an image is near blank (review).",
    )
    max_dominant_fraction: float = Field(
        default=0.97,
        gt=0,
        le=1,
        description="Share of one colour above which an image is mostly one colour (review).",
    )
    qr_decision: str = Field(
        default="violate",
        pattern="^(pass|review|violate)$",
        description="What a QR, DataMatrix or Aztec code in an image asks for: pass, review or violate.",
    )
    reload_every: float = Field(
        default=5.0,
        ge=0.5,
        description="Seconds between checks (one stat) for a newly promoted classifier; running workers "
        "load it without a restart.",
    )


class ClipSettings(_Group):
    """Bring your own CLIP: image and text towers exported to ONNX, read from local files.

    Off while ``image_model`` is empty; search then uses imgaudit's own text space (docs/clip.md).
    """

    image_model: Path | None = Field(
        default=None, description="ONNX image tower: float32 (N, 3, S, S) in, projected (N, D) embedding out."
    )
    text_model: Path | None = Field(
        default=None,
        description="ONNX text tower: int64 token ids (N, L) [+ attention_mask] in, (N, D) embedding out.",
    )
    vocab: Path | None = Field(
        default=None,
        description="Tokenizer vocabulary: vocab.json (CLIP, with merges), vocab.txt (Chinese-CLIP), or "
        "open_clip's bpe_simple_vocab_16e6.txt.gz on its own.",
    )
    merges: Path | None = Field(default=None, description="CLIP BPE merges.txt (with vocab.json).")
    tokenizer: str = Field(
        default="auto",
        pattern="^(auto|clip-bpe|bert-wordpiece)$",
        description="auto (from the files), clip-bpe (OpenAI CLIP / open_clip) or bert-wordpiece "
        "(Chinese-CLIP).",
    )
    context_length: int = Field(
        default=0, ge=0, le=512, description="Text tokens per row; 0: 77 for CLIP BPE, 52 for Chinese-CLIP."
    )
    image_size: int = Field(default=224, ge=32, le=1024, description="Side of the square image-tower input.")
    framing: str = Field(
        default="crop",
        pattern="^(crop|squash)$",
        description="crop: short side resized, centre crop (CLIP); squash: whole image to the square "
        "(Chinese-CLIP).",
    )
    mean: list[float] = Field(
        default_factory=lambda: [0.48145466, 0.4578275, 0.40821073],
        min_length=3,
        max_length=3,
        description="Per-channel mean of the input normalisation (CLIP's; Chinese-CLIP uses the same).",
    )
    std: list[float] = Field(
        default_factory=lambda: [0.26862954, 0.26130258, 0.27577711],
        min_length=3,
        max_length=3,
        description="Per-channel standard deviation of the input normalisation.",
    )
    batch_size: int = Field(default=32, ge=1, le=512, description="Images or texts per model call.")
    image_output: str = Field(
        default="",
        description="Name of the image tower's embedding output when it has several (N, D) outputs.",
    )
    text_output: str = Field(
        default="",
        description="Name of the text tower's embedding output when it has several (N, D) outputs.",
    )

    @property
    def enabled(self) -> bool:
        return self.image_model is not None

    @model_validator(mode="after")
    def _complete(self) -> ClipSettings:
        for name in ("image_model", "text_model", "vocab", "merges"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.expanduser())
        if (self.image_model is None) != (self.text_model is None):
            raise ValueError("clip.image_model and clip.text_model go together")
        if self.enabled and self.vocab is None and self.merges is None:
            raise ValueError("clip needs its tokenizer files: clip.vocab (and clip.merges for CLIP BPE)")
        if min(self.std) <= 0:
            raise ValueError("clip.std must be positive")
        return self


class _RemoteCall(_Group):
    """What every remote endpoint shares: the key, deadlines, retries, rate limit and prices."""

    enabled: bool = Field(default=False, description="Call this remote model (off: never contacted).")
    api_key: SecretStr = Field(
        default=SecretStr(""),
        description="API key (prefer api_key_env or the IMGAUDIT_REMOTE__... variable; never printed).",
    )
    api_key_env: str = Field(
        default="",
        description="Name of an environment variable holding the API key, read when api_key is empty (named "
        "but unset or empty: a configuration error; neither set: no key is sent, for local servers).",
    )
    connect_timeout: float = Field(default=5.0, gt=0, description="Seconds to establish a connection.")
    read_timeout: float = Field(
        default=60.0, gt=0, description="Seconds to wait for the answer to start / each chunk."
    )
    total_timeout: float = Field(default=120.0, gt=0, description="Seconds for a whole request.")
    retries: int = Field(
        default=3, ge=0, le=10, description="Extra attempts after 429, 408, 5xx, timeouts, lost connections."
    )
    backoff: float = Field(
        default=1.0,
        ge=0,
        description="Base of the exponential back-off between attempts (backoff * 2**attempt), seconds; a "
        "longer Retry-After is honoured up to max_retry_after.",
    )
    max_retry_after: float = Field(
        default=30.0, ge=0, description="Longest wait honoured from a Retry-After header, seconds."
    )
    rate_limit: float = Field(
        default=2.0, ge=0, description="Requests per second, client-side, retries included (0: unlimited)."
    )
    burst: int = Field(default=1, ge=1, description="Requests that may go at once after an idle spell.")
    concurrency: int = Field(default=4, ge=1, le=64, description="Requests in flight at most.")
    max_response_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1024, description="Answers larger than this are refused."
    )
    trust_env: bool = Field(default=True, description="Use HTTP(S)_PROXY / NO_PROXY from the environment.")
    per_1k_input_tokens: float = Field(
        default=0.0, ge=0, description="Price per 1000 input tokens, for the cost estimate."
    )
    per_1k_output_tokens: float = Field(
        default=0.0, ge=0, description="Price per 1000 output tokens, for the cost estimate."
    )
    per_image: float = Field(default=0.0, ge=0, description="Price per image, for the cost estimate.")


class RemoteCaptionerSettings(_RemoteCall):
    """Short Chinese + English image descriptions from an OpenAI-compatible vision chat endpoint."""

    base_url: str = Field(default="", description="API base URL; requests go to {base_url}/chat/completions.")
    model: str = Field(default="", description="Vision chat model name, as the provider spells it.")
    prompt: str = Field(
        default="", description="Instruction sent with each image (empty: the built-in bilingual one)."
    )
    max_tokens: int = Field(default=200, ge=16, le=4096, description="Longest answer asked for, in tokens.")
    temperature: float = Field(
        default=0.0, ge=0, le=2, description="Sampling temperature (0: most repeatable)."
    )
    max_chars: int = Field(default=400, ge=16, description="Descriptions are cut to this many characters.")
    image_side: int = Field(
        default=768, ge=64, le=4096, description="Longest side of the JPEG sent (downscaled, never enlarged)."
    )
    jpeg_quality: int = Field(default=85, ge=30, le=100, description="Quality of the JPEG sent.")
    detail: str = Field(
        default="",
        pattern="^(|low|high|auto)$",
        description="image_url.detail where the provider supports it.",
    )

    @model_validator(mode="after")
    def _complete(self) -> RemoteCaptionerSettings:
        if self.enabled and not (self.base_url.strip() and self.model.strip()):
            raise ValueError("remote.captioner.enabled needs base_url and model")
        return self


class RemoteEmbedderSettings(_RemoteCall):
    """Image and text embeddings from a DashScope-style multimodal embedding endpoint."""

    url: str = Field(default="", description="Full URL of the multimodal embedding endpoint (POST).")
    model: str = Field(default="", description="Embedding model name, as the provider spells it.")
    dim: int = Field(default=1024, ge=1, le=16384, description="Embedding size the model returns.")
    batch_size: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Inputs per request; 1 unless the model embeds each of several inputs separately.",
    )
    image_side: int = Field(
        default=512, ge=64, le=4096, description="Longest side of the JPEG sent (downscaled, never enlarged)."
    )
    jpeg_quality: int = Field(default=90, ge=30, le=100, description="Quality of the JPEG sent.")
    parameters: dict[str, Any] = Field(
        default_factory=dict, description="Extra request 'parameters' object (e.g. a dimension), if any."
    )

    @model_validator(mode="after")
    def _complete(self) -> RemoteEmbedderSettings:
        if self.enabled and not (self.url.strip() and self.model.strip()):
            raise ValueError("remote.embedder.enabled needs url and model")
        return self


class RemoteSettings(_Group):
    """Cloud models, for teams that already pay for them. Both are off by default; nothing is sent
    anywhere until a group is enabled with its URL and model."""

    captioner: RemoteCaptionerSettings = Field(default_factory=RemoteCaptionerSettings)
    embedder: RemoteEmbedderSettings = Field(default_factory=RemoteEmbedderSettings)


class SearchSettings(_Group):
    """Text and image search over everything ingested (``imgaudit search``)."""

    rrf_k: int = Field(
        default=60,
        ge=0,
        description="Reciprocal rank fusion constant: larger lets lower ranks in several lists count more.",
    )
    weights: dict[str, float] = Field(
        default_factory=lambda: {"labels": 1.0, "text": 1.0, "bm25": 1.0, "clip": 1.0, "visual": 1.0},
        description="Weight of each ranked list in the fusion: labels (pixels, via ImageNet labels), text "
        "(OCR and caption embeddings), bm25, clip, visual (image queries).",
    )
    min_similarity: dict[str, float] = Field(
        default_factory=lambda: {"text": 0.84},
        description="Cosine below which a dense list drops a candidate, per list. For text, e5 puts "
        "unrelated passages at 0.75-0.83 and related ones at 0.84-0.90; a candidate below the floor stays "
        "if BM25 also matched it.",
    )
    per_page: int = Field(
        default=20, ge=1, le=500, description="Results per page of `imgaudit search` (--top-k overrides)."
    )


class Settings(BaseSettings):
    """All of imgaudit's settings."""

    model_config = SettingsConfigDict(
        env_prefix="IMGAUDIT_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    data_dir: Path = Field(
        default_factory=lambda: default_data_dir(),
        description="Where the SQLite store, the index snapshots, the search indexes, thumbnails, "
        "classifiers, worker run files and logs live. Unset: ./data if it already holds imgaudit.db (the "
        "default of earlier versions), else the per-user data directory (platformdirs: "
        "~/.local/share/imgaudit on Linux, $XDG_DATA_HOME/imgaudit when that is set).",
    )
    cache_dir: Path = Field(
        default=Path("~/.cache/imgaudit"),
        description="Derived model files (the visual encoder's ONNX export, the label space of search), "
        "never in the repo; `imgaudit models prepare` fills it.",
    )
    database_url: str = Field(
        default="",
        description="SQLAlchemy URL of the store (e.g. postgresql+psycopg://user:pass@host/db); empty: "
        "the SQLite file imgaudit.db in data_dir.",
    )
    lease_seconds: int = Field(
        default=300,
        ge=5,
        description="How long a claim on a queued item lasts; the worker holding it extends it every "
        "third of that while it works, and once it expires any worker may take the item.",
    )
    max_attempts: int = Field(
        default=3, ge=1, description="Attempts before a retryable failure becomes permanent."
    )
    fetch: FetchSettings = Field(default_factory=FetchSettings)
    sources: SourcesSettings = Field(default_factory=SourcesSettings)
    decode: DecodeSettings = Field(default_factory=DecodeSettings)
    dedup: DedupSettings = Field(default_factory=DedupSettings)
    index: IndexSettings = Field(default_factory=IndexSettings)
    models: ModelSettings = Field(default_factory=ModelSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    external: ExternalTableSettings = Field(default_factory=ExternalTableSettings)
    moderation: ModerationSettings = Field(default_factory=ModerationSettings)
    search: SearchSettings = Field(default_factory=SearchSettings)
    clip: ClipSettings = Field(default_factory=ClipSettings)
    remote: RemoteSettings = Field(default_factory=RemoteSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = _config_file_in_use()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)

    @model_validator(mode="after")
    def _expand(self) -> Settings:
        if self.data_dir != self.data_dir.expanduser():  # assigning marks the field set (data_dir_origin)
            self.data_dir = self.data_dir.expanduser()
        self.cache_dir = self.cache_dir.expanduser()
        if self.dedup.embed_verify > self.dedup.embed_duplicate:
            raise ValueError("dedup.embed_verify must not exceed dedup.embed_duplicate")
        return self

    @property
    def store_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'imgaudit.db'}"

    @property
    def database_in_use(self) -> str:
        """The store for people to read: SQLite as an absolute path, a server URL without its password."""
        if not self.database_url:
            return f"sqlite:///{(self.data_dir / 'imgaudit.db').absolute()}"
        return re.sub(r"(://[^/:@]*:)[^/@]*@", r"\1***@", self.database_url)

    @property
    def data_dir_origin(self) -> str:
        """Why ``data_dir`` is what it is, for ``config show`` and ``stats``."""
        if "data_dir" in self.model_fields_set:
            return "configured"
        if self.data_dir == LEGACY_DATA_DIR:
            return "./data holds imgaudit.db"
        return "per-user default"


def _config_file_in_use() -> Path | None:
    explicit = os.environ.get("IMGAUDIT_CONFIG")
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        return path
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.is_file() else None


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings once; errors become a ConfigError with every problem listed."""
    import tomllib

    from pydantic import ValidationError

    previous = os.environ.get("IMGAUDIT_CONFIG")
    try:
        if config_file is not None:
            os.environ["IMGAUDIT_CONFIG"] = str(config_file)
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"cannot read the config file {_config_file_in_use()}: {exc}") from exc
    finally:
        if config_file is not None:
            if previous is None:
                os.environ.pop("IMGAUDIT_CONFIG", None)
            else:
                os.environ["IMGAUDIT_CONFIG"] = previous


def config_file_in_use() -> Path | None:
    """The TOML file the settings were read from, if any (for ``imgaudit config show``)."""
    return _config_file_in_use()
