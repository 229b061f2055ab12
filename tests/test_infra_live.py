"""infra's guards against the REAL services (rclone S3, Prefect server, supervised worker
and watcher), started once for the module in a temporary run dir on free ports and
stopped by PID at the end (issue 16, items 6, 8 and 10):

- a worker process that dies comes back by itself, ONLINE for the server, and status
  counts the restart;
- a second installation whose run dir holds copies of the first one's pid files never
  uses, joins or stops the first one's services, and says so in one line naming both ids;
- `status` shows only the watcher errors of rounds the watcher still tends.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from infra import services  # noqa: E402
from infra.processes import free_port as _free_port  # noqa: E402
from infra.processes import _pid_alive  # noqa: E402

pytestmark = pytest.mark.slow



def _environ(run_dir: Path, **ports: str) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("ECOS_", "PREFECT_API_"))}
    environ.update(ECOS_INFRA_DIR=str(run_dir), ECOS_WORK_POOL="live-cpu", ECOS_GPU_WORK_POOL="live-gpu", **ports)
    return environ


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ecos-live")
    environ = _environ(run_dir, ECOS_S3_PORT=str(_free_port()), ECOS_PREFECT_PORT=str(_free_port()))
    cfg = services.Config.load(environ, dotenv=run_dir / "no.env")
    try:
        for name in ("s3", "prefect", "worker", "watcher"):
            services.start(name, cfg)
        yield cfg
    finally:
        services.down(None, cfg)


def _api(cfg, path: str, body: dict | None = None):
    status, raw = services._http(f"{cfg.prefect_api_url}{path}", "POST" if body is not None else "GET", body)
    assert status < 300, (path, status, raw[:300])
    return json.loads(raw) if raw else None


def _until(what: str, check, timeout: float):
    t0 = time.monotonic()
    while not (found := check()):
        assert time.monotonic() - t0 < timeout, f"{what}: not within {timeout:.0f} s"
        time.sleep(0.5)
    return found


def _supervised(cfg) -> dict:
    try:
        return json.loads(cfg.supervise_state("worker").read_text())
    except (OSError, ValueError):
        return {}


# ---------------------------------------------------------------- item 6: the worker is supervised
def test_a_killed_worker_comes_back_online_by_itself(live):
    rec = services.Record.read(services._pid_file(live, "worker"))
    name = rec.url.rsplit(" ", 1)[1]
    child = _supervised(live)["child"]
    assert child not in (None, rec.pid) and _pid_alive(child)
    killed_at = datetime.now(timezone.utc)
    os.kill(child, signal.SIGKILL)  # the worker dies (OOM, kill -9); not its supervisor

    state = _until("a new worker process", lambda: (s := _supervised(live)).get("child") not in (None, child) and s, 30)
    assert state["restarts"] == 1 and state["last_exit"]["code"] == -signal.SIGKILL and rec.alive()

    def online_again():
        mine = [w for w in services.workers(live, live.work_pool) if w["name"] == name]
        beat = mine and datetime.fromisoformat(mine[0]["last_heartbeat_time"].replace("Z", "+00:00"))
        return mine and mine[0]["status"] == "ONLINE" and beat > killed_at

    _until(f"worker {name} ONLINE again", online_again, 60)
    out = io.StringIO()
    st = services.status(live, out=out)
    assert st["worker"]["state"] == "running" and "1 restart(s)" in st["worker"]["supervisor"]
    assert f"pid {child} exited with -9" in out.getvalue()


def test_flow_runs_of_workers_and_clients_send_heartbeats(live):
    """What the crash-detection automation relies on (tests/test_infra_zombie.py)."""
    child = _supervised(live)["child"]
    environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
    assert f"PREFECT_FLOWS_HEARTBEAT_FREQUENCY={live.flow_heartbeat_s}".encode() in environ
    assert f"export PREFECT_FLOWS_HEARTBEAT_FREQUENCY='{live.flow_heartbeat_s}'" in services.env_lines(live)


# ---------------------------------------------------------------- item 8: a copied run dir
def _second(live, tmp_path: Path, copy: str) -> services.Config:
    second = tmp_path / "second"
    if copy == "run dir":  # everything but the id: pid files, credentials, Prefect home, S3 data
        shutil.copytree(live.run_dir, second, ignore=shutil.ignore_patterns("installation-id", ".*"))
    else:
        second.mkdir()
        shutil.copy(services._pid_file(live, "prefect"), second / "prefect.pid")
    environ = _environ(second, ECOS_S3_PORT=str(live.s3_port), ECOS_PREFECT_PORT=str(live.prefect_port))
    return services.Config.load(environ, dotenv=tmp_path / "no.env")


@pytest.mark.parametrize("copy", ["prefect.pid", "run dir"])
def test_a_copied_pid_file_never_makes_another_installations_services_ours(live, tmp_path, copy):
    """Today a second installation's worker joined the first one's pool as ONLINE."""
    second = _second(live, tmp_path, copy)
    workers = {w["name"] for w in services.workers(live, live.work_pool)}
    first_id = live.installation_id()
    for name in ("worker", "watcher", "prefect"):
        with pytest.raises(services.ServiceError) as err:
            services.start(name, second)
        message = str(err.value)
        assert "\n" not in message and first_id in message and second.installation_id() in message, message
    assert {w["name"] for w in services.workers(live, live.work_pool)} == workers
    services.down(None, second)  # stops nothing of the first installation's
    assert all(services._service_running(live, n) for n in ("s3", "prefect", "worker", "watcher"))
    assert services.status(second, out=io.StringIO())["prefect"]["state"] in ("foreign", "stopped")


def test_a_pid_file_forged_with_our_id_is_refused_by_the_servers_record(live, tmp_path):
    """The pid file is only a file: the server's own record says whose it is."""
    second = _second(live, tmp_path, "prefect.pid")
    pid_file = services._pid_file(second, "prefect")
    forged = {**json.loads(pid_file.read_text()), "installation": second.installation_id()}
    pid_file.write_text(json.dumps(forged))
    with pytest.raises(services.ServiceError) as err:
        services.start("worker", second)
    message = str(err.value)
    assert "\n" not in message and live.installation_id() in message and second.installation_id() in message
    assert services.server_installation(live) == live.installation_id()


