"""Configuration of the local services: ports, credentials, paths; from the environment
or a .env file in the repo root (the environment wins). Stdlib only."""

from __future__ import annotations

import os
import secrets
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
INFRA_DIR = REPO_ROOT / "infra"
HOST = "127.0.0.1"

SERVICES = ("s3", "prefect", "worker", "gpu-worker", "watcher")
RESULTS_BLOCK = "ecos-results"  # Prefect RemoteFileSystem block over the bucket (infra/deploy.py)
DEFAULT_UP = ("s3", "prefect", "worker")  # what `up` / `up all` starts; the GPU worker only by name

S3_READY_TIMEOUT = 20.0
PREFECT_READY_TIMEOUT = 120.0
WORKER_READY_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
MIN_FLOW_HEARTBEAT_S = 30  # Prefect refuses a shorter PREFECT_FLOWS_HEARTBEAT_FREQUENCY
# A flow-run process that infra did not configure beats every 180 s (Prefect's default): the
# default window outlasts that by a minute, so no live run anywhere is taken for a dead one.
DEFAULT_CRASH_AFTER_S = 240


class ServiceError(RuntimeError):
    """A service could not be started or stopped; the message says why (and the log tail)."""


# ------------------------------------------------------------------------ config
def read_dotenv(path: Path) -> dict[str, str]:
    """Simple KEY=VALUE lines; '#' comments, blank lines, an optional 'export ' and
    matching surrounding quotes are handled. No interpolation."""
    out: dict[str, str] = {}
    try:
        text = path.read_text()
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        return out
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key.replace("_", "").isalnum():
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        out[key] = value
    return out


def _int(env: Mapping[str, str], key: str, default: int) -> int:
    raw = env.get(key) or str(default)
    try:
        return int(raw)
    except ValueError:
        raise ServiceError(f"{key}={raw!r} is not an integer") from None


