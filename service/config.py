"""The service's settings: one typed class, read from `FEATCACHE_*` variables and a `.env` file.

`FEATCACHE_WEIGHTS` is the same variable the extractor reads, so one environment serves both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

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
    #: 'imagenet' or a path to the VGG16 no-top weights; unset means 'imagenet'.
    weights: str | None = None
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
    #: Feature-cache capacity in images (32 KiB each at the default 4x4x512); 0 disables it.
    feature_cache_size: int = Field(default=4096, ge=0)

    #: Largest image upload accepted, in bytes (the /predict body; each file of a batch).
    max_upload_bytes: int = Field(default=10 * MIB, ge=1)
    #: Most files in one /predict/batch request.
    max_batch_files: int = Field(default=32, ge=1)
    #: Largest /predict/batch request body, in bytes.
    max_batch_request_bytes: int = Field(default=64 * MIB, ge=1)

    #: Run a forward pass before reporting ready, so the first request is not the slow one.
    warmup: bool = True
    log_level: str = "info"

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
