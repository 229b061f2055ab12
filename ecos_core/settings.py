"""Where things live, from ECOS_* environment variables or a local .env file.

Kept apart from the round config so the edge client can read it without importing
the training stack.
"""

from __future__ import annotations

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Where things live; from ECOS_* environment variables or a local .env file."""

    model_config = SettingsConfigDict(env_prefix="ECOS_", env_file=".env", extra="ignore")

    store: str = "./ecos-store"  # fsspec URL: a folder, or s3://bucket/prefix
    cache_dir: str | None = None  # built-in domains cache (default ~/.cache/ecos)
    device_dir: str = "./ecos-devices"  # simulated clients' private data ("on the device")
    s3_endpoint: str | None = None  # e.g. http://127.0.0.1:9000 (rclone serve s3); None: AWS
    s3_key: str | None = None
    s3_secret: SecretStr | None = None  # never printed: repr(Settings()) shows '**********'

    def storage_options(self, url: str) -> dict:
        """fsspec options for `url`: S3 credentials and endpoint, nothing for other stores.
        They include the checksum switches that let large objects be read (see
        S3_CHECKSUM_CONFIG) for readers that open `url` with fsspec, not through Store."""
        if not url.startswith("s3://"):
            return {}
        from ecos_core.storage.store import S3_CHECKSUM_CONFIG  # lazy: fsspec/numpy only when S3 is used

        options: dict = {"config_kwargs": {"s3": {"addressing_style": "path"}, "signature_version": "s3v4",
                                           "retries": {"max_attempts": 3}, "connect_timeout": 5,
                                           **S3_CHECKSUM_CONFIG}}  # fmt: skip
        if self.s3_key:
            options.update(key=self.s3_key, secret=self.s3_secret.get_secret_value() if self.s3_secret else None)
        if self.s3_endpoint:
            options["client_kwargs"] = {"endpoint_url": self.s3_endpoint, "region_name": "us-east-1"}
        return options
