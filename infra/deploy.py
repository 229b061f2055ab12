"""Register everything the deployed pipeline needs on the Prefect server, then deploy.

    python -m infra.deploy          # with the env of `ecos infra env` (PREFECT_API_URL, S3)

1. A RemoteFileSystem block over the bucket, so flow and task results persist in the
   object store (the workers get PREFECT_DEFAULT_RESULT_STORAGE_BLOCK pointing at it).
   It holds the endpoint and client config only, never credentials: a block's `settings`
   is plain data the API returns to anyone who can reach it. Flow runs read the
   credentials from their environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, set for
   the worker and the watcher by infra.config.env_for_clients), as botocore does.
2. `prefect deploy --all` from prefect.yaml.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ecos_core.storage.store import S3_CHECKSUM_CONFIG
from infra.services import RESULTS_BLOCK

REPO = Path(__file__).resolve().parents[1]


def results_block_settings(environ: Mapping[str, str]) -> dict[str, Any]:
    """The block's fsspec settings: endpoint and client config, no credentials (see above);
    the checksum switches let results over ~50 MiB be read back from rclone."""
    return {"client_kwargs": {"endpoint_url": environ["ECOS_S3_ENDPOINT"], "region_name": "us-east-1"},
            "config_kwargs": {"s3": {"addressing_style": "path"}, **S3_CHECKSUM_CONFIG}}  # fmt: skip


def results_block(environ: Mapping[str, str] | None = None) -> None:
    """Save the results block (overwriting an earlier one, which may still hold a secret)."""
    from prefect.filesystems import RemoteFileSystem

    environ = os.environ if environ is None else environ
    bucket = environ["ECOS_STORE"].removeprefix("s3://").split("/", 1)[0]
    RemoteFileSystem(basepath=f"s3://{bucket}/prefect-results", settings=results_block_settings(environ)).save(
        RESULTS_BLOCK, overwrite=True
    )


def main() -> int:
    for name in ("PREFECT_API_URL", "ECOS_STORE", "ECOS_S3_ENDPOINT"):
        if not os.environ.get(name):
            print(f"deploy: {name} is not set; run: eval \"$(ecos infra env)\"", file=sys.stderr)
            return 2
    results_block()
    prefect = str(Path(sys.executable).parent / "prefect")
    env = {**os.environ, "ECOS_REPO_DIR": str(REPO)}  # prefect.yaml's pull step: run flows from this checkout
    return subprocess.run([prefect, "--no-prompt", "deploy", "--all"], cwd=REPO, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
