"""Register everything the deployed pipeline needs on the Prefect server, then deploy.

    python -m infra.deploy          # with the env of `ecos infra env` (PREFECT_API_URL, S3)

1. A RemoteFileSystem block over the bucket, so flow and task results persist in the
   object store (the workers get PREFECT_DEFAULT_RESULT_STORAGE_BLOCK pointing at it).
2. `prefect deploy --all` from prefect.yaml.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from infra.services import RESULTS_BLOCK

REPO = Path(__file__).resolve().parents[1]


def results_block() -> None:
    from prefect.filesystems import RemoteFileSystem

    bucket = os.environ["ECOS_STORE"].removeprefix("s3://").split("/", 1)[0]
    RemoteFileSystem(
        basepath=f"s3://{bucket}/prefect-results",
        settings={"key": os.environ["ECOS_S3_KEY"], "secret": os.environ["ECOS_S3_SECRET"],
                  "client_kwargs": {"endpoint_url": os.environ["ECOS_S3_ENDPOINT"], "region_name": "us-east-1"},
                  "config_kwargs": {"s3": {"addressing_style": "path"}}},
    ).save(RESULTS_BLOCK, overwrite=True)  # fmt: skip


def main() -> int:
    for name in ("PREFECT_API_URL", "ECOS_STORE", "ECOS_S3_KEY", "ECOS_S3_SECRET", "ECOS_S3_ENDPOINT"):
        if not os.environ.get(name):
            print(f"deploy: {name} is not set; run: eval \"$(ecos infra env)\"", file=sys.stderr)
            return 2
    results_block()
    prefect = str(Path(sys.executable).parent / "prefect")
    env = {**os.environ, "ECOS_REPO_DIR": str(REPO)}  # prefect.yaml's pull step: run flows from this checkout
    return subprocess.run([prefect, "--no-prompt", "deploy", "--all"], cwd=REPO, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