# ---------------------------------------------------------------- item 10: status errors
def test_status_shows_the_errors_of_rounds_still_waiting_only(live):
    """A round the watcher cannot read is reported while it is suspended, and not after it
    has failed (today its error stayed in `ecos infra status` for good)."""
    flow = _api(live, "/flows/", {"name": "ecos-round"})
    run = _api(live, "/flow_runs/", {"flow_id": flow["id"], "name": "round-broken", "parameters": {"cfg": "not a config"}})
    _api(live, f"/flow_runs/{run['id']}/set_state", {"state": {"type": "PAUSED", "name": "Suspended"}, "force": True})

    def shown() -> list[str]:
        return [e for e in services.status(live, out=io.StringIO())["watcher"].get("errors", []) if run["id"] in e]

    _until("the broken round's error in status", shown, 30)
    _api(live, f"/flow_runs/{run['id']}/set_state", {"state": {"type": "FAILED", "message": "given up"}, "force": True})
    beat = services.watcher_heartbeat(live)
    sweeps = json.loads(beat.read_text())["sweeps"]
    _until("two more sweeps", lambda: json.loads(beat.read_text())["sweeps"] >= sweeps + 2, 30)
    assert shown() == []


# ---------------------------------------------------------------- last: stop by PID
def test_down_stops_each_supervisor_and_its_child(live):
    recs = {n: services.Record.read(services._pid_file(live, n)) for n in ("worker", "watcher")}
    children = {n: json.loads(live.supervise_state(n).read_text())["child"] for n in recs}
    services.down(["watcher", "worker"], live)
    for n, rec in recs.items():
        assert not rec.alive() and not _pid_alive(children[n]), n
        assert services._group_members(rec.pid) == [], n
