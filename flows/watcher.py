"""The watcher: judges the uploads of suspended rounds as they land, and resumes each
round once every expected client has a valid answer or its deadline has passed.

A suspended round holds no worker slot. This small loop (one process, `ecos watch`)
asks the Prefect API for suspended `ecos-round` runs and judges each new upload at once
(tasks/uploads.py: the first valid answer is copied to the cloud-only accepted/, so
nothing uploaded later can replace it). Chosen over having devices call the Prefect
API: devices then need no Prefect credentials, only their pre-signed upload URL.

Nothing stops the loop: each round is handled on its own (a bad upload is a refusal, a
broken probe resumes its round with the reason, an unreachable store or API is retried
with backoff), and every sweep writes a heartbeat file, which `ecos infra up watcher`
reads to know that this start is alive; infra/supervise.py restarts it if it dies.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path

from prefect import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.flow_runs import resume_flow_run
from prefect.states import Failed, Scheduled, State

from ecos_core.storage import layout
from ecos_core.config import RoundConfig
from ecos_core.exchange.protocol import ProtocolError
from ecos_core.settings import Settings
from flows.round_flow import ResponsesReady, round_id_of_run
from tasks import catalog
from tasks.probe_check import round_terms
from tasks.uploads import answered, judge_new_uploads

MAX_BACKOFF_S = 10.0
MAX_CRASH_RETRIES = 3  # a round that crashed this often is left for a person (a crash loop is a bug)
CRASH_RETRY_WINDOW_S = 3600.0  # only runs that crashed this recently are retried
STORE_MEMORY_S = 3600.0  # the heartbeat goes to every store a round was seen in this recently


def log(message: str) -> None:
    print(f"{datetime.now(timezone.utc).isoformat(timespec='milliseconds')} {message}", flush=True)


def one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def rounds_in(state: StateType) -> list[FlowRun]:
    """Every `ecos-round` run in `state`, page by page (the API answers at most 200 at once)."""
    found: list[FlowRun] = []
    with get_client(sync_client=True) as client:
        while True:
            page = client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["ecos-round"])),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[state]))),
                limit=200, offset=len(found),
            )  # fmt: skip
            found += page
            if len(page) < 200:
                return found


def suspended_rounds() -> list[FlowRun]:
    return rounds_in(StateType.PAUSED)


def retry_crashed(run: FlowRun) -> str | None:
    """A deployed round whose process died (a worker SIGKILLed mid-training, the machine
    rebooted) is scheduled again: the re-run finds its finished steps in the store and goes
    on. After MAX_CRASH_RETRIES it is marked Failed: a crash loop is a bug for a person."""
    if run.deployment_id is None or run.state is None:  # nothing would pick a re-scheduled ad-hoc run up
        return None
    if (datetime.now(timezone.utc) - run.state.timestamp).total_seconds() > CRASH_RETRY_WINDOW_S:
        return None  # crashed long ago (before this watcher's time): left as it is
    with get_client(sync_client=True) as client:
        states = sorted(client.read_flow_run_states(run.id), key=lambda s: s.timestamp)
        before = next((s for s in reversed(states) if s.type != StateType.CRASHED), None)
        if before is not None and before.type == StateType.PAUSED:
            # a heartbeat sent as the run suspended outlived the Suspended event, so the crash
            # automation took the waiting round for a dead one: it has no process by design
            client.set_flow_run_state(run.id, State(type=StateType.PAUSED, name=before.name,
                                                    state_details=before.state_details), force=True)  # fmt: skip
            return "was waiting, not dead: suspended again"
        crashes = sum(s.type == StateType.CRASHED for s in states)
        if crashes > MAX_CRASH_RETRIES:
            client.set_flow_run_state(run.id, Failed(message=f"crashed {crashes} times; not retried again"), force=True)
            return f"crashed {crashes} times: marked Failed, not retried again"
        client.set_flow_run_state(run.id, Scheduled(name="AwaitingRetry"), force=True)
    return f"crashed ({crashes} of {MAX_CRASH_RETRIES + 1} times allowed); scheduled again"


def round_of(run: FlowRun) -> tuple[str, RoundConfig, str]:
    params = run.parameters
    return (params.get("round_id") or round_id_of_run(str(run.id)), RoundConfig.model_validate(params.get("cfg") or {}),
            params.get("store_url") or Settings().store)  # fmt: skip


_reported: set[str] = set()  # judging errors already logged: a failing upload is not logged every sweep


def tend(run: FlowRun) -> ResponsesReady | None:
    """Judge the round's new uploads; why it may resume now, or None to keep it waiting.
    An upload that cannot be judged (the store failing on it) is logged and judged again
    next sweep, and never keeps the round from resuming at its deadline."""
    round_id, cfg, store_url = round_of(run)
    store = catalog.store(store_url)
    clients = list(cfg.clients)
    try:
        terms = round_terms(store_url, round_id, tuple(clients))
    except (ProtocolError, ValueError, FileNotFoundError) as err:  # no device can answer a probe that does not verify
        problem = f"its probe is unreadable ({one_line(err)})"
        return ResponsesReady(reason=f"{problem}; resumed so the round reports it", probe_error=problem)
    unjudged: list[str] = []
    for v in judge_new_uploads(store, terms, unjudged):
        outcome = "accepted" if v["verdict"] == "accepted" else f"refused: {v['reason']}"
        log(f"round {round_id}: {v['key']}: {outcome}")
    for message in set(unjudged) - _reported:
        log(f"round {round_id}: {message}")
    if len(_reported) > 10_000:  # bounded: a long-lived watcher forgets old ones
        _reported.clear()
    _reported.update(unjudged)
    have = answered(store, round_id) & set(clients)
    if have >= set(clients):
        return ResponsesReady(reason=f"all {len(clients)} expected clients answered")
    if datetime.now(timezone.utc) >= terms.deadline:
        left = f"; {len(unjudged)} upload(s) not judged yet" if unjudged else ""
        return ResponsesReady(reason=f"deadline passed with {len(have)} of {len(clients)} answers{left}")
    return None


def resume_if_ready(run: FlowRun) -> str | None:
    if (ready := tend(run)) is None:
        return None
    resume_flow_run(run.id, run_input=ready.model_dump(exclude_none=True))
    return ready.reason


class Watcher:
    """One sweep at a time; a round that fails is retried after a backoff of its own, so
    it never slows the others."""

    def __init__(self, heartbeat: Path | None = None) -> None:
        self.heartbeat, self.sweeps, self.started = heartbeat, 0, datetime.now(timezone.utc)
        self.retry_at: dict[str, tuple[float, float]] = {}  # round id -> (when, backoff)
        self.errors: dict[str, str] = {}
        self.stores: dict[str, float] = {Settings().store: float("inf")}  # store -> last seen (monotonic)

    def sweep(self) -> list[tuple[str, str]]:
        resumed = []
        try:
            runs = suspended_rounds()
            self.errors.pop("prefect", None)
        except Exception as err:  # noqa: BLE001 - the API down: try again next sweep
            self._error("prefect", f"Prefect API: {one_line(err)}")
            runs = []
        for run in runs:
            if reason := self._handle(run, resume_if_ready):
                resumed.append((str(run.id), reason))
                log(f"resumed flow run {run.id} ({run.name}): {reason}")
        try:
            crashed = rounds_in(StateType.CRASHED)
        except Exception:  # noqa: BLE001 - reported above when the API is down
            crashed = None
        for run in crashed or []:
            if reason := self._handle(run, retry_crashed):
                log(f"flow run {run.id} ({run.name}) {reason}")
        if "prefect" not in self.errors and crashed is not None:
            self._forget_all_but({str(r.id) for r in [*runs, *crashed]})
        self.sweeps += 1
        now = time.monotonic()
        self.stores.update({str(r.parameters["store_url"]): now for r in runs if r.parameters.get("store_url")})
        self._beat({url for url, seen in self.stores.items() if now - seen < STORE_MEMORY_S})
        return resumed

    def _forget_all_but(self, tended: set[str]) -> None:
        """Errors and backoffs of runs no longer suspended or crashed (failed, completed,
        retried) are history: the heartbeat and `ecos infra status` show current ones only."""
        for key in [k for k in self.errors if k != "prefect" and k not in tended]:
            self.errors.pop(key, None)
        for key in [k for k in self.retry_at if k not in tended]:
            self.retry_at.pop(key, None)

    def _handle(self, run: FlowRun, step) -> str | None:  # noqa: ANN001 - tend or retry_crashed
        """step(run), isolated: its failure is logged and retried after a backoff of this run's own."""
        key = str(run.id)
        if self.retry_at.get(key, (0.0, 0.0))[0] > time.monotonic():
            return None
        try:
            reason = step(run)
        except Exception as err:  # noqa: BLE001 - one round's trouble never stops the others
            backoff = min(2 * self.retry_at.get(key, (0.0, 0.5))[1], MAX_BACKOFF_S)
            self.retry_at[key] = (time.monotonic() + backoff, backoff)
            self._error(key, f"flow run {key} ({run.name}): {one_line(err)}; retrying in {backoff:g} s")
            return None
        self.retry_at.pop(key, None)
        self.errors.pop(key, None)
        return reason

    def _error(self, key: str, message: str) -> None:
        if self.errors.get(key, "").split("; retrying")[0] != message.split("; retrying")[0]:
            log(f"error: {message}")  # once per distinct error, not once per sweep
        self.errors[key] = message

    def _beat(self, stores: set[str]) -> None:
        """The heartbeat: in a local file for infra, and in each store for its rounds (a
        round about to suspend warns when no watcher has swept lately)."""
        doc = {"pid": os.getpid(), "ppid": os.getppid(), "started_at": self.started.isoformat(), "sweeps": self.sweeps,
               "last_sweep_at": datetime.now(timezone.utc).isoformat(), "errors": sorted(self.errors.values())}  # fmt: skip
        for url in stores:
            try:
                catalog.store(url).write_json(layout.WATCHER_HEARTBEAT, doc)
            except Exception:  # noqa: BLE001 - an unreachable store is already in the errors
                pass
        if self.heartbeat is not None:
            tmp = self.heartbeat.with_name(f".{self.heartbeat.name}.{os.getpid()}")
            tmp.write_text(json.dumps(doc, indent=1))
            os.replace(tmp, self.heartbeat)  # readers never see half a file


def watch(interval_s: float = 2.0, once: bool = False, heartbeat: Path | None = None) -> None:
    watcher = Watcher(heartbeat)
    log(f"watching suspended ecos-round runs every {interval_s:g} s (pid {os.getpid()})")
    try:
        while True:
            watcher.sweep()
            if once:
                return
            time.sleep(interval_s)
    except KeyboardInterrupt:
        log("stopped")
