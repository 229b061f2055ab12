"""The fault run's process faults, against a real supervised process worker: the worker
SIGKILLed with nobody to restart it by hand (its supervisor does), then a round's
flow-run process killed after its worker. Nothing is left Running without a process:
its heartbeats stop, the automation infra keeps on the Prefect server marks it Crashed,
the watcher schedules it again and the restarted worker runs it to completion."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
HEARTBEAT_S, CRASH_AFTER_S = 30, 40  # Prefect's minimum heartbeat; the window of the fault run's server


def _api(cfg, path: str, body: dict | None = None):  # noqa: ANN001, ANN202
    from infra import services

    status, raw = services._http(f"{cfg.prefect_api_url}{path}", "POST" if body is not None else "GET", body)
    assert status < 300, (path, status, raw[:300])
    return json.loads(raw) if raw else None


def _wait(cfg, run_id: str, names: set[str], timeout: float) -> float:  # noqa: ANN001
    start = time.monotonic()
    while (state := _api(cfg, f"/flow_runs/{run_id}")["state"])["name"] not in names:
        ended = state["type"] in ("COMPLETED", "FAILED", "CANCELLED") and state["name"] != "Crashed"
        assert not ended, f"run {run_id} ended {state['name']}: {state.get('message')}"
        assert time.monotonic() - start < timeout, f"run {run_id} is {state['name']} after {timeout:.0f} s, not {names}"
        time.sleep(1.0)
    return time.monotonic() - start


def _stand_in(cfg, work: Path) -> tuple[str, Path, Path]:  # noqa: ANN001
    """A flow run of the stand-in round on the worker's pool; (run id, pid file, flag)."""
    flow_id = _api(cfg, "/flows/", {"name": "ecos-round"})["id"]
    dep = _api(cfg, "/deployments/", {
        "name": "faults-stand-in", "flow_id": flow_id, "entrypoint": "benchmarks/fault_flows.py:stand_in_round",
        "work_pool_name": cfg.work_pool,
        "pull_steps": [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}]})  # fmt: skip
    label = uuid.uuid4().hex[:6]
    pid_file, flag = work / f"stand-in-{label}.pid", work / f"stand-in-{label}.run"
    flag.touch()
    run = _api(cfg, f"/deployments/{dep['id']}/create_flow_run",
               {"parameters": {"label": label, "pid_file": str(pid_file), "flag": str(flag)}})  # fmt: skip
    return run["id"], pid_file, flag


def _heartbeat_seen(cfg, run_id: str, timeout: float = 2.0 * HEARTBEAT_S) -> None:  # noqa: ANN001
    body = {"filter": {"event": {"name": ["prefect.flow-run.heartbeat"]},
                       "resource": {"id": [f"prefect.flow-run.{run_id}"]}}, "limit": 5}  # fmt: skip
    start = time.monotonic()
    while not _api(cfg, "/events/filter", body)["events"]:
        assert time.monotonic() - start < timeout, f"no heartbeat from run {run_id} in {timeout:.0f} s"
        time.sleep(1.0)


def _kill_group(pid_file: Path) -> None:
    try:
        os.killpg(int(pid_file.read_text().split()[1]), signal.SIGKILL)
    except (OSError, ValueError, IndexError):
        pass  # gone already, or never started


def _worker_online(cfg) -> bool:  # noqa: ANN001
    return any(w.get("status") == "ONLINE" for w in _api(cfg, f"/work_pools/{cfg.work_pool}/workers/filter", {}))


def run_process_faults(live: SimpleNamespace, counts) -> dict:  # noqa: ANN001
    """Both process faults once; raises AssertionError when a run is left without a process."""
    from infra import services

    from infra.deploy import results_block

    cfg = live.cfg
    results_block(os.environ)  # a worker beside S3 persists results there, as deployed (no credentials in it)
    services.start("worker", cfg)
    work = Path(cfg.run_dir) / "stand-in"
    work.mkdir(exist_ok=True)
    run_id, pid_file, flag = _stand_in(cfg, work)
    try:
        _wait(cfg, run_id, {"Running"}, 180)
        _heartbeat_seen(cfg, run_id)
        first_pid, group = (int(x) for x in pid_file.read_text().split())
        worker = json.loads(cfg.supervise_state("worker").read_text())["child"]
        os.kill(worker, signal.SIGKILL)  # the worker: nobody runs `ecos infra up worker` afterwards
        os.killpg(group, signal.SIGKILL)  # then the round's own flow-run process group
        counts.update(["worker-kill", "flow-process-kill"])
        # Crashed, then at once AwaitingRetry (the watcher): either shows the run left Running
        crashed_s = _wait(cfg, run_id, {"Crashed", "AwaitingRetry", "Late", "Pending"}, 2 * CRASH_AFTER_S + 45)
        start = time.monotonic()  # the watcher schedules it again; the supervised worker (back by now) runs it
        while not (pid_file.exists() and int(pid_file.read_text().split()[0]) != first_pid):
            assert time.monotonic() - start < 180, f"crashed run {run_id} was not run again"
            time.sleep(1.0)
        assert _worker_online(cfg), "the killed worker is not back ONLINE"
        flag.unlink()
        _wait(cfg, run_id, {"Completed"}, 60)
        pid_file.unlink()  # done: nothing of it is left to kill
        running = _api(cfg, "/flow_runs/filter", {"flow_runs": {"state": {"type": {"any_": ["RUNNING"]}}}})
        assert not running, f"runs left Running: {[r['name'] for r in running]}"
        restarts = json.loads(cfg.supervise_state("worker").read_text()).get("restarts")
        counts["crashed after its processes were killed (s)"] = round(crashed_s)
        counts["rerun after the crash (s)"] = round(time.monotonic() - start)
    finally:  # a failure above must not leave the stand-in looping: its flag goes, its group is killed
        flag.unlink(missing_ok=True)
        _kill_group(pid_file)
    return {"run_id": run_id, "crashed_s": crashed_s, "worker_restarts": restarts}
