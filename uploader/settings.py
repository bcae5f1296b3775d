"""All configuration, from environment variables prefixed with ``UPLOADER_``."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024
GiB = 1024 * MiB


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="UPLOADER_", env_file=None, extra="ignore")

    data_dir: Path = Field(default=Path("./data"), description="Where the embedded default keeps its files.")
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; unset means SQLite at DATA_DIR/uploader.db. "
        "postgresql+asyncpg://user:pass@host/db for PostgreSQL.",
    )
    storage_url: str | None = Field(
        default=None, description="file:///path for a local folder; unset means DATA_DIR/files."
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint (MinIO, moto); unset means AWS."
    )
    s3_part_size: int = Field(
        default=5 * MiB, ge=5 * MiB, description="Multipart part size (grows for very large uploads)."
    )
    s3_concurrency: int = Field(
        default=3,
        ge=1,
        le=64,
        description="Parts in flight per upload; memory per upload ~ this x part size.",
    )
    s3_presigned_downloads: bool = Field(
        default=False, description="Downloads redirect to a short-lived presigned S3 URL."
    )
    s3_presign_seconds: int = Field(default=300, ge=1, le=7 * 24 * 3600)
    redis_url: str | None = Field(
        default=None, description="redis://host:6379/0 for the full stack; unset means in-process."
    )
    redis_prefix: str = Field(default="uploader", description="Prefix of every Redis key.")
    sse_keepalive_seconds: float = Field(default=15.0, gt=0, description="Comment lines on idle SSE streams.")
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "info"
    log_json: bool | None = Field(
        default=None, description="JSON log lines; unset means JSON unless stderr is a terminal."
    )
    access_log: bool = False

    max_upload_size: int = Field(default=10 * GiB, gt=0, description="Tus-Max-Size in bytes.")
    upload_ttl_seconds: int = Field(
        default=24 * 3600, gt=0, description="Unfinished uploads expire this long after their last write."
    )
    cleanup_interval_seconds: float = Field(default=60.0, gt=0)
    checkpoint_bytes: int = Field(
        default=4 * MiB, gt=0, description="A long PATCH records its offset every this many bytes."
    )
    lock_timeout_seconds: float = Field(
        default=10.0, gt=0, description="How long a request waits for another to release an upload."
    )
    cors_origins: list[str] = Field(default=["*"], description="Origins allowed to call the API.")
    api_keys: dict[str, str] = Field(
        default_factory=dict,
        description='API key -> principal name, e.g. {"k3y": "alice"}. Empty: anonymous access.',
    )
    tus_path: str = "/files/"
    public_url: str | None = Field(
        default=None, description="Base URL for Location headers when behind a proxy."
    )
    inline_digest_max_bytes: int = Field(
        default=64 * MiB,
        ge=0,
        description="Uploads up to this length get their SHA-256 while the bytes arrive; larger "
        "ones (and 0 here: all) are hashed by processing, off the receiving path.",
    )
    process_uploads: bool = Field(default=True, description="Run the processing pipeline on completion.")

    @field_validator("tus_path")
    @classmethod
    def _slashes(cls, value: str) -> str:
        return "/" + value.strip("/") + "/"

    @cached_property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'uploader.db').resolve()}"

    @cached_property
    def resolved_storage_url(self) -> str:
        if self.storage_url:
            return self.storage_url
        return (self.data_dir / "files").resolve().as_uri()
