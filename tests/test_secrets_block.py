"""The S3 secret is never readable through Prefect (issue 16, item 4): the results block
infra/deploy.py saves on a REAL Prefect server holds no credentials, and flow-run
processes still write results to the REAL S3 server (rclone) with the credentials from
their environment only. The deployed round's whole API surface is audited by infra/smoke.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from infra import services  # noqa: E402
from infra.processes import free_port as _free_port  # noqa: E402
from infra.processes import _http  # noqa: E402

pytestmark = pytest.mark.slow  # a Prefect server start: ~15-40 s on these machines



def _environ(run_dir: Path) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("ECOS_", "PREFECT_", "AWS_"))}
    environ.update(ECOS_INFRA_DIR=str(run_dir), ECOS_S3_PORT=str(_free_port()), ECOS_PREFECT_PORT=str(_free_port()),
                   ECOS_S3_BUCKET="ecos", PREFECT_SERVER_ANALYTICS_ENABLED="false")  # fmt: skip
    return environ


@pytest.fixture(scope="module")
def infra(tmp_path_factory):
    """S3 + Prefect server started by infra.services in a temporary run dir, stopped by PID."""
    run_dir = tmp_path_factory.mktemp("secrets-infra")
    cfg = services.Config.load(_environ(run_dir), dotenv=run_dir / "no.env")  # the repo's .env must not leak in
    try:
        for name in ("s3", "prefect"):
            try:
                services.start(name, cfg)
            except services.ServiceError as err:
                pytest.fail(f"could not start {name}: {err}", pytrace=False)
        yield cfg
    finally:
        services.down(["prefect", "s3"], cfg)


def _python(code: str, env: dict[str, str]) -> str:
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, f"{code[:60]}... failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    return out.stdout


def test_client_env_carries_the_credentials_botocore_reads(tmp_path: Path) -> None:
    environ = {**_environ(tmp_path), "ECOS_S3_KEY": "ecos-test-key", "ECOS_S3_SECRET": "not-in-any-block"}
    env = services.env_for_clients(services.Config.load(environ, dotenv=tmp_path / "no.env"))
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == ("ecos-test-key", "not-in-any-block")
    assert env["AWS_RESPONSE_CHECKSUM_VALIDATION"] == env["AWS_REQUEST_CHECKSUM_CALCULATION"] == "when_required"


def test_results_block_holds_no_secret_and_results_still_reach_the_bucket(infra: services.Config) -> None:
    key, secret = infra.credentials(create=False)
    env = {**os.environ, **_environ(infra.run_dir), **services.env_for_clients(infra)}
    env["ECOS_INFRA_DIR"], env["ECOS_S3_PORT"], env["ECOS_PREFECT_PORT"] = str(infra.run_dir), str(infra.s3_port), str(infra.prefect_port)
    _python("from infra.deploy import results_block; results_block()", env)  # as `python -m infra.deploy` does

    api = infra.prefect_api_url
    status, listed = _http(f"{api}/block_documents/filter", "POST", {"include_secrets": False}, timeout=10)
    assert status == 200, listed[:300]
    blocks = [b for b in json.loads(listed) if b["name"] == services.RESULTS_BLOCK]
    assert blocks, f"no block {services.RESULTS_BLOCK!r} on {api}"
    status, one = _http(f"{api}/block_documents/{blocks[0]['id']}", timeout=10)
    assert status == 200, one[:300]
    for where, body in (("block_documents/filter", listed), (f"block_documents/{blocks[0]['id']}", one)):
        assert secret.encode() not in body, f"{api}/{where} returns the S3 secret to anyone who asks"

    # A flow-run process: the worker's environment, credentials only as AWS_* (not ECOS_S3_*).
    run_env = {k: v for k, v in env.items() if not k.startswith("ECOS_S3_")}
    size = 56 * 1024 * 1024  # over s3fs's 50 MiB part size: read back in ranges
    out = _python(
        "import os; from prefect.filesystems import RemoteFileSystem\n"
        f"block = RemoteFileSystem.load({services.RESULTS_BLOCK!r}); data = os.urandom({size})\n"
        "block.write_path('test/result.bin', data); print(block.read_path('test/result.bin') == data)",
        run_env,
    )
    assert out.strip().splitlines()[-1] == "True", out[-500:]
