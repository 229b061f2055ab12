"""Start and stop the real services on this machine, by PID, on 127.0.0.1 only.

- ``s3``: ``rclone serve s3`` over a local folder (an S3-compatible server that checks
  SigV4 signatures); buckets are the folder's top-level directories.
- ``prefect``: ``prefect server start`` with its own PREFECT_HOME (own SQLite DB).
- ``worker``: a process work pool (``ECOS_WORK_POOL``) and ``prefect worker start``,
  under infra/supervise.py (restarted when it dies).
- ``gpu-worker``: a worker for ``ECOS_GPU_WORK_POOL`` (the pool is always created, the
  worker only when asked for by name).
- ``watcher``: ``ecos watch`` under infra/supervise.py.

State (pid files, logs, Prefect home, S3 data, generated credentials) lives in the run
dir: ``ECOS_INFRA_DIR`` or ``infra/run`` (gitignored). Config comes only from the
environment or a ``.env`` file in the repo root (the environment wins).

CLI (from the repo root)::

    python -m infra.services up [s3|prefect|worker|gpu-worker|watcher|all ...]
    python -m infra.services down [...]
    python -m infra.services status
    eval "$(python -m infra.services env)"

Stdlib only: this module must import without the project's dependencies.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

from infra.config import (  # noqa: F401 (re-exported: the CLI and tests use services.X)
    Config,
    DEFAULT_UP,
    HOST,
    INFRA_DIR,
    PREFECT_READY_TIMEOUT,
    REPO_ROOT,
    RESULTS_BLOCK,
    S3_READY_TIMEOUT,
    SERVICES,
    STOP_TIMEOUT,
    ServiceError,
    WORKER_READY_TIMEOUT,
    _validate_credentials,
    env_for_clients,
    read_dotenv,
)
from infra.processes import (  # noqa: F401
    Record,
    _group_members,
    _http,
    _launch,
    _log_file,
    _pid_file,
    _port_open,
    _proc_start_time,
    _base_env,
    _reap,
    _service_running,
    _wait_ready,
    log_tail,
)

from infra.prefect_records import claim_server, ensure_crash_detection, require_own_server, server_installation  # noqa: F401
from infra.status_view import supervise_line
from infra.prefect_services import (  # noqa: F401 (re-exported: the CLI and tests use services.X)
    _prefect_env,
    _prefect_healthy,
    _start_prefect,
    _start_watcher,
    _start_worker,
    ensure_pools,
    watcher_heartbeat,
    workers,
)


# ------------------------------------------------------------------------ services
def _ensure_rclone(cfg: Config) -> None:
    if cfg.rclone_bin.exists():
        return
    script = INFRA_DIR / "get_rclone.sh"
    print(f"infra: {cfg.rclone_bin} missing; running {script}", file=sys.stderr)
    env = dict(os.environ, PIP=f"{sys.executable} -m pip")
    res = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, check=False)
    if res.returncode != 0 or not cfg.rclone_bin.exists():
        raise ServiceError(f"could not fetch rclone with {script} (exit {res.returncode}):\n{res.stderr[-3000:]}")


def _start_s3(cfg: Config) -> Record:
    _ensure_rclone(cfg)
    key, secret = cfg.credentials(create=True)
    _validate_credentials(key, secret)
    (cfg.s3_data_dir / cfg.s3_bucket).mkdir(parents=True, exist_ok=True)
    rclone_conf = cfg.run_dir / "rclone.conf"  # isolate from a user's ~/.config/rclone
    rclone_conf.touch()
    env = _base_env()
    # The credentials go through the environment, not argv, so `ps` does not show them.
    env["RCLONE_AUTH_KEY"] = f'"{key},{secret}"'
    cmd = [
        str(cfg.rclone_bin),
        "serve",
        "s3",
        str(cfg.s3_data_dir),
        "--addr",
        f"{HOST}:{cfg.s3_port}",
        "--config",
        str(rclone_conf),
        "-v",
    ]
    rec = _launch(cfg, "s3", cmd, env, cfg.s3_url, cfg.run_dir)
    # Ready once the port answers HTTP at all (an unsigned request gets a 4xx).
    rec.ready_s = _wait_ready(
        rec,
        lambda: _http(cfg.s3_url + "/", timeout=1.0, retries=0)[0] > 0,
        S3_READY_TIMEOUT,
        f"S3 server (rclone) on port {cfg.s3_port}",
    )
    return rec


_STARTERS: dict[str, Callable[[Config], Record]] = {
    "s3": _start_s3,
    "prefect": _start_prefect,
    "worker": lambda cfg: _start_worker(cfg, "worker"),
    "gpu-worker": lambda cfg: _start_worker(cfg, "gpu-worker"),
    "watcher": _start_watcher,
}
_PORT = {"s3": lambda c: c.s3_port, "prefect": lambda c: c.prefect_port}


def _expand(names: list[str] | tuple[str, ...] | None, default: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    for n in names or ["all"]:
        for m in default if n == "all" else (n,):
            if m not in SERVICES:
                raise ServiceError(f"unknown service {m!r}; choose from {', '.join(SERVICES)} or all")
            if m not in out:
                out.append(m)
    return out


def _require_own_prefect(cfg: Config, name: str) -> None:
    """Workers and the watcher talk only to this installation's Prefect server (its pid
    file in this run dir, and the server's record of this installation's id), never to
    whatever answers on the port: another installation's server would hand them its runs."""
    rec = Record.read(_pid_file(cfg, "prefect"))
    if rec and rec.alive():
        _require_ours(cfg, rec)
        if not _prefect_healthy(cfg):
            raise ServiceError(f"Prefect server (pid file {_pid_file(cfg, 'prefect')}) runs but is not healthy")
        require_own_server(cfg, name)  # a pid file can be a copy, even with our id written in
        return
    if _port_open(cfg.prefect_port):
        raise ServiceError(f"port {HOST}:{cfg.prefect_port} is taken by a Prefect server that is not this "
                           f"installation's (run dir {cfg.run_dir}); set ECOS_PREFECT_PORT to a free port")  # fmt: skip
    print(f"infra: the {name} needs the Prefect server; starting it first", file=sys.stderr)
    start("prefect", cfg)


