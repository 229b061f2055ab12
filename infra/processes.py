"""Processes started by PID: pid files with start times, logs, readiness waits, and
stopping a whole process group. Stdlib only."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from infra.config import Config, HOST, ServiceError

# ------------------------------------------------------------------------ processes
def _proc_start_time(pid: int) -> str | None:
    """The kernel's start time of a PID (Linux), to tell our process from a reused PID."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError, OSError):
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False
    return True


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
            return [pgid]
        except (ProcessLookupError, PermissionError):
            return []
    out = []
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            out.append(int(d.name))
    return out


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


@dataclass
class Record:
    name: str
    pid: int
    start_time: str | None
    cmd: list[str]
    url: str
    log: str
    started_at: float
    ready_s: float | None = None  # seconds from launch to ready (this start only)
    installation: str | None = None  # the id of the installation that started it (None: older pid files)

    @classmethod
    def read(cls, path: Path) -> Record | None:
        try:
            return cls(**json.loads(path.read_text()))
        except (FileNotFoundError, ValueError, TypeError):
            return None

    def alive(self) -> bool:
        if not _pid_alive(self.pid):
            return False
        now = _proc_start_time(self.pid)
        return self.start_time is None or now is None or now == self.start_time

    def ours(self, cfg: Config) -> bool:
        """Started by this installation: a pid file copied from another run dir is not."""
        return self.installation is None or self.installation == cfg.installation_id(create=False)


def _pid_file(cfg: Config, name: str) -> Path:
    return cfg.run_dir / f"{name}.pid"


def _log_file(cfg: Config, name: str) -> Path:
    return cfg.run_dir / "logs" / f"{name}.log"


def log_tail(path: Path | str, lines: int = 30) -> str:
    try:
        data = Path(path).read_bytes()[-20000:].decode(errors="replace")
    except FileNotFoundError:
        return f"(no log at {path})"
    if "\n===== " in data:  # only the latest start's part of the log
        data = "===== " + data.rsplit("\n===== ", 1)[1]
    return "\n".join(data.splitlines()[-lines:])


def _launch(cfg: Config, name: str, cmd: list[str], env: dict[str, str], url: str, cwd: Path) -> Record:
    cfg.ensure_run_dir()
    log = _log_file(cfg, name)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as f:
        f.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {name}: {' '.join(cmd)}\n".encode())
        f.flush()
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
        )
    rec = Record(name, proc.pid, _proc_start_time(proc.pid), cmd, url, str(log), time.time(),
                 installation=cfg.installation_id())  # fmt: skip
    tmp = _pid_file(cfg, name).with_suffix(".pid.tmp")
    tmp.write_text(json.dumps(rec.__dict__))
    tmp.replace(_pid_file(cfg, name))
    proc.returncode = 0  # detached on purpose: silence Popen's "still running" warning at exit
    return rec


def _wait_ready(rec: Record, check: Callable[[], bool], timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while True:
        try:
            ready = check()
        except Exception:  # noqa: BLE001 - not ready yet, whatever the reason
            ready = False
        if ready:
            return time.monotonic() - t0
        if not rec.alive():
            _reap(rec.pid)
            raise ServiceError(f"{what} exited during startup (pid {rec.pid}); log {rec.log}:\n{log_tail(rec.log)}")
        if time.monotonic() - t0 > timeout:
            raise ServiceError(
                f"{what} not ready after {timeout:.0f} s (pid {rec.pid}); log {rec.log}:\n{log_tail(rec.log)}"
            )
        time.sleep(0.2)


# The codes Prefect's own client retries: its server answers 503 when SQLite is locked by
# a concurrent writer (worker, watcher, deploy), which a loaded 2-core CI machine hits.
RETRYABLE_HTTP = frozenset({408, 429, 502, 503})


def _http(
    url: str, method: str = "GET", body: dict | None = None, timeout: float = 3.0, retries: int = 6
) -> tuple[int, bytes]:
    """One JSON request; retryable answers are retried with backoff (0.5 s doubling, ≈ 30 s in
    all; a Retry-After in seconds, up to 10, is honoured). POSTs that create something should
    carry an idempotency key: a 502/408 may come after the server acted."""
    data = json.dumps(body).encode() if body is not None else None
    for attempt in range(retries + 1):
        req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as err:
            status, payload, after = err.code, err.read(), err.headers.get("Retry-After", "")
        if status not in RETRYABLE_HTTP or attempt == retries:
            return status, payload
        time.sleep(min(float(after), 10.0) if after.replace(".", "", 1).isdigit() else 0.5 * 2**attempt)
    raise AssertionError("unreachable")


def free_port() -> int:
    """A port nothing listens on now (the OS picks it): for tests and runs beside other installations."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0


def _base_env() -> dict[str, str]:
    env = dict(os.environ)
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    return env


def _service_running(cfg: Config, name: str) -> bool:
    rec = Record.read(_pid_file(cfg, name))
    return bool(rec and rec.alive() and rec.ours(cfg))
