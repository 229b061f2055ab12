"""A flow run whose process is gone becomes Crashed (issue 16, item 3), against the REAL
Prefect server (its triggers service) and a supervised process worker, started by
infra.services in a temporary run dir on free ports and stopped by PID at the end.

Killing the worker's process group and then the flow run's own process group (it runs
in a session of its own) used to leave the run Running for good: nothing watched it.
Now its heartbeats stop, and the automation infra keeps on the server marks it Crashed
(which the watcher retries). A suspended run has no process by design and must stay
Suspended; a live run keeps its heartbeats and stays Running.

The heartbeat is Prefect's minimum (30 s) and the window 40 s here, so the test waits
at most 2 × 40 s + slack after the kill; ~1.5-2 min in all on a 2-core machine.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from infra import services  # noqa: E402
from infra.processes import free_port as _free_port  # noqa: E402
from infra.prefect_records import CRASH_AUTOMATION, crash_automation  # noqa: E402

pytestmark = pytest.mark.slow

HEARTBEAT_S, CRASH_AFTER_S = 30, 40

FLOWS = '''
import os, time
from pathlib import Path
from prefect import flow
from prefect.flow_runs import suspend_flow_run


def _pids(pid_file):
    Path(pid_file).write_text(f"{os.getpid()} {os.getpgid(0)}")


@flow(name="zombie-sleeper")
def sleeper(pid_file: str, seconds: float = 900):
    _pids(pid_file)
    time.sleep(seconds)


@flow(name="zombie-suspender")
def suspender(pid_file: str):
    _pids(pid_file)
    time.sleep(3)  # its first heartbeat went out while it was Running
    suspend_flow_run(timeout=900)
'''


# ---------------------------------------------------------------- config (no services)
def test_the_default_window_outlasts_prefects_own_heartbeat(tmp_path: Path) -> None:
    """Flow runs that infra did not start beat every 180 s (Prefect's default): the
    default window must not take them for dead ones."""
    from prefect.settings.models.flows import FlowsSettings

    cfg = services.Config.load({"ECOS_INFRA_DIR": str(tmp_path)}, dotenv=tmp_path / "none")
    prefect_default = FlowsSettings.model_fields["heartbeat_frequency"].default
    assert cfg.flow_heartbeat_s == 30 and cfg.crash_after_s >= prefect_default + 60
    trigger = crash_automation(cfg)["trigger"]
    assert trigger["after"] == ["prefect.flow-run.heartbeat"] and trigger["within"] == cfg.crash_after_s
    assert {"prefect.flow-run.Suspended", "prefect.flow-run.Paused", "prefect.flow-run.Completed"} <= set(trigger["expect"])


@pytest.mark.parametrize("env", [{"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "10"}, {"ECOS_CRASH_AFTER_S": "35"}])
def test_a_window_that_would_crash_live_runs_is_refused(tmp_path: Path, env: dict) -> None:
    with pytest.raises(services.ServiceError) as err:
        services.Config.load({"ECOS_INFRA_DIR": str(tmp_path), **env}, dotenv=tmp_path / "none")
    flag = "=".join(next(iter(env.items())))
    assert str(err.value).startswith(flag) and "\n" not in str(err.value)



@pytest.fixture(scope="module")
def zombie(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ecos-zombie")
    flows_dir = tmp_path_factory.mktemp("zombie-flows")
    (flows_dir / "zombie_flows.py").write_text(FLOWS)
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("ECOS_", "PREFECT_API_"))}
    environ.update(ECOS_INFRA_DIR=str(run_dir), ECOS_S3_PORT=str(_free_port()), ECOS_PREFECT_PORT=str(_free_port()),
                   ECOS_WORK_POOL="zombie-cpu", ECOS_GPU_WORK_POOL="zombie-gpu",
                   PREFECT_FLOWS_HEARTBEAT_FREQUENCY=str(HEARTBEAT_S), ECOS_CRASH_AFTER_S=str(CRASH_AFTER_S))  # fmt: skip
    cfg = services.Config.load(environ, dotenv=run_dir / "no.env")
    pids: list[Path] = []
    try:
        for name in ("prefect", "worker"):
            services.start(name, cfg)
        yield cfg, flows_dir, pids
    finally:
        for f in pids:  # flow-run processes live in sessions of their own: stop them by PID
            try:
                os.killpg(int(f.read_text().split()[1]), signal.SIGKILL)
            except (OSError, ValueError, IndexError):
                pass
        services.down(None, cfg)


def _api(cfg, path: str, body: dict | None = None):
    status, raw = services._http(f"{cfg.prefect_api_url}{path}", "POST" if body is not None else "GET", body)
    assert status < 300, (path, status, raw[:300])
    return json.loads(raw) if raw else None


def _deploy(cfg, flows_dir: Path, flow: str, func: str) -> str:
    flow_id = _api(cfg, "/flows/", {"name": flow})["id"]
    dep = _api(cfg, "/deployments/", {
        "name": "zombie", "flow_id": flow_id, "entrypoint": f"zombie_flows.py:{func}", "work_pool_name": cfg.work_pool,
        "pull_steps": [{"prefect.deployments.steps.set_working_directory": {"directory": str(flows_dir)}}]})  # fmt: skip
    return dep["id"]


def _start(cfg, flows_dir: Path, pids: list[Path], flow: str, func: str) -> tuple[str, Path]:
    pid_file = flows_dir / f"{func}-{len(pids)}.pid"
    pids.append(pid_file)
    run = _api(cfg, f"/deployments/{_deploy(cfg, flows_dir, flow, func)}/create_flow_run",
               {"parameters": {"pid_file": str(pid_file)}})  # fmt: skip
    return run["id"], pid_file


def _state(cfg, run_id: str) -> dict:
    return _api(cfg, f"/flow_runs/{run_id}")["state"]


def _wait(cfg, run_id: str, name: str, timeout: float) -> float:
    t0 = time.monotonic()
    while (state := _state(cfg, run_id))["name"] != name:
        assert time.monotonic() - t0 < timeout, f"run {run_id} is {state['name']} after {timeout:.0f} s, not {name}"
        time.sleep(1.0)
    return time.monotonic() - t0


def _heartbeats(cfg, run_id: str) -> int:
    found = _api(cfg, "/events/filter", {"filter": {"event": {"name": ["prefect.flow-run.heartbeat"]},
                                                    "resource": {"id": [f"prefect.flow-run.{run_id}"]}}, "limit": 50})  # fmt: skip
    return len(found["events"])


def _wait_heartbeat(cfg, run_id: str, timeout: float = 60.0) -> None:
    t0 = time.monotonic()
    while not _heartbeats(cfg, run_id):
        assert time.monotonic() - t0 < timeout, f"no heartbeat from run {run_id} within {timeout:.0f} s"
        time.sleep(1.0)


def test_a_run_whose_processes_are_killed_becomes_crashed_and_a_suspended_one_does_not(zombie):
    cfg, flows_dir, pids = zombie
    suspended, _ = _start(cfg, flows_dir, pids, "zombie-suspender", "suspender")
    _wait(cfg, suspended, "Suspended", 120)
    _wait_heartbeat(cfg, suspended)  # its watch began while it was Running (events are stored in batches)
    doomed, doomed_pids = _start(cfg, flows_dir, pids, "zombie-sleeper", "sleeper")
    alive, _ = _start(cfg, flows_dir, pids, "zombie-sleeper", "sleeper")
    for run in (doomed, alive):
        _wait(cfg, run, "Running", 120)
        _wait_heartbeat(cfg, run)

    worker = services.Record.read(services._pid_file(cfg, "worker"))
    os.killpg(worker.pid, signal.SIGKILL)  # the worker and its supervisor: nobody restarts them
    os.killpg(int(doomed_pids.read_text().split()[1]), signal.SIGKILL)  # then the run's own process group
    took = _wait(cfg, doomed, "Crashed", 2 * CRASH_AFTER_S + 45)
    print(f"\nCrashed {took:.0f} s after its processes were killed (heartbeat {HEARTBEAT_S} s, "
          f"window {CRASH_AFTER_S} s)", file=sys.stderr)  # fmt: skip
    assert "No heartbeat" in (_state(cfg, doomed)["message"] or "")

    time.sleep(5)  # the same evaluation saw the suspended run's window: it must not act on it
    assert _state(cfg, suspended)["name"] == "Suspended"
    assert _state(cfg, alive)["name"] == "Running"  # its process still beats, without a worker


def test_the_automation_is_kept_once_and_follows_the_config(zombie):
    cfg, _, _ = zombie
    first = services.ensure_crash_detection(cfg)
    again = services.ensure_crash_detection(cfg)
    found = _api(cfg, "/automations/filter", {"automations": {"name": {"any_": [CRASH_AUTOMATION]}}})
    assert first == again and [a["id"] for a in found] == [first]
    assert found[0]["trigger"]["within"] == CRASH_AFTER_S
    wider = services.Config.load({**cfg.env, "ECOS_CRASH_AFTER_S": "90"}, dotenv=cfg.run_dir / "no.env")
    try:
        assert services.ensure_crash_detection(wider) == first
        assert _api(cfg, f"/automations/{first}")["trigger"]["within"] == 90
    finally:
        services.ensure_crash_detection(cfg)