@dataclass
class Config:
    run_dir: Path
    s3_data_dir: Path
    s3_port: int = 9000
    s3_bucket: str = "ecos"
    s3_prefix: str = "store"
    s3_key: str | None = None
    s3_secret: str | None = None
    prefect_port: int = 4200
    work_pool: str = "ecos-cpu"
    gpu_work_pool: str = "ecos-gpu"
    worker_query_seconds: str = "2"
    flow_heartbeat_s: int = 30  # flow-run processes of our workers send a heartbeat this often
    crash_after_s: int = DEFAULT_CRASH_AFTER_S  # a Running run without a heartbeat this long is marked Crashed
    prefect_bin: str = ""
    rclone_bin: Path = INFRA_DIR / "bin" / "rclone"
    env: dict[str, str] = field(default_factory=dict, repr=False)  # the merged .env + environment

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, dotenv: Path | None = None) -> Config:
        env = read_dotenv(dotenv or REPO_ROOT / ".env")
        env.update(os.environ if environ is None else environ)
        run_dir = Path(env.get("ECOS_INFRA_DIR") or INFRA_DIR / "run").expanduser().resolve()
        data_dir = Path(env.get("ECOS_S3_DATA_DIR") or run_dir / "s3-data").expanduser().resolve()
        prefect_bin = env.get("ECOS_PREFECT_BIN") or str(Path(sys.executable).parent / "prefect")
        if not Path(prefect_bin).exists():
            prefect_bin = shutil.which("prefect") or prefect_bin
        cfg = cls(
            run_dir=run_dir,
            s3_data_dir=data_dir,
            s3_port=_int(env, "ECOS_S3_PORT", 9000),
            s3_bucket=env.get("ECOS_S3_BUCKET") or "ecos",
            s3_prefix=(env.get("ECOS_S3_PREFIX") or "store").strip("/"),
            s3_key=env.get("ECOS_S3_KEY") or None,
            s3_secret=env.get("ECOS_S3_SECRET") or None,
            prefect_port=_int(env, "ECOS_PREFECT_PORT", 4200),
            work_pool=env.get("ECOS_WORK_POOL") or "ecos-cpu",
            gpu_work_pool=env.get("ECOS_GPU_WORK_POOL") or "ecos-gpu",
            worker_query_seconds=env.get("PREFECT_WORKER_QUERY_SECONDS") or "2",
            flow_heartbeat_s=_int(env, "PREFECT_FLOWS_HEARTBEAT_FREQUENCY", 30),
            crash_after_s=_int(env, "ECOS_CRASH_AFTER_S", DEFAULT_CRASH_AFTER_S),
            prefect_bin=prefect_bin,
            rclone_bin=Path(env.get("ECOS_RCLONE_BIN") or INFRA_DIR / "bin" / "rclone"),
            env=dict(env),
        )
        bucket = cfg.s3_bucket
        if not (3 <= len(bucket) <= 63) or "/" in bucket or bucket.startswith("."):
            raise ServiceError(f"ECOS_S3_BUCKET={bucket!r} is not a valid bucket name")
        cfg._check_crash_detection()
        return cfg

    def _check_crash_detection(self) -> None:
        if self.flow_heartbeat_s < MIN_FLOW_HEARTBEAT_S:
            raise ServiceError(f"PREFECT_FLOWS_HEARTBEAT_FREQUENCY={self.flow_heartbeat_s} is below Prefect's "
                               f"minimum of {MIN_FLOW_HEARTBEAT_S} s")  # fmt: skip
        if self.crash_after_s < self.flow_heartbeat_s + 10:  # a late heartbeat must not crash a live run
            raise ServiceError(f"ECOS_CRASH_AFTER_S={self.crash_after_s} must be at least 10 s more than "
                               f"PREFECT_FLOWS_HEARTBEAT_FREQUENCY ({self.flow_heartbeat_s} s)")  # fmt: skip

    # -- derived
    @property
    def s3_url(self) -> str:
        return f"http://{HOST}:{self.s3_port}"

    @property
    def prefect_url(self) -> str:
        return f"http://{HOST}:{self.prefect_port}"

    @property
    def prefect_api_url(self) -> str:
        return f"{self.prefect_url}/api"

    @property
    def prefect_home(self) -> Path:
        return self.run_dir / "prefect-home"

    @property
    def credentials_file(self) -> Path:
        return self.run_dir / "credentials.env"

    @property
    def installation_file(self) -> Path:
        return self.run_dir / "installation-id"

    def supervise_state(self, name: str) -> Path:
        """What infra/supervise.py says about a supervised service (its child, restarts)."""
        return self.run_dir / f"{name}.supervise.json"

    def pool_for(self, name: str) -> str:
        return self.gpu_work_pool if name == "gpu-worker" else self.work_pool

    def url_for(self, name: str) -> str:
        if name == "s3":
            return f"{self.s3_url} (bucket {self.s3_bucket}, data {self.s3_data_dir})"
        if name == "prefect":
            return f"{self.prefect_url} (UI), {self.prefect_api_url} (API)"
        if name == "watcher":
            return f"{self.prefect_api_url} (resumes suspended rounds; heartbeat {self.run_dir / 'watcher.heartbeat.json'})"
        return f"{self.prefect_api_url} pool {self.pool_for(name)}"

    def ensure_run_dir(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.run_dir.chmod(0o700)
        except PermissionError:
            pass

    def credentials(self, create: bool = True) -> tuple[str, str]:
        """ECOS_S3_KEY/ECOS_S3_SECRET from the environment/.env, else the run dir's
        credentials.env, generated once (mode 600) when absent."""
        if self.s3_key and self.s3_secret:
            return self.s3_key, self.s3_secret
        if bool(self.s3_key) != bool(self.s3_secret):
            raise ServiceError("set both ECOS_S3_KEY and ECOS_S3_SECRET, or neither (then they are generated)")
        saved = read_dotenv(self.credentials_file)
        if saved.get("ECOS_S3_KEY") and saved.get("ECOS_S3_SECRET"):
            self.s3_key, self.s3_secret = saved["ECOS_S3_KEY"], saved["ECOS_S3_SECRET"]
            return self.s3_key, self.s3_secret
        if not create:
            raise ServiceError(
                f"no S3 credentials: set ECOS_S3_KEY/ECOS_S3_SECRET or run `up s3` to generate {self.credentials_file}"
            )
        self.ensure_run_dir()
        key = "ECOS" + secrets.token_hex(8).upper()  # 20 characters, like an AWS access key id
        secret = secrets.token_urlsafe(30)  # 40 characters
        fd = os.open(self.credentials_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("# generated by infra/services.py; keep private\n")
            f.write(f"ECOS_S3_KEY={key}\nECOS_S3_SECRET={secret}\n")
        print(f"infra: generated S3 credentials in {self.credentials_file} (mode 600)", file=sys.stderr)
        self.s3_key, self.s3_secret = key, secret
        return key, secret

    def installation_id(self, create: bool = True) -> str | None:
        """This installation's random id, written once in the run dir (mode 600) at its first
        `up`; None before that when not `create`. Pid files carry it, and the Prefect server
        records the id of the installation that started it: a run dir copied from another
        installation (pid files and all) names that one's processes, but cannot carry its id."""
        try:
            found = self.installation_file.read_text().strip()
        except FileNotFoundError:
            found = ""
        if not found and self.installation_file.exists():  # an empty file from an interrupted older write
            self.installation_file.unlink(missing_ok=True)
        if found:
            if len(found) != 32 or not all(c in "0123456789abcdef" for c in found):
                raise ServiceError(f"{self.installation_file} does not hold an installation id (32 hex digits); "
                                   "remove it to generate a new one")  # fmt: skip
            return found
        if not create:
            return None
        from ecos_core.storage.private_file import write_private  # stdlib only underneath

        self.ensure_run_dir()
        new = secrets.token_hex(16)
        try:  # written whole under a temporary name, then linked: never seen empty or half written
            write_private(self.installation_file, (new + "\n").encode(), exclusive=True)
        except FileExistsError:  # another `up` wrote it first: use that one
            return self.installation_id(create=False) or new
        return new


def _validate_credentials(key: str, secret: str) -> None:
    # rclone's --auth-key is "key,secret" (CSV); it also refuses access keys shorter than 3.
    for what, value in (("ECOS_S3_KEY", key), ("ECOS_S3_SECRET", secret)):
        if any(c in value for c in ',"\n\r') or value != value.strip():
            raise ServiceError(f"{what} must not contain commas, quotes, newlines or surrounding spaces")
    if len(key) < 3:
        raise ServiceError("ECOS_S3_KEY must be at least 3 characters (rclone rejects shorter access keys)")


def env_for_clients(cfg: Config | None = None) -> dict[str, str]:
    """What a client or flow needs to use these services. The credentials also go as
    AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, which botocore reads: Prefect's results
    block holds none (its data is readable through the API), so flow runs writing results
    to the bucket take them from the environment. The AWS_*_CHECKSUM_* switches let any
    boto client of these processes read objects over ~50 MiB from rclone (see
    ecos_core.storage.store.S3_CHECKSUM_CONFIG)."""
    cfg = cfg or Config.load()
    key, secret = cfg.credentials(create=False)
    return {
        "ECOS_STORE": f"s3://{cfg.s3_bucket}/{cfg.s3_prefix}" if cfg.s3_prefix else f"s3://{cfg.s3_bucket}",
        "ECOS_S3_ENDPOINT": cfg.s3_url,
        "ECOS_S3_KEY": key,
        "ECOS_S3_SECRET": secret,
        "AWS_ACCESS_KEY_ID": key,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
        "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
        "PREFECT_API_URL": cfg.prefect_api_url,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