def _require_ours(cfg: Config, rec: Record) -> None:
    if not rec.ours(cfg):
        raise ServiceError(f"{_pid_file(cfg, rec.name)} names pid {rec.pid} of installation {rec.installation}, not "
                           f"this one ({cfg.installation_id(create=False)}, run dir {cfg.run_dir}): a copy from another "
                           "run dir? That process is not ours to use or stop; remove the file")  # fmt: skip


def start(name: str, cfg: Config | None = None) -> Record:
    """Start one service unless it already runs; wait until it is ready. On failure,
    stop what was started for it and raise ServiceError with the log tail."""
    cfg = cfg or Config.load()
    cfg.ensure_run_dir()
    cfg.installation_id()  # written at the first `up`: pid files and the Prefect server carry it
    rec = Record.read(_pid_file(cfg, name))
    if rec and rec.alive():
        _require_ours(cfg, rec)
        print(f"infra: {name} already running (pid {rec.pid})", file=sys.stderr)
        rec.ready_s = 0.0
        return rec
    if name in ("worker", "gpu-worker", "watcher"):
        _require_own_prefect(cfg, name)
    if name in _PORT and _port_open(port := _PORT[name](cfg)):
        raise ServiceError(
            f"port {HOST}:{port} is already in use by another process; stop it or set "
            f"{'ECOS_S3_PORT' if name == 's3' else 'ECOS_PREFECT_PORT'}"
        )
    t0 = time.monotonic()
    try:
        rec = _STARTERS[name](cfg)
        if name == "prefect":  # the server we started is ours: record it, then what it serves
            claim_server(cfg)
            ensure_pools(cfg)
            ensure_crash_detection(cfg)
    except BaseException:  # not ready, pools failed, Ctrl-C: stop what we started for this service
        stop(name, cfg, quiet=True)
        raise
    print(
        f"infra: {name} ready in {rec.ready_s:.1f} s (pid {rec.pid}, {time.monotonic() - t0:.1f} s in all) "
        f"{cfg.url_for(name)}",
        file=sys.stderr,
    )
    return rec


def up(names: list[str] | tuple[str, ...] | None = None, cfg: Config | None = None) -> dict[str, Record]:
    cfg = cfg or Config.load()
    return {n: start(n, cfg) for n in _expand(names, DEFAULT_UP)}


