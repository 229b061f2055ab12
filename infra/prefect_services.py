"""The Prefect side of the services: the server, its work pools, the workers and the
watcher (both run under infra/supervise.py). Stdlib only, like infra/services.py.

What the server is given when infra brings it up (see infra/prefect_records.py): the
automation that marks a flow run Crashed when its process stops sending heartbeats, and
the id of the installation that started it."""

from __future__ import annotations

import json
import socket
import subprocess
import uuid
from pathlib import Path

from infra.config import (
    HOST,
    PREFECT_READY_TIMEOUT,
    REPO_ROOT,
    RESULTS_BLOCK,
    WORKER_READY_TIMEOUT,
    Config,
    ServiceError,
    env_for_clients,
)
from infra.prefect_records import ensure_crash_detection
from infra.processes import Record, _base_env, _http, _launch, _service_running, _wait_ready


def _prefect_env(cfg: Config) -> dict[str, str]:
    env = _base_env()
    for k in ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_PROFILE"):
        env.pop(k, None)
    env["PREFECT_HOME"] = str(cfg.prefect_home)
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    env["PREFECT_UI_ENABLED"] = "true"
    env["PREFECT_SERVER_LOG_RETRYABLE_ERRORS"] = "true"  # a 503's cause lands in prefect.log
    return env


def _prefect_healthy(cfg: Config) -> bool:
    try:
        return _http(f"{cfg.prefect_api_url}/health", timeout=2.0, retries=0)[0] == 200
    except OSError:
        return False


def _start_prefect(cfg: Config) -> Record:
    cfg.prefect_home.mkdir(parents=True, exist_ok=True)
    cmd = [cfg.prefect_bin, "server", "start", "--host", HOST, "--port", str(cfg.prefect_port)]
    env = {**_prefect_env(cfg), "PREFECT_UI_API_URL": cfg.prefect_api_url}  # else the UI calls :4200
    env["PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED"] = "true"  # runs the automation that crashes silent runs
    rec = _launch(cfg, "prefect", cmd, env, cfg.prefect_url, cfg.run_dir)
    rec.ready_s = _wait_ready(
        rec, lambda: _prefect_healthy(cfg), PREFECT_READY_TIMEOUT, f"Prefect server on port {cfg.prefect_port}"
    )
    return rec


def ensure_pools(cfg: Config) -> None:
    """Create (or update: --overwrite) the process work pools. Idempotent."""
    env = _prefect_env(cfg)
    env["PREFECT_API_URL"] = cfg.prefect_api_url
    procs = {
        pool: subprocess.Popen(
            [cfg.prefect_bin, "--no-prompt", "work-pool", "create", pool, "--type", "process", "--overwrite"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=REPO_ROOT,
        )
        for pool in dict.fromkeys((cfg.work_pool, cfg.gpu_work_pool))
    }
    for pool, p in procs.items():
        out, _ = p.communicate(timeout=120)
        if p.returncode != 0 and _http(f"{cfg.prefect_api_url}/work_pools/{pool}")[0] != 200:
            raise ServiceError(f"could not create work pool {pool!r} (exit {p.returncode}):\n{out[-3000:]}")


def workers(cfg: Config, pool: str) -> list[dict]:
    """The workers the server knows for a pool (name, status, last heartbeat)."""
    status, body = _http(f"{cfg.prefect_api_url}/work_pools/{pool}/workers/filter", "POST", {})
    if status != 200:
        raise ServiceError(f"listing workers of pool {pool!r}: HTTP {status} {body[:300]!r}")
    return json.loads(body)


def _supervised(cfg: Config, name: str, cmd: list[str]) -> list[str]:
    """cmd under infra/supervise.py: restarted when it dies; its state file for status."""
    state = cfg.supervise_state(name)
    state.unlink(missing_ok=True)  # an earlier start's restarts are not this one's
    return [_python(cfg), "-m", "infra.supervise", "--state", str(state), "--", *cmd]


def _python(cfg: Config) -> str:
    return str(Path(cfg.prefect_bin).parent / "python")


def _start_worker(cfg: Config, name: str) -> Record:
    pool = cfg.pool_for(name)
    if _http(f"{cfg.prefect_api_url}/work_pools/{pool}")[0] != 200:
        ensure_pools(cfg)
    ensure_crash_detection(cfg)  # also for a server started before this automation existed
    env = _prefect_env(cfg)
    if _service_running(cfg, "s3"):  # flow runs executed by this worker use the same store
        env.update(env_for_clients(cfg))
    env["PREFECT_API_URL"] = cfg.prefect_api_url
    env["PREFECT_WORKER_QUERY_SECONDS"] = cfg.worker_query_seconds
    # Inherited by the flow-run processes: their heartbeats drive ensure_crash_detection's automation.
    env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] = str(cfg.flow_heartbeat_s)
    env["ECOS_REPO_DIR"] = str(REPO_ROOT)
    if _service_running(cfg, "s3"):  # results and task caches in the bucket (block made by infra/deploy.py)
        env.setdefault("PREFECT_RESULTS_PERSIST_BY_DEFAULT", "true")
        env.setdefault("PREFECT_DEFAULT_RESULT_STORAGE_BLOCK", f"remote-file-system/{RESULTS_BLOCK}")
    # One name for every restart under the supervisor: the server lists one worker, ONLINE again.
    worker_name = f"{pool}-{socket.gethostname()}-{uuid.uuid4().hex[:6]}"
    cmd = [
        cfg.prefect_bin,
        "--no-prompt",
        "worker",
        "start",
        "--pool",
        pool,
        "--type",
        "process",
        "--name",
        worker_name,
    ]
    # Flow runs execute in the worker's working directory: the repo root, so flows/ imports.
    url = f"{cfg.prefect_api_url} pool {pool} worker {worker_name}"
    rec = _launch(cfg, name, _supervised(cfg, name, cmd), env, url, REPO_ROOT)
    rec.ready_s = _wait_ready(
        rec,
        lambda: any(w.get("name") == worker_name for w in workers(cfg, pool)),
        WORKER_READY_TIMEOUT,
        f"worker for pool {pool!r}",
    )
    return rec


def watcher_heartbeat(cfg: Config) -> Path:
    return cfg.run_dir / "watcher.heartbeat.json"


def _start_watcher(cfg: Config) -> Record:
    """`ecos watch` under infra/supervise.py (restarted if it dies): judges uploads and
    resumes suspended rounds. Ready when this start's watcher has written its heartbeat."""
    env = _prefect_env(cfg)
    env.update(env_for_clients(cfg))
    env["PREFECT_API_URL"] = cfg.prefect_api_url
    beat = watcher_heartbeat(cfg)
    beat.unlink(missing_ok=True)  # an earlier start's heartbeat must not count as this one's
    cmd = _supervised(cfg, "watcher", [_python(cfg), "-m", "ecos_cli", "watch", "--interval", "2", "--heartbeat", str(beat)])
    rec = _launch(cfg, "watcher", cmd, env, f"{cfg.prefect_api_url} (resumes suspended rounds)", REPO_ROOT)

    def swept() -> bool:
        try:
            return json.loads(beat.read_text()).get("ppid") == rec.pid
        except (OSError, ValueError):
            return False

    rec.ready_s = _wait_ready(rec, swept, WORKER_READY_TIMEOUT, "watcher")
    return rec
