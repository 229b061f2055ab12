"""Shared task options: retries for storage I/O, and a Prefect progress artifact."""

from __future__ import annotations

from typing import Callable

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.client.schemas.objects import State, TaskRun

from ecos_core.store import StoreError

RETRYABLE = (StoreError, ConnectionError, TimeoutError)


def retry_on_storage_errors(_task: object, _run: TaskRun, state: State) -> bool:
    """Retry when the store was unreachable; a bad input fails at once."""
    try:
        state.result()
    except RETRYABLE:
        return True
    except Exception:  # noqa: BLE001 - anything else is not transient
        return False
    return False


STORAGE_RETRIES = dict(retries=3, retry_delay_seconds=[1, 2, 4], retry_condition_fn=retry_on_storage_errors)


def progress_artifact(key: str, description: str) -> Callable[[int, int], None]:
    """A callback(done, total) that moves a Prefect progress artifact (in %), throttled."""
    artifact_id = create_progress_artifact(0.0, key=key, description=description)
    last = [0.0]

    def update(done: int, total: int) -> None:
        pct = 100.0 * done / max(total, 1)
        if pct - last[0] >= 5 or done == total:
            update_progress_artifact(artifact_id, pct)
            last[0] = pct

    return update
