"""Fail fast, with the URL in the message, when the store cannot be reached."""

from __future__ import annotations

from prefect import task

from tasks import catalog
from tasks.common import STORAGE_RETRIES


@task(name="check-store", **STORAGE_RETRIES)
def check_store(store_url: str) -> str:
    catalog.store(store_url).check()
    return store_url
