"""Where things live, from ECOS_* environment variables or a local .env file.

Kept apart from the round config so the edge client can read it without importing
the training stack.
"""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Where things live; from ECOS_* environment variables or a local .env file."""

    model_config = SettingsConfigDict(env_prefix="ECOS_", env_file=".env", extra="ignore")

    store: str = "./ecos-store"  # fsspec URL: a folder, or s3://bucket/prefix
    cache_dir: str | None = None  # built-in domains cache (default ~/.cache/ecos)
    device_dir: str = "./ecos-devices"  # simulated clients' private data ("on the device")
