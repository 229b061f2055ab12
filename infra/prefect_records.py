"""What infra records on the Prefect server itself, through its REST API. Stdlib only.

- The crash-detection automation: a flow run whose process is gone (its worker's process
  group and then the run's own process killed, a machine rebooted) stays Running forever;
  no worker notices it. Our workers' flow-run processes send `prefect.flow-run.heartbeat`
  every PREFECT_FLOWS_HEARTBEAT_FREQUENCY seconds, and this automation (Prefect's "zombie
  flow run" recipe, run by the server's triggers service) marks a run Crashed when no
  heartbeat nor end of its process arrived for ECOS_CRASH_AFTER_S; the watcher then
  retries it like any crashed round.
- The installation record: a Prefect Variable holding the id of the installation that
  started the server, so a worker or watcher of another installation refuses it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import quote

from infra.config import Config, ServiceError
from infra.processes import Record, _http, _pid_file

CRASH_AUTOMATION = "ecos: mark flow runs whose process is gone Crashed"
INSTALLATION_VARIABLE = "ecos_installation_id"

# Events after which a run's process is gone by design, so silence is no crash: its end,
# a cancellation (the worker kills it) and a pause or suspension (a suspended round has no
# process until it is resumed; its resumed process starts a new watch with its first beat).
_PROCESS_ENDS = ("Completed", "Failed", "TimedOut", "Crashed", "Cancelled", "Cancelling", "Paused", "Suspended")


def crash_automation(cfg: Config) -> dict:
    """The automation as the API takes it (POST /automations/). Each heartbeat opens a
    watch of `within` seconds that the next heartbeat or one of _PROCESS_ENDS closes; a run
    that never beats (heartbeats disabled) is never watched, and a Paused/Suspended one is
    never marked Crashed. The server holds events that arrive out of order, so a Suspended
    event evaluated before the last heartbeat still closes that heartbeat's watch."""
    return {
        "name": CRASH_AUTOMATION,
        "description": f"Marks a flow run Crashed when its process sent no heartbeat (every {cfg.flow_heartbeat_s} s) "
        f"for {cfg.crash_after_s} s; the ecos watcher retries crashed rounds. Kept by infra/prefect_records.py.",
        "enabled": True,
        "trigger": {
            "type": "event",
            "posture": "Proactive",
            "match": {"prefect.resource.id": "prefect.flow-run.*"},
            "after": ["prefect.flow-run.heartbeat"],
            "expect": ["prefect.flow-run.heartbeat", *(f"prefect.flow-run.{s}" for s in _PROCESS_ENDS)],
            "for_each": ["prefect.resource.id"],
            "threshold": 1,
            "within": cfg.crash_after_s,
        },
        "actions": [
            {
                "type": "change-flow-run-state",
                "state": "CRASHED",
                "message": f"No heartbeat from the flow run's process for {cfg.crash_after_s} s: it is gone "
                "(killed, or its machine stopped)",
            }
        ],
    }


def _api(cfg: Config, path: str, method: str = "GET", body: dict | None = None) -> tuple[int, object]:
    status, raw = _http(f"{cfg.prefect_api_url}{path}", method, body, timeout=10.0)
    if status >= 400 and status != 404:
        raise ServiceError(f"Prefect API {method} {path} at {cfg.prefect_api_url}: HTTP {status} {raw[:300]!r}")
    return status, json.loads(raw) if raw.strip() else None


def _same(existing: dict, wanted: dict) -> bool:
    keys = ("description", "enabled")
    trigger_keys = ("posture", "match", "after", "expect", "for_each", "threshold", "within")
    t, w = existing.get("trigger", {}), wanted["trigger"]
    return (
        all(existing.get(k) == wanted[k] for k in keys)
        and all(_norm(t.get(k)) == _norm(w[k]) for k in trigger_keys)
        and [(a.get("type"), a.get("state"), a.get("message")) for a in existing.get("actions", [])]
        == [(a["type"], a["state"], a["message"]) for a in wanted["actions"]]
    )


def _norm(value: object) -> object:
    """The API answers sets as sorted lists and `within` in seconds as a float."""
    if isinstance(value, list):
        return sorted(value)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def ensure_crash_detection(cfg: Config) -> str:
    """Create the automation, or bring it to this config (one of that name). Idempotent."""
    wanted = crash_automation(cfg)
    _, found = _api(cfg, "/automations/filter", "POST", {"automations": {"name": {"any_": [CRASH_AUTOMATION]}}})
    found = found or []
    for extra in found[1:]:  # two `up`s at once may both have created it
        _api(cfg, f"/automations/{extra['id']}", "DELETE")
    if not found:
        _, made = _api(cfg, "/automations/", "POST", wanted)
        return made["id"]
    if not _same(found[0], wanted):
        _api(cfg, f"/automations/{found[0]['id']}", "PUT", wanted)
    return found[0]["id"]


# ------------------------------------------------------------------------ installation
def server_installation(cfg: Config) -> str | None:
    """The installation id the Prefect server records, or None when it records none."""
    status, body = _api(cfg, f"/variables/name/{quote(INSTALLATION_VARIABLE)}")
    return None if status == 404 else str(body["value"])


def claim_server(cfg: Config) -> None:
    """Record this installation as the server's: when it has just started the server."""
    mine = cfg.installation_id()
    path = f"/variables/name/{quote(INSTALLATION_VARIABLE)}"
    if _api(cfg, path, "PATCH", {"value": mine})[0] == 404:
        status, _ = _http(f"{cfg.prefect_api_url}/variables/", "POST", {"name": INSTALLATION_VARIABLE, "value": mine})
        if status == 409:  # created meanwhile (a second `up`): ours is the one to keep
            _api(cfg, path, "PATCH", {"value": mine})
        elif status >= 400:
            raise ServiceError(f"could not record installation {mine} on the Prefect server at {cfg.prefect_api_url}: "
                               f"HTTP {status}")  # fmt: skip


def _server_cwd(cfg: Config) -> Path | None:
    rec = Record.read(_pid_file(cfg, "prefect"))
    try:
        return Path(os.readlink(f"/proc/{rec.pid}/cwd")).resolve() if rec else None
    except OSError:  # not Linux, or not ours to read
        return None


def require_own_server(cfg: Config, name: str) -> None:
    """The Prefect server our pid file names must record this installation's id: a pid
    file copied from another installation's run dir names that one's server."""
    mine, recorded = cfg.installation_id(), server_installation(cfg)
    if recorded == mine:
        return
    if recorded is None and _server_cwd(cfg) in (None, cfg.run_dir):  # started before servers were claimed
        claim_server(cfg)
        return
    owner = f"installation {recorded}" if recorded else f"the installation in {_server_cwd(cfg)}"
    raise ServiceError(f"the {name} would join the Prefect server at {cfg.prefect_url}, which belongs to {owner}, "
                       f"not to this one ({mine}, run dir {cfg.run_dir}; pid file {_pid_file(cfg, 'prefect')} "
                       "is a copy?); stop that server there, or set ECOS_PREFECT_PORT to a free port")  # fmt: skip
