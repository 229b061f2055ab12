"""A stand-in `ecos-round` for the fault run's process faults: it only sleeps, so a real
worker can run it in seconds, and being an `ecos-round` run the watcher retries it when
it crashes, exactly as it retries a real round."""

from __future__ import annotations

import os
import time
from pathlib import Path

from prefect import flow


@flow(name="ecos-round", flow_run_name="stand-in-{label}")
def stand_in_round(label: str, pid_file: str, flag: str) -> int:
    """Records its pid and process group (the run has a session of its own), then runs
    while `flag` exists."""
    Path(pid_file).write_text(f"{os.getpid()} {os.getpgid(0)}")
    while Path(flag).exists():
        time.sleep(0.5)
    return os.getpid()
