"""What `ecos infra status` adds to each service's line: a supervisor's restarts, and the
watcher's errors that still matter. Stdlib only, like infra/services.py."""

from __future__ import annotations

import json
import re

from infra.config import Config
from infra.processes import _http

# The watcher names a round's error "flow run <id> (<name>): ..." (flows/watcher.py).
_RUN_ERROR = re.compile(r"\bflow run ([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\b")
_TENDED = {"PAUSED", "CRASHED"}  # the runs the watcher tends: suspended rounds, crashed ones to retry


def _run_state(cfg: Config, run_id: str) -> str | None:
    """The run's state type; "" when the server does not know the run; None when unknown."""
    try:
        status, body = _http(f"{cfg.prefect_api_url}/flow_runs/{run_id}", timeout=2.0, retries=1)
    except OSError:
        return None
    if status == 404:
        return ""
    try:
        return (json.loads(body).get("state") or {}).get("type", "") if status == 200 else None
    except ValueError:
        return None


def current_errors(cfg: Config, errors: list[str]) -> list[str]:
    """The watcher keeps a round's last error until it handles that round again, which it
    never does once the round has left the states it tends (failed, completed, retried,
    deleted): such errors are history, not shown. Kept when the server cannot say."""
    kept = []
    for err in errors:
        match = _RUN_ERROR.search(err)
        state = _run_state(cfg, match.group(1)) if match else None
        if state is None or state in _TENDED:
            kept.append(err)
    return kept


def supervise_line(cfg: Config, name: str) -> str:
    """"supervised: N restarts (last: ...)" from infra/supervise.py's state file."""
    try:
        state = json.loads(cfg.supervise_state(name).read_text())
    except (OSError, ValueError):
        return "supervised: no state file yet"
    last = state.get("last_exit")
    if not state.get("restarts") or not last:
        return f"supervised (pid {state.get('pid')}): no restarts"
    return (f"supervised (pid {state.get('pid')}): {state['restarts']} restart(s); last: pid {last['pid']} exited with "
            f"{last['code']} at {last['at']} after {last['lived_s']} s")  # fmt: skip
