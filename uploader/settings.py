"""All configuration, from environment variables prefixed with ``UPLOADER_``."""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024
GiB = 1024 * MiB


HOOK_EVENTS = ("pre-create", "pre-finish", "pre-terminate")
_VARIANT_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


class VariantSpec(BaseModel):
    """One derived image: the longest side fits ``size`` pixels, encoded as ``format``."""

    name: str
    size: int = Field(gt=0, le=8192)
    format: Literal["webp", "jpeg", "png"]

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not _VARIANT_NAME.match(value):
            raise ValueError("variant names are lowercase letters, digits, '.', '_' and '-'")
        return value


DEFAULT_VARIANTS = [
    VariantSpec(name="256.webp", size=256, format="webp"),
    VariantSpec(name="256.jpg", size=256, format="jpeg"),
    VariantSpec(name="1024.webp", size=1024, format="webp"),
    VariantSpec(name="1024.jpg", size=1024, format="jpeg"),
]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="UPLOADER_", env_file=None, extra="ignore")

    data_dir: Path = Field(default=Path("./data"), description="Where the embedded default keeps its files.")
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; unset means SQLite at DATA_DIR/uploader.db. "
        "postgresql+asyncpg://user:pass@host/db for PostgreSQL.",
    )
    database_pool_size: int = Field(
        default=20,
        ge=1,
        le=500,
        description="PostgreSQL connections each process keeps open once it needed them (half "
        "for statements that stand alone, run on the driver); up to 10 more are opened for a "
        "burst and closed after it.",
    )
    storage_url: str | None = Field(
        default=None, description="file:///path for a local folder; unset means DATA_DIR/files."
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint (MinIO, moto); unset means AWS."
    )
    s3_part_size: int = Field(
        default=8 * MiB, ge=5 * MiB, description="Multipart part size (grows for very large uploads)."
    )
    s3_concurrency: int = Field(
        default=3,
        ge=1,
        le=64,
        description="Parts in flight per upload; memory per upload ~ this x part size.",
    )
    s3_max_attempts: int = Field(
        default=5, ge=1, le=20, description="Attempts of each S3 call (throttling, 5xx, timeouts)."
    )
    s3_presigned_downloads: bool = Field(
        default=False, description="Downloads redirect to a short-lived presigned S3 URL."
    )
    s3_presign_seconds: int = Field(default=300, ge=1, le=7 * 24 * 3600)
    s3_public_endpoint_url: str | None = Field(
        default=None,
        description="Where clients reach S3, for the URLs direct uploads are signed for; "
        "unset means the S3 endpoint.",
    )
    s3_direct_sign_seconds: int = Field(
        default=3600, ge=60, le=7 * 24 * 3600, description="How long a direct upload's signed URLs work."
    )
    s3_direct_poll_seconds: float = Field(
        default=2.0,
        gt=0,
        description="How often unfinished direct uploads are checked for their object in S3.",
    )
    s3_events_token: SecretStr | None = Field(
        default=None,
        description="Enables POST /s3/events (S3 or MinIO event notifications), which must "
        "then send Authorization: Bearer <this token>.",
    )
    redis_url: str | None = Field(
        default=None, description="redis://host:6379/0 for the full stack; unset means in-process."
    )
    redis_prefix: str = Field(default="uploader", description="Prefix of every Redis key.")
    sse_keepalive_seconds: float = Field(default=15.0, gt=0, description="Comment lines on idle SSE streams.")
    sse_max_streams_per_principal: int = Field(
        default=32, gt=0, description="Event streams one principal may have open on one process (429)."
    )
    sse_replay_limit: int = Field(
        default=1000,
        gt=0,
        description="Past events a stream of all of a principal's uploads replays: the latest this many.",
    )
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = Field(
        default=1,
        ge=1,
        description="API processes sharing the port (more than one needs PostgreSQL and Redis).",
    )
    migrate_on_start: bool = Field(
        default=True,
        description="`uploader serve` applies database migrations before it listens; turn off "
        "where a job migrates (Kubernetes) and the processes only wait for it.",
    )
    log_level: str = "info"
    log_json: bool | None = Field(
        default=None, description="JSON log lines; unset means JSON unless stderr is a terminal."
    )
    access_log: bool = False
    metrics: bool = Field(default=True, description="Count requests and serve them at /metrics.")
    metrics_token: SecretStr | None = Field(
        default=None, description="If set, /metrics needs Authorization: Bearer <this token>."
    )

    max_upload_size: int = Field(default=10 * GiB, gt=0, description="Tus-Max-Size in bytes.")
    upload_ttl_seconds: int = Field(
        default=24 * 3600, gt=0, description="Unfinished uploads expire this long after their last write."
    )
    dedup: Literal["owner", "off"] = Field(
        default="owner",
        description="A creation that declares the file's SHA-256 (Repr-Digest) completes at once "
        "when its owner already holds a ready upload of those bytes, which it then shares; off: never.",
    )
    cleanup_interval_seconds: float = Field(default=60.0, gt=0)
    orphan_grace_seconds: float = Field(
        default=86400.0, gt=0, description="Stored bytes no upload row names are removed once this old."
    )
    orphan_sweep_interval_seconds: float = Field(
        default=3600.0, gt=0, description="How often storage is listed for such orphans."
    )
    checkpoint_bytes: int = Field(
        default=4 * MiB, gt=0, description="A long PATCH records its offset every this many bytes."
    )
    lock_timeout_seconds: float = Field(
        default=10.0, gt=0, description="How long a request waits for another to release an upload."
    )
    lock_lease_seconds: float = Field(
        default=5.0,
        ge=1,
        description="With Redis: a writer's lease, renewed five times per lease; a crashed "
        "process's uploads are free again after at most this long.",
    )
    body_idle_timeout_seconds: float = Field(
        default=60.0, gt=0, description="A request body that sends nothing this long is ended (408)."
    )
    header_timeout_seconds: float = Field(
        default=20.0, gt=0, description="A request whose headers have not all arrived after this is closed."
    )
    max_header_bytes: int = Field(
        default=64 * 1024, ge=1024, description="The request line and headers together, at most (431)."
    )
    max_connections: int | None = Field(
        default=None, ge=1, description="Connections open at once, at most; beyond, 503 with Retry-After."
    )
    keep_alive_seconds: int = Field(
        default=5, gt=0, description="An idle keep-alive connection is closed after this."
    )
    shutdown_delay_seconds: float = Field(
        default=0.0,
        ge=0,
        description="After SIGTERM, keep serving this long with /readyz answering 503 (so that a "
        "load balancer stops routing here), then stop taking connections and drain.",
    )
    tombstone_retention_seconds: int = Field(
        default=7 * 24 * 3600,
        gt=0,
        description="Rows of terminated and expired uploads (and their events) are deleted after this.",
    )
    cors_origins: list[str] = Field(default=["*"], description="Origins allowed to call the API.")
    api_keys: dict[str, str] = Field(
        default_factory=dict,
        description='Bootstrap API keys: key -> principal name, e.g. {"k3y": "alice"} (scopes '
        "upload, read, delete). Keys made with `uploader keys create` live in the database.",
    )
    auth_required: bool | None = Field(
        default=None,
        description="Whether callers must present a key or token; unset means yes once any "
        "key (bootstrap or in the database) or JWT key is configured, anonymous otherwise.",
    )
    api_key_cache_seconds: float = Field(
        default=5.0, ge=0, description="How long a process trusts a key it looked up (revocation delay)."
    )
    jwt_secret: SecretStr | None = Field(default=None, description="HS256 key of upload tokens.")
    jwt_jwks_url: str | None = Field(default=None, description="JWKS URL of RS256/ES256 token keys.")
    jwt_jwks_cache_seconds: float = Field(default=300.0, gt=0, description="JWKS kept this long.")
    jwt_issuer: str | None = Field(default=None, description="Tokens must carry this iss, when set.")
    jwt_audience: str | None = Field(default=None, description="Tokens must carry this aud, when set.")
    jwt_leeway_seconds: float = Field(default=30.0, ge=0, description="Clock skew allowed on exp and nbf.")
    quota_bytes: int | None = Field(
        default=None, gt=0, description="Bytes one principal may hold (declared lengths count at once)."
    )
    quota_active_uploads: int | None = Field(
        default=None, gt=0, description="Unfinished uploads one principal may have at once."
    )
    rate_limit_create: str | None = Field(
        default=None, description="Creations per principal, e.g. 60/minute (the `limits` notation)."
    )
    rate_limit_ip: str | None = Field(
        default=None, description="Requests per client address, e.g. 1200/minute."
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description='Addresses or networks whose X-Forwarded-For is believed, e.g. ["10.0.0.0/8"].',
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
    processing: Literal["embedded", "celery", "off"] = Field(
        default="embedded",
        description="Where the pipeline runs: in the API process, on Celery workers (needs "
        "REDIS_URL), or not at all.",
    )
    variants: list[VariantSpec] = Field(
        default_factory=lambda: [v.model_copy() for v in DEFAULT_VARIANTS],
        description='Image variants, JSON: [{"name": "256.webp", "size": 256, "format": "webp"}, ...].',
    )
    image_max_pixels: int = Field(
        default=89_478_485, gt=0, description="Images with more pixels are refused (decompression bombs)."
    )
    image_max_bytes: int = Field(
        default=256 * MiB, gt=0, description="Larger images are kept but get no variants."
    )
    media_timeout_seconds: float = Field(
        default=120.0, gt=0, description="An ffprobe or ffmpeg run taking longer is killed; the upload fails."
    )
    media_memory_bytes: int = Field(
        default=2 * 1024 * MiB,
        gt=0,
        description="Address space of an ffprobe or ffmpeg run (RLIMIT_AS).",
    )
    pdf_max_bytes: int = Field(
        default=256 * MiB, gt=0, description="Larger PDFs are kept but get no page count or render."
    )
    render_key: SecretStr | None = Field(
        default=None,
        description="HMAC key that signs render URLs (GET /api/v1/uploads/{id}/render/{ops}?sig=); "
        "unset: renders are off.",
    )
    clamav_url: str | None = Field(
        default=None,
        description="Every upload is scanned for malware by clamd here, before any decoder reads "
        "it: tcp://host:port or unix:///path/to/clamd.ctl. Unset: no scanning.",
    )
    quarantine: bool = Field(
        default=False,
        description="Bytes of a rejected upload (malware found) are moved under a quarantine "
        "prefix of the storage instead of deleted.",
    )
    scan_oversize: Literal["reject", "skip"] = Field(
        default="reject",
        description="A file longer than clamd's StreamMaxLength is rejected, or kept unscanned "
        "(skip: the status says so).",
    )
    scan_timeout_seconds: float = Field(
        default=60.0, gt=0, description="clamd slower than this to connect, take a chunk or answer is down."
    )
    task_soft_time_limit_seconds: int = Field(default=300, gt=0, description="A step past this fails.")
    task_time_limit_seconds: int = Field(default=360, gt=0, description="A worker past this is killed.")
    task_max_retries: int = Field(default=5, ge=0, description="Retries of a transient failure.")
    task_retry_backoff_seconds: float = Field(default=2.0, gt=0, description="First retry delay; doubles.")
    broker_visibility_timeout_seconds: int = Field(
        default=3600, gt=0, description="An unacknowledged task is redelivered after this long."
    )
    hook_url: str | None = Field(default=None, description="Blocking hooks are POSTed here.")
    hook_secret: SecretStr | None = Field(
        default=None, description="HMAC key that signs hook requests; unset: the webhook secret."
    )
    hook_timeout_seconds: float = Field(
        default=5.0, gt=0, description="A hook slower than this fails closed."
    )
    hook_events: list[str] = Field(
        default_factory=lambda: list(HOOK_EVENTS),
        description='Which hooks are called, JSON: ["pre-create", "pre-finish", "pre-terminate"].',
    )
    webhook_url: str | None = Field(default=None, description="POST upload.received/ready/failed here.")
    webhook_secret: str | None = Field(default=None, description="HMAC-SHA256 key for webhook signatures.")
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)
    webhook_max_attempts: int = Field(
        default=12, ge=1, description="Attempts per event before it is dead-lettered (about an hour)."
    )
    webhook_backoff_seconds: float = Field(
        default=2.0, gt=0, description="Wait after a failed attempt; doubles, up to an hour."
    )
    webhook_poll_seconds: float = Field(
        default=1.0, gt=0, description="How often the outbox is looked at for due deliveries."
    )
    webhook_retention_days: float = Field(
        default=7.0, gt=0, description="Delivered events are kept this long (dead ones until retried)."
    )
    webhook_dispatcher: Literal["auto", "process"] = Field(
        default="auto",
        description="Who delivers: auto (a task of each API process, or Celery in the full stack); "
        "process (only `uploader webhooks deliver` processes).",
    )
    webhook_allow_private: bool = Field(
        default=False, description="Allow webhook and hook URLs at link-local (metadata) addresses."
    )

    @field_validator("tus_path")
    @classmethod
    def _slashes(cls, value: str) -> str:
        return "/" + value.strip("/") + "/"

    @field_validator("rate_limit_create", "rate_limit_ip")
    @classmethod
    def _rate(cls, value: str | None) -> str | None:
        if value:
            from limits import parse

            try:
                parse(value)
            except ValueError:
                raise ValueError(f"{value!r} is not a rate such as 60/minute") from None
        return value or None

    @field_validator("clamav_url")
    @classmethod
    def _clamd(cls, value: str | None) -> str | None:
        if value:
            from uploader.processing.clamav import Clamd

            Clamd(value)  # a ValueError says what an address looks like
        return value or None

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        import ipaddress

        for network in value:
            ipaddress.ip_network(network, strict=False)  # a ValueError names the bad one
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.processing == "celery" and not self.redis_url:
            raise ValueError("UPLOADER_PROCESSING=celery needs UPLOADER_REDIS_URL (the broker)")
        if self.jwt_secret is not None and len(self.jwt_secret.get_secret_value().encode()) < 32:
            raise ValueError(
                "UPLOADER_JWT_SECRET must be at least 32 bytes (RFC 7518: HS256 keys have 256 bits)"
            )
        if self.hook_url and not (self.hook_secret or self.webhook_secret):
            raise ValueError(
                "UPLOADER_HOOK_URL needs UPLOADER_HOOK_SECRET (or UPLOADER_WEBHOOK_SECRET) to sign"
            )
        unknown = set(self.hook_events) - set(HOOK_EVENTS)
        if unknown:
            raise ValueError(f"unknown hook events {sorted(unknown)}; known: {', '.join(HOOK_EVENTS)}")
        if not self.webhook_allow_private:
            from uploader.webhooks.addresses import refused_literal

            for name, url in (
                ("UPLOADER_WEBHOOK_URL", self.webhook_url),
                ("UPLOADER_HOOK_URL", self.hook_url),
            ):
                refused = refused_literal(url) if url else None
                if refused:
                    raise ValueError(
                        f"{name}: {refused}; set UPLOADER_WEBHOOK_ALLOW_PRIVATE=true to allow it"
                    )
        if self.webhook_url and not self.webhook_secret:
            raise ValueError("UPLOADER_WEBHOOK_URL needs UPLOADER_WEBHOOK_SECRET to sign deliveries")
        names = [variant.name for variant in self.variants]
        if len(names) != len(set(names)):
            raise ValueError("variant names must be unique")
        return self

    @property
    def hook_signing_secret(self) -> str:
        secret = self.hook_secret or self.webhook_secret
        if secret is None:
            raise ValueError("no hook secret")
        return secret.get_secret_value() if isinstance(secret, SecretStr) else secret

    @property
    def task_queue(self) -> str:
        """One queue per deployment prefix: deployments sharing a Redis never share work."""
        return f"{self.redis_prefix}.processing"

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
