"""The watcher and the uploads it judges, against the REAL services: rclone's S3 server
and a Prefect server (started by infra.services in a temporary run dir on free ports,
stopped by PID at the end). Suspended rounds are real suspended flow runs of a
registered `ecos-round` deployment, made the way `suspend_flow_run` makes them.

The invariant: the first valid answer of each invited client is never lost or replaced,
whatever anyone uploads before or after it; every upload version is judged and ledgered
once; one bad object, one broken round or one unreachable store never stops the watcher.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import uuid
from datetime import datetime, timezone
from types import SimpleNamespace

import numpy as np
import pytest

from s3_faults import CLIENTS, K, SIGMA, _free_port, quiet_tasks, signed  # noqa: F401 (fixtures by name)

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "benchmarks"))
import faults  # noqa: E402 (benchmarks/faults.py: the live services and suspended rounds)
from infra import services
from ecos_core.storage import layout
from ecos_core.exchange import transport
from ecos_core.embedding.feature_space import FEATURE_DIM
from tasks import catalog

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """S3 + Prefect server (no watcher process: the tests sweep in-process); the store,
    enrolled clients, a fake index and a deployment (benchmarks/faults.py sets them up)."""
    mp = pytest.MonkeyPatch()
    setup = faults.start_services(tmp_path_factory.mktemp("watcher-infra"), watcher=False)
    try:
        faults.enrolled(setup, CLIENTS)
        yield setup
    finally:
        faults.stop_services(setup)
        mp.undo()
        catalog.store.cache_clear()


def suspended_round(live, deadline_s: float = 60.0, clients=CLIENTS) -> SimpleNamespace:
    return faults.suspended_round(live, deadline_s, list(clients))


def state_of(r) -> str:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(r.run_id).state.name


def resumed_because(r) -> str:
    from flows.round_flow import ResponsesReady

    return ResponsesReady.load(r.keyset, flow_run_id=r.run_id).reason


def answer(live, r, client: str, value: float) -> bytes:
    data = signed(r.id, client, [value] * K, live.keys[client])
    transport.put(r.invites[client].response_url, data)
    return data


def collect(live, r, clients=CLIENTS) -> dict:
    from tasks.responses import collect_responses

    return collect_responses.fn(live.url, r.id, list(clients), 1, r.probe["deadline"], SIGMA, K, 0.05, False)


def test_oversized_and_garbage_uploads_are_refused_and_the_watcher_goes_on(live, quiet_tasks):
    from flows.watcher import Watcher

    r = suspended_round(live)
    transport.put(r.invites["client-0"].response_url, b"x" * (50 << 20))  # 50 MB at client-0's URL
    transport.put(r.invites["client-1"].response_url, b"\x00garbage")
    watcher = Watcher()
    watcher.sweep()  # today: StoreError "larger than the 65536-byte limit" ended the watcher here
    assert state_of(r) == "Suspended" and watcher.errors == {}
    first = {c: answer(live, r, c, v) for c, v in (("client-0", 1.0), ("client-1", 2.0))}
    assert [rid for rid, _ in watcher.sweep()] == [str(r.run_id)]
    assert state_of(r) == "Resuming" and resumed_because(r) == "all 2 expected clients answered"
    out = collect(live, r)
    assert {c: a["scores"][0] for c, a in out["accepted"].items()} == {"client-0": 1.0, "client-1": 2.0}
    assert all(live.store.read_bytes(layout.accepted(r.id, c)) == first[c] for c in CLIENTS)
    reasons = [x["reason"] for x in out["rejected"]]
    assert len(reasons) == 2 and any(f"{50 << 20} bytes, larger than" in x for x in reasons), reasons


def test_the_first_valid_answer_is_never_replaced_and_each_version_is_ledgered_once(live, quiet_tasks):
    from flows.watcher import Watcher

    r = suspended_round(live)
    honest = answer(live, r, "client-0", 1.0)
    Watcher().sweep()  # the watcher sees the honest answer and keeps it
    answer(live, r, "client-0", 9.0)  # a second, validly signed answer: refused, not used
    Watcher().sweep()
    transport.put(r.invites["client-0"].response_url, b"garbage after the answer")
    Watcher().sweep()
    answer(live, r, "client-1", 2.0)
    Watcher().sweep()
    out = collect(live, r)
    assert out["accepted"]["client-0"]["scores"] == [1.0] * K
    assert live.store.read_bytes(layout.accepted(r.id, "client-0")) == honest
    ledger = live.store.read_json(layout.round_key(r.id, "ledger.json"))
    verdicts = [(u["key"].rsplit("/", 1)[1], u["verdict"]) for u in ledger["uploads"]]
    assert verdicts == [("client-0.json", "accepted"), ("client-0.json", "refused"), ("client-0.json", "refused"),
                        ("client-1.json", "accepted")], verdicts  # fmt: skip
    assert "duplicate upload from 'client-0' (differs from the accepted answer)" in ledger["rejected"][0]["reason"]
    again = collect(live, r)  # a re-run of the finished round: nothing is judged twice, nothing new is refused
    assert again["rejected"] == out["rejected"] and again["accepted"] == out["accepted"]


def test_a_url_expires_at_the_deadline_itself_so_no_late_put_replaces_an_answer(live, quiet_tasks):
    r = suspended_round(live, deadline_s=3)
    deadline = datetime.fromisoformat(r.probe["deadline"])
    assert deadline.microsecond == 0  # whole seconds, like the URLs' signing times
    answer(live, r, "client-0", 1.0)
    time.sleep(max(0.0, (deadline - datetime.now(timezone.utc)).total_seconds()) + 0.4)
    with pytest.raises(transport.TransportError, match="deadline has passed"):
        answer(live, r, "client-0", 9.0)  # today: still accepted at deadline + 0.4 s
    out = collect(live, r)
    assert out["accepted"]["client-0"]["scores"] == [1.0] * K and out["missing"] == ["client-1"]


def test_an_s3_outage_is_ridden_out_and_the_round_resumes_after_it(live, quiet_tasks):
    from flows import watcher as watcher_module

    r = suspended_round(live)
    answer(live, r, "client-0", 1.0)
    watcher = watcher_module.Watcher()
    services.stop("s3", live.cfg, quiet=True)
    try:
        watcher.sweep()  # today: the watcher exited here for good
        assert any("store unavailable" in e for e in watcher.errors.values()), watcher.errors
        assert state_of(r) == "Suspended"
    finally:
        services.start("s3", live.cfg)
    answer(live, r, "client-1", 2.0)
    start = time.monotonic()
    while str(r.run_id) not in dict(watcher.sweep()) and time.monotonic() - start < 3 * watcher_module.MAX_BACKOFF_S:
        time.sleep(0.5)  # the round waits out its backoff (≤ MAX_BACKOFF_S), the others are not slowed
    assert state_of(r) == "Resuming" and watcher.errors == {}


def test_a_broken_probe_resumes_its_own_round_and_the_others_go_on(live, quiet_tasks):
    from flows.watcher import Watcher

    broken, healthy = suspended_round(live), suspended_round(live)
    live.store.write_npy(layout.probe_centroids(broken.id), np.zeros((K, FEATURE_DIM), "<f4"))  # changed after publish
    for c, v in (("client-0", 1.0), ("client-1", 2.0)):
        answer(live, healthy, c, v)
    resumed = dict(Watcher().sweep())
    assert set(resumed) == {str(broken.run_id), str(healthy.run_id)}
    assert "its probe is unreadable" in resumed_because(broken)
    assert resumed_because(healthy) == "all 2 expected clients answered"


def test_a_crashed_round_is_scheduled_again_and_a_crash_loop_is_marked_failed(live):
    """A worker SIGKILLed mid-training leaves the run Crashed: the watcher schedules it
    again (its finished steps are in the store), at most MAX_CRASH_RETRIES times."""
    from prefect import get_client
    from prefect.states import Crashed, Running

    from flows.watcher import MAX_CRASH_RETRIES, Watcher

    with get_client(sync_client=True) as client:
        run = client.create_flow_run_from_deployment(live.deployment, parameters={"round_id": f"w-crash-{uuid.uuid4().hex[:6]}"})
        for attempt in range(MAX_CRASH_RETRIES + 1):
            client.set_flow_run_state(run.id, Running(), force=True)
            client.set_flow_run_state(run.id, Crashed(message="worker killed"), force=True)
            Watcher().sweep()
            expected = "AwaitingRetry" if attempt < MAX_CRASH_RETRIES else "Failed"
            assert client.read_flow_run(run.id).state.name == expected, attempt


def test_the_watcher_leaves_a_heartbeat_in_the_store_and_a_round_warns_without_one(live, tmp_path):
    from flows.watcher import Watcher
    from ecos_core.storage.store import Store
    from tasks.uploads import watcher_silence

    assert watcher_silence(Store(str(tmp_path / "fresh"))) == "no watcher has swept this store yet"
    Watcher().sweep()
    assert watcher_silence(live.store) is None
    time.sleep(1.1)
    assert watcher_silence(live.store, max_age_s=1.0).startswith("the watcher last swept")


def test_the_watcher_process_is_supervised_and_ready_means_this_start(live):
    cfg = live.cfg
    rec = services.start("watcher", cfg)
    try:
        beat_file = services.watcher_heartbeat(cfg)
        beat = json.loads(beat_file.read_text())
        assert beat["ppid"] == rec.pid and beat["sweeps"] >= 1 and rec.ready_s > 0
        os.kill(beat["pid"], signal.SIGKILL)  # the watcher dies; its supervisor starts another
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                again = json.loads(beat_file.read_text())
                if again["pid"] != beat["pid"]:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.5)
        else:
            pytest.fail("the killed watcher was not restarted within 60 s")
        assert again["ppid"] == rec.pid and again["sweeps"] >= 1
        assert "exited with -9" in services._log_file(cfg, "watcher").read_text()
    finally:
        services.stop("watcher", cfg, quiet=True)
    # a restart is ready only when the new watcher has swept: the old heartbeat does not count
    old = json.loads(beat_file.read_text())
    rec2 = services.start("watcher", cfg)
    try:
        now = json.loads(beat_file.read_text())
        assert now["ppid"] == rec2.pid != old["ppid"] and rec2.ready_s > 0.1
    finally:
        services.stop("watcher", cfg, quiet=True)


def test_workers_and_the_watcher_never_use_another_installations_server(live, tmp_path):
    """A second installation (own run dir, own S3 port) whose Prefect port is the first
    one's: today `up worker` joined the first server and took its runs."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("ECOS_", "PREFECT_API_"))}
    environ.update(ECOS_INFRA_DIR=str(tmp_path / "second"), ECOS_S3_PORT=str(_free_port()),
                   ECOS_PREFECT_PORT=str(live.cfg.prefect_port))  # fmt: skip
    second = services.Config.load(environ, dotenv=tmp_path / "no.env")
    for name in ("worker", "watcher"):
        with pytest.raises(services.ServiceError, match="not this installation's"):
            services.start(name, second)
        assert not services._service_running(second, name)
    st = services.status(second, out=sys.stderr)
    assert st["prefect"]["state"] == "stopped"