def stop(name: str, cfg: Config | None = None, timeout: float = STOP_TIMEOUT, quiet: bool = False) -> bool:
    """SIGTERM the service's process group (by the recorded PID), wait, SIGKILL after
    `timeout`; remove the pid file. Returns True if something was running."""
    cfg = cfg or Config.load()
    pid_file = _pid_file(cfg, name)
    rec = Record.read(pid_file)
    if rec is None:
        pid_file.unlink(missing_ok=True)
        return False
    ran = rec.alive()
    if ran and not rec.ours(cfg):  # a pid file copied from another run dir: never signal its process
        print(f"infra: {name}: {pid_file} names pid {rec.pid} of installation {rec.installation}; not ours, "
              "not stopped", file=sys.stderr)  # fmt: skip
        return False
    if not ran and rec.start_time is not None and _proc_start_time(rec.pid) not in (None, rec.start_time):
        pid_file.unlink(missing_ok=True)  # the PID was reused by someone else: leave it alone
        return False
    pgid = rec.pid  # started with start_new_session: the leader's PID is the group id
    try:
        os.killpg(pgid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(rec.pid)
        if not _group_members(pgid):
            break
        time.sleep(0.1)
    else:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for _ in range(50):
            _reap(rec.pid)
            if not _group_members(pgid):
                break
            time.sleep(0.1)
    _reap(rec.pid)
    pid_file.unlink(missing_ok=True)
    if not quiet:
        print(f"infra: {name} {'stopped' if ran else 'was not running'} (pid {rec.pid})", file=sys.stderr)
    return ran


def down(names: list[str] | tuple[str, ...] | None = None, cfg: Config | None = None) -> None:
    cfg = cfg or Config.load()
    order = [n for n in ("watcher", "gpu-worker", "worker", "prefect", "s3") if n in _expand(names, SERVICES)]
    for n in order:
        stop(n, cfg)


def stop_all(cfg: Config | None = None) -> None:
    down(None, cfg)


def status(cfg: Config | None = None, out=None) -> dict[str, dict]:
    """Print and return each service's state: running/stopped, pid, URL, log file."""
    cfg = cfg or Config.load()
    out = out or sys.stdout
    result: dict[str, dict] = {}
    for name in SERVICES:
        rec = Record.read(_pid_file(cfg, name))
        alive = bool(rec and rec.alive())
        running = alive and rec.ours(cfg)
        info = {
            "state": "running" if running else "foreign" if alive else "stopped",  # foreign: a copied pid file
            "pid": rec.pid if running and rec else None,
            "url": rec.url if rec else cfg.url_for(name),
            "log": str(_log_file(cfg, name)),
        }
        if name == "prefect" and running:
            info["healthy"] = _prefect_healthy(cfg)
        if name == "watcher" and running:
            try:  # what the watcher itself last said: it drops the errors of rounds it no longer tends
                beat = json.loads(watcher_heartbeat(cfg).read_text())
                info.update(sweeps=beat["sweeps"], last_sweep_at=beat["last_sweep_at"], errors=beat["errors"])
            except (OSError, ValueError, KeyError):
                info["healthy"] = False
        if name in ("worker", "gpu-worker", "watcher") and running:
            info["supervisor"] = supervise_line(cfg, name)
        result[name] = info
        pid = str(info["pid"] or "-")
        extra = "" if info.get("healthy", True) else " (not healthy)"
        print(f"{name:<11} {info['state']:<8}{extra} pid {pid:<8} {info['url']}\n{'':<11} log {info['log']}", file=out)
        if info.get("supervisor"):
            print(f"{'':<11} {info['supervisor']}", file=out)
        if "last_sweep_at" in info:
            print(f"{'':<11} last sweep {info['last_sweep_at']} ({info['sweeps']} in all)"
                  + "".join(f"\n{'':<11} error: {e}" for e in info["errors"]), file=out)  # fmt: skip
    return result


def _shell_quote(v: str) -> str:
    return "'" + v.replace("'", "'\\''") + "'"


def env_lines(cfg: Config | None = None, running_only: bool = False) -> list[str]:
    """`export K=V` lines of env_for_clients(); with running_only, only the variables of
    the services that run (so a client falls back to its embedded defaults for the rest)."""
    cfg = cfg or Config.load()
    up = {n: _service_running(cfg, n) for n in ("s3", "prefect")}
    if running_only:
        env = env_for_clients(cfg) if up["s3"] else {"AWS_EC2_METADATA_DISABLED": "true"}
        if up["s3"] and not up["prefect"]:
            env.pop("PREFECT_API_URL")
        elif up["prefect"]:
            env["PREFECT_API_URL"] = cfg.prefect_api_url
    else:
        env = env_for_clients(cfg)
        for n in (n for n, running in up.items() if not running):
            print(f"infra: warning: {n} is not running", file=sys.stderr)
    if "PREFECT_API_URL" in env:  # flows a client runs against the server beat like the workers' runs
        env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] = str(cfg.flow_heartbeat_s)
    return [f"export {k}={_shell_quote(v)}" for k, v in env.items()]


# ------------------------------------------------------------------------ CLI
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m infra.services", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    p_up = sub.add_parser("up", help="start services (default: s3 prefect worker) and wait until ready")
    p_up.add_argument("services", nargs="*", metavar="SERVICE", help=f"{', '.join(SERVICES)} or all")
    p_down = sub.add_parser("down", help="stop services by PID (default: all)")
    p_down.add_argument("services", nargs="*", metavar="SERVICE")
    sub.add_parser("status", help="running/stopped, pid, URL and log of each service")
    p_env = sub.add_parser("env", help='print `export K=V` lines for clients: eval "$(python -m infra.services env)"')
    p_env.add_argument("--running", action="store_true", help="only the variables of services that are running")
    args = p.parse_args(argv)
    try:
        cfg = Config.load()
        if args.cmd == "up":
            up(args.services, cfg)
        elif args.cmd == "down":
            down(args.services, cfg)
        elif args.cmd == "status":
            status(cfg)
        elif args.cmd == "env":
            print("\n".join(env_lines(cfg, running_only=args.running)))
    except ServiceError as err:
        print(f"infra: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
