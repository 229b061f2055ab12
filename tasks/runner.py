"""The task runner of the mapped steps: Dask, a local cluster by default, or an existing
cluster by address (`--dask-address tcp://host:8786`) when one machine is not enough."""

from __future__ import annotations

import os

os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")  # before dask reads its config: quiet workers


def local_workers(threads: int = 1) -> int:
    return max(1, (os.cpu_count() or 1) // threads)


def torch_threads(workers: int | None) -> int:
    """Torch threads per worker so that workers × threads = the cores (no oversubscription)."""
    return max(1, (os.cpu_count() or 1) // max(1, workers or local_workers()))


def dask_runner(address: str | None = None, workers: int | None = None, threads_per_worker: int = 1):  # noqa: ANN201
    """A DaskTaskRunner: worker processes (torch and numpy hold the GIL in places) with one
    thread each by default, so a shard's embedding gets a core of its own."""
    from prefect_dask import DaskTaskRunner  # imported here: only the mapped flows need Dask

    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers or local_workers(threads_per_worker),
                                          "threads_per_worker": threads_per_worker, "processes": True,
                                          "dashboard_address": ":0", "env": _worker_env()})  # fmt: skip


def _worker_env() -> dict[str, str]:
    """Local workers report to this process's Prefect API. Without a server configured
    that is the temporary one Prefect started here: left to themselves, the workers would
    each start their own (≈220 MB and seconds apiece), invisible to this run."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return {}
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # a per-process singleton: the one this run already uses
    server.start()
    return {"PREFECT_API_URL": server.api_url}
