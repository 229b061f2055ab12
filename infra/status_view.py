"""What `ecos infra status` adds to a supervised service's line: its restarts. Stdlib only,
like infra/services.py."""

from __future__ import annotations

import json

from infra.config import Config


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