def test_200_devices_answering_at_once_are_all_accepted(live, quiet_tasks):
    """Load: 200 devices PUT through their own pre-signed URLs concurrently; the watcher
    judges them as they land and resumes the round; none is lost."""
    from concurrent.futures import ThreadPoolExecutor

    from flows.watcher import Watcher

    clients = [f"dev-{i:03d}" for i in range(200)]
    r = suspended_round(live, deadline_s=300, clients=clients)
    watcher = Watcher()
    start = time.monotonic()
    with ThreadPoolExecutor(32) as pool:
        sent = list(pool.map(lambda c: answer(live, r, c, float(int(c[-3:]))), clients))
    uploaded_s = time.monotonic() - start
    while str(r.run_id) not in dict(watcher.sweep()):
        assert time.monotonic() - start < 120, "200 answers not all accepted within 120 s"
    resumed_s = time.monotonic() - start
    out = collect(live, r, clients)
    assert sorted(out["accepted"]) == clients and out["rejected"] == [] and out["missing"] == []
    assert all(out["accepted"][c]["scores"][0] == float(int(c[-3:])) for c in clients)
    assert all(live.store.read_bytes(layout.accepted(r.id, c)) == d for c, d in zip(clients, sent))
    print(f"\n200 devices: uploads {uploaded_s:.1f} s, all judged and the round resumed at {resumed_s:.1f} s", file=sys.stderr)


