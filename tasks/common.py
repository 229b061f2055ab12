"""Shared task options: retries for storage I/O, and a Prefect progress artifact."""

from __future__ import annotations

import logging
from typing import Callable

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.client.schemas.objects import State, TaskRun

from ecos_core.storage.store import StoreError

RETRYABLE = (StoreError, ConnectionError, TimeoutError)
USER_ERRORS = (ValueError, FileNotFoundError, KeyError)  # bad input: the message says it all


class _NoTracebackForUserErrors(logging.Filter):
    """A bad row or a missing file is the user's input, not our bug: Prefect still logs
    the error, as one line, and the CLI prints it once; a real bug keeps its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], USER_ERRORS):
            record.exc_info, record.exc_text = None, None
        return True


for _name in ("prefect.flow_runs", "prefect.task_runs"):  # in the flow's process and in every Dask worker
    logging.getLogger(_name).addFilter(_NoTracebackForUserErrors())


def retry_on_storage_errors(_task: object, _run: TaskRun, state: State) -> bool:
    """Retry when the store was unreachable; a bad input fails at once."""
    try:
        state.result()
    except RETRYABLE:
        return True
    except Exception:  # noqa: BLE001 - anything else is not transient
        return False
    return False


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """The run's logger (it reaches the UI); outside a run (a task's .fn called directly) a plain one."""
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("ecos")


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
