"""A probe changed after publish is noticed by the running watcher within a couple of
sweeps, and the round fails naming it (issue 16, item 7), against the REAL services:
rclone's S3 server, a Prefect server and the supervised watcher process (2 s sweeps).

Before: the watcher kept its first check of a probe for good, so a probe changed after
publish went unnoticed until a watcher restart, and the failed round named only QuorumNotMet."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import numpy as np
import pytest
from prefect import flow

from s3_faults import K, quiet_tasks  # noqa: F401 (quiet_tasks: a fixture)
from test_watcher import live, state_of  # noqa: F401 (the module's own servers)
import faults  # noqa: E402 (benchmarks/faults.py, put on sys.path by test_watcher)
from infra import services
from ecos_core.config import RoundConfig
from ecos_core.embedding.feature_space import FEATURE_DIM
from ecos_core.exchange.protocol import MAX_PROBE_JSON_BYTES
from ecos_core.storage import layout

pytestmark = pytest.mark.slow

NOTICE_S = 7.0  # a couple of the watcher's 2 s sweeps, and the API's answer
PUBLISHED: dict[str, dict] = {}  # round id -> publish_probe's result, which round_flow has cached before its wait


@flow(name="ecos-round")
def round_tail(cfg: RoundConfig, store_url: str, round_id: str, wait: str = "suspend") -> dict:
    """round_flow from its (cached) publish on: its own wait-and-collect step, gather_responses."""
    from flows.round_flow import gather_responses

    return gather_responses(store_url, round_id, cfg, PUBLISHED[round_id], wait)


@pytest.fixture(scope="module")
def watching(live):  # noqa: F811
    """The watcher process, and a deployment of round_tail whose runs it tends as rounds."""
    from prefect import get_client

    services.start("watcher", live.cfg)
    try:
        with get_client(sync_client=True) as client:
            deployment = client.create_deployment(flow_id=client.create_flow(round_tail), name="tail")
        yield SimpleNamespace(**{**vars(live), "deployment": deployment})
    finally:
        services.stop("watcher", live.cfg, quiet=True)


def sweeps(live) -> int:
    return json.loads(services.watcher_heartbeat(live.cfg).read_text())["sweeps"]


def tamper_probe_json(live, r) -> None:
    """A probe.json that still parses and matches its centroids, with another σ: only the
    invitations' MACs tell it from the published one."""
    doc = json.loads(live.store.read_bytes(layout.probe_json(r.id)))
    live.store.write_bytes(layout.probe_json(r.id), json.dumps({**doc, "sigma": 0.5}, indent=1).encode())


def tamper_centroids(live, r) -> None:
    live.store.write_npy(layout.probe_centroids(r.id), np.zeros((K, FEATURE_DIM), "<f4"))


def delete_centroids(live, r) -> None:
    live.store.delete(layout.probe_centroids(r.id))


def delete_probe_json(live, r) -> None:
    live.store.delete(layout.probe_json(r.id))


def oversize_probe_json(live, r) -> None:
    live.store.write_bytes(layout.probe_json(r.id), b" " * (MAX_PROBE_JSON_BYTES + 1))


TAMPERS = {  # how the probe is changed after publish, and what the round's failure must say
    "probe.json": (tamper_probe_json, "probe/probe.json: changed after publish"),
    "centroids.npy": (tamper_centroids, "probe/centroids.npy: sha256 does not match"),
    "centroids.npy deleted": (delete_centroids, "probe/centroids.npy: no such object"),
    "probe.json deleted": (delete_probe_json, "probe/probe.json: no such object"),
    "probe.json oversized": (oversize_probe_json, f"probe/probe.json: {MAX_PROBE_JSON_BYTES + 1} bytes, larger"),
}


def test_a_probe_changed_after_publish_is_noticed_and_fails_its_round_naming_it(watching, quiet_tasks):
    from prefect import get_client
    from prefect.flow_engine import run_flow
    from prefect.settings import PREFECT_LOGGING_TO_API_ENABLED, temporary_settings

    from flows.round_flow import ResponsesReady

    live = watching
    rounds = {name: faults.suspended_round(live, 120.0) for name in TAMPERS}
    PUBLISHED.update({r.id: r.probe for r in rounds.values()})
    seen = sweeps(live)
    while sweeps(live) < seen + 2:  # the watcher has checked (and, before, cached) both probes
        time.sleep(0.2)
    assert all(state_of(r) == "Suspended" for r in rounds.values())
    for name, r in rounds.items():
        TAMPERS[name][0](live, r)
    tampered, noticed = time.monotonic(), {}
    while len(noticed) < len(rounds) and time.monotonic() - tampered < NOTICE_S:
        noticed.update({n: round(time.monotonic() - tampered, 1) for n, r in rounds.items()
                        if n not in noticed and state_of(r) != "Suspended"})  # fmt: skip
        time.sleep(0.2)
    assert len(noticed) == len(rounds), f"noticed {noticed} of {list(rounds)} within {NOTICE_S:g} s of the change"
    log = services._log_file(live.cfg, "watcher").read_text()
    assert "probe.json/centroids.npy" not in log  # files are named as they are
    with get_client(sync_client=True) as client:
        for name, r in rounds.items():
            ready = ResponsesReady.load(r.keyset, flow_run_id=r.run_id)
            assert "its probe is unreadable" in ready.reason and TAMPERS[name][1] in ready.probe_error, ready
            run = client.read_flow_run(r.run_id)
            with temporary_settings(updates={PREFECT_LOGGING_TO_API_ENABLED: False}):  # nothing left to send at exit
                state = run_flow(round_tail, flow_run=run, parameters=run.parameters, return_type="state")
            message = client.read_flow_run(r.run_id).state.message or ""
            assert state.is_failed() and "ProbeUnusable" in message and TAMPERS[name][1] in message, (name, message)
            assert "QuorumNotMet" not in message
            ledger = live.store.read_json(layout.round_key(r.id, "ledger.json"))
            assert TAMPERS[name][1] in ledger["probe_error"]
    print(f"\nnoticed after (s): {noticed}")
