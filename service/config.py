"""The service's settings: one typed class, read from `FEATCACHE_*` variables and a `.env` file.

`FEATCACHE_WEIGHTS` is the same variable the extractor reads, so one environment serves both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MIB = 1 << 20


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FEATCACHE_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    #: Head folders to serve (`train-head` output); the first is the default head.
    #: In the environment: comma-separated, e.g. FEATCACHE_HEADS=heads/a,heads/b.
    heads: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    #: A folder of heads served and watched: DIR/NAME/VERSION/ (or DIR/NAME/) head folders are
    #: added, replaced and removed while the server runs (service/head_store.py). With --head
    #: as well, both are served; a name in both is served from --head.
    heads_dir: Path | None = None
    #: How often the heads folder is scanned, in seconds; 0 scans only on SIGHUP and
    #: POST /admin/reload.
    heads_poll_s: float = Field(default=2.0, ge=0, le=3600)
    #: The head a request without ?head= gets. Unset: the first --head; with only --heads-dir,
    #: the one head it serves (several and no default: requests must name one).
    default_head: str | None = None
    #: 'imagenet' or a path to the VGG16 no-top weights; unset means 'imagenet'.
    weights: str | None = None
    #: Arithmetic of the conv base: fp32, or int8 (the quantized model; heads must have been
    #: trained on int8 features of the same model). Shared with `extract` (FEATCACHE_PRECISION).
    precision: Literal["fp32", "int8"] = "fp32"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    #: When set, every route but /health and /ready needs it (header X-API-Key, or
    #: Authorization: Bearer KEY).
    api_key: SecretStr | None = None
    #: A file holding the API key (a Docker/Kubernetes secret, e.g. /run/secrets/api_key),
    #: so the key need not sit in the environment. Surrounding whitespace is dropped.
    #: Setting both this and FEATCACHE_API_KEY is refused as ambiguous.
    api_key_file: Path | None = None

    #: Most images in one forward pass of the conv base. 4: measured best on a 2-core CPU
    #: (+3-9% throughput over 1; 8 was slower), benchmarks/serve_batching.py, BENCHMARKS.md.
    max_batch_size: int = Field(default=4, ge=1, le=256)
    #: How long the batching worker waits for more images once it has one (milliseconds).
    #: 0: a lone request at idle runs at once (a wait only adds latency for one client);
    #: under load, images queue while a pass runs and form the next batch by themselves.
    max_wait_ms: float = Field(default=0.0, ge=0, le=1000)
    #: Most images admitted and not yet through the conv base (being decoded, queued, or in the
    #: running forward pass); more is 503 overloaded with Retry-After. It bounds how long an
    #: accepted image waits: at most max_queue / max_batch_size forward passes (64 / 4 = 16
    #: passes, ~4 s on a 2-core CPU at ~15 images/s), and what queued images hold.
    max_queue: int = Field(default=64, ge=1)
    #: Longest a request's work (decode, queue, forward pass, head) may take, in seconds; past
    #: it: 503 timeout, and its images still waiting are dropped.
    request_timeout_s: float = Field(default=30.0, gt=0)
    #: Feature-cache capacity in bytes of features; 0 disables it. An entry costs what its
    #: arrays hold: 32 KiB for block5_pool maps (256 MiB: 8,192 images), 162 KiB for
    #: block4_pool's, more with pooled vectors alongside.
    feature_cache_bytes: int = Field(default=256 * MIB, ge=0)
    #: Deprecated (entries differ in size by layer): a cap on the number of cached images on
    #: top of feature_cache_bytes; 0 still disables the cache. Unset by default.
    feature_cache_size: int | None = Field(default=None, ge=0)

    #: Largest image upload accepted, in bytes (the /predict body; each file of a batch).
    max_upload_bytes: int = Field(default=10 * MIB, ge=1)
    #: Most pixels an upload may decode to; more is 413 image_too_large. A JPEG counts the
    #: pixels draft mode decodes (1/8 scale for large ones), so a 48 MP photo passes. Decoding
    #: holds at most ~8 bytes per pixel (RGBA; 1 for 8-bit grayscale, 3 for 16-bit, 4 for RGB):
    #: 24 MP (6000x4000) is at most ~190 MB per image being decoded. Pillow's own limit, 89.5
    #: MP, stays the ceiling for headers.
    max_image_pixels: int = Field(default=24_000_000, ge=1)
    #: Images decoded at once, server-wide. With max_image_pixels this bounds what decoding
    #: holds (2 x 190 MB at most); decoding an ordinary image takes milliseconds, a forward
    #: pass far longer, so 2 keeps up with the model.
    decode_concurrency: int = Field(default=2, ge=1, le=64)
    #: Most files in one /predict/batch request.
    max_batch_files: int = Field(default=32, ge=1)
    #: Largest /predict/batch request body, in bytes (and /v2 infer's, once decompressed).
    max_batch_request_bytes: int = Field(default=64 * MIB, ge=1)
    #: Bytes of request bodies held at once, server-wide, on the upload routes (/predict,
    #: /predict/batch, /v2 infer): bodies being received, then held until their request ends,
    #: and what a compressed /v2 body inflates to. A request that would pass it is 503
    #: overloaded with Retry-After: before its body is read when its Content-Length says so,
    #: else as soon as its body does. 128 MiB: two of the largest batch requests at once; a
    #: /v2 request holds up to ~2x its body while parsed (service/api/routes/v2.py).
    max_body_bytes_in_flight: int = Field(default=128 * MIB, ge=1)
    #: Longest a client may take to send a request body on the upload routes, in seconds,
    #: from its headers to its last byte; then 408 and the connection is closed. A slow
    #: sender holds its share of max_body_bytes_in_flight while it sends.
    body_timeout_s: float = Field(default=60.0, gt=0)

    #: Run a forward pass before reporting ready, so the first request is not the slow one.
    warmup: bool = True
    #: A head trained on augmented views averages its probabilities over the same views of each
    #: upload (K+1 forward passes per new image); False predicts from the upload alone.
    tta: bool = True
    #: Refuse images the head's out-of-distribution guard flags (422 out_of_distribution)
    #: instead of labelling them. Off: they are labelled, with in_distribution false. Heads
    #: without a guard (trained with --ood none, or before guards) are never refused.
    refuse_ood: bool = False
    log_level: str = "info"
    #: The try-it page at / (service/ui/): pick images, see labels and probabilities.
    #: False (FEATCACHE_UI=false) leaves / and its assets out.
    ui: bool = True

    @field_validator("heads", mode="before")
    @classmethod
    def _split_heads(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @model_validator(mode="after")
    def _one_batch_fits_in_flight(self) -> Settings:
        if self.max_body_bytes_in_flight < self.max_batch_request_bytes:
            raise ValueError(
                f"max_body_bytes_in_flight ({self.max_body_bytes_in_flight}) must be at least "
                f"max_batch_request_bytes ({self.max_batch_request_bytes}), or the largest "
                "batch request would always be refused")
        return self

    @model_validator(mode="after")
    def _read_api_key_file(self) -> Settings:
        if self.api_key_file is None:
            return self
        if self.api_key is not None:
            raise ValueError("set FEATCACHE_API_KEY or FEATCACHE_API_KEY_FILE, not both")
        try:
            key = self.api_key_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"api_key_file {self.api_key_file} cannot be read ({exc})") from None
        if not key:
            raise ValueError(f"api_key_file {self.api_key_file} is empty")
        self.api_key = SecretStr(key)
        return self