def test_errors_of_runs_no_longer_waiting_leave_the_heartbeat(monkeypatch, tmp_path):
    """An error belongs to a run the watcher still tends: once the run is no longer suspended
    or crashed it is history and leaves the heartbeat (what `ecos infra status` shows), but
    nothing is forgotten while the API cannot say which runs are current."""
    from flows import watcher as w

    monkeypatch.setenv("ECOS_STORE", str(tmp_path / "store"))
    watching = w.Watcher(tmp_path / "beat.json")
    watching.errors = {"0b9f1c52-0000-4000-8000-000000000001": "flow run … (round-x): ValidationError; retrying in 1 s"}
    watching.retry_at = {"0b9f1c52-0000-4000-8000-000000000001": (0.0, 1.0)}

    def api_down(_state=None):
        raise ConnectionError("Prefect API unreachable")

    monkeypatch.setattr(w, "suspended_rounds", api_down)
    monkeypatch.setattr(w, "rounds_in", api_down)
    watching.sweep()
    assert "0b9f1c52-0000-4000-8000-000000000001" in watching.errors and "prefect" in watching.errors
    monkeypatch.setattr(w, "suspended_rounds", lambda: [])
    monkeypatch.setattr(w, "rounds_in", lambda _state: [])
    watching.sweep()
    assert watching.errors == {} and watching.retry_at == {}
    assert json.loads((tmp_path / "beat.json").read_text())["errors"] == []


def test_a_suspended_round_marked_crashed_waits_again_and_resumes_with_its_answers(live, quiet_tasks):
    """A heartbeat sent as the run suspended can make the crash automation mark the waiting
    round Crashed: the watcher suspends it again (keeping its run input), never re-runs it,
    and resumes it when its clients answer."""
    from prefect import get_client
    from prefect.states import Crashed

    from flows.watcher import Watcher

    r = suspended_round(live)
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(r.run_id, Crashed(message="No heartbeat"), force=True)
    watching = Watcher()
    watching.sweep()
    assert state_of(r) == "Suspended"  # not AwaitingRetry: a re-run would be a second round
    for c in CLIENTS:
        answer(live, r, c, 10.0)
    watching.sweep()
    assert state_of(r) != "Suspended" and "answered" in resumed_because(r)
