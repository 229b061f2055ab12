"""CI smoke test of the deployed pipeline against the real services.

    python -m infra.smoke

Starts the S3 server and the Prefect server (own ports, a temporary state folder),
deploys prefect.yaml, starts a worker and the watcher, enrolls a device, starts the
`ecos-smoke` deployment, and plays the device through the real path: it gets its
invitation, answers with no storage or Prefect credentials, and uploads through the
pre-signed URL. Asserts that the round completes, that it waited without holding the
worker (Suspended state seen), and that the artifacts are in the bucket. Also: an object
over s3fs's 50 MiB part size round-trips through the store with the worker's storage
options (read back in ranges), and no answer of the Prefect API contains the S3 secret
or an enrolled device's key. Every service is stopped by PID at the end, also when a
step fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from infra.processes import _http, free_port

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def step(msg: str) -> None:
    print(f"smoke [{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(cmd: list[str], env: dict[str, str], **kw) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, **kw)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


def wait_for_state(run_id: str, env: dict[str, str], timeout_s: float) -> list[str]:
    """Poll the flow run until it is final; return the state names it went through."""
    seen: list[str] = []
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        state = _api(env, f"/flow_runs/{run_id}")["state"] or {}  # type: ignore[index]
        if state.get("name") and (not seen or seen[-1] != state["name"]):
            seen.append(state["name"])
            step(f"flow run state: {state['name']}")
        if state.get("type") in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return seen
        time.sleep(1.0)
    raise TimeoutError(f"flow run {run_id} not final after {timeout_s:.0f} s; states {seen}")


def _raw(env: dict[str, str], path: str, body: dict | None = None) -> bytes:
    """The Prefect API, retried on the answers Prefect's own client retries (503: SQLite busy)."""
    status, payload = _http(f"{env['PREFECT_API_URL']}{path}", "GET" if body is None else "POST", body, timeout=10)
    if status >= 300:
        raise RuntimeError(f"Prefect API {path}: HTTP {status} {payload[:300]!r}")
    return payload


def _api(env: dict[str, str], path: str, body: dict | None = None) -> object:
    return json.loads(_raw(env, path, body))


def worker_store(env: dict[str, str]):  # noqa: ANN201 - a Store; imported late (the smoke starts fast)
    """The store as the worker and watcher open it: Settings from the services' env."""
    from ecos_core.settings import Settings
    from ecos_core.storage.store import Store

    url = env["ECOS_STORE"]
    settings = Settings(store=url, s3_endpoint=env["ECOS_S3_ENDPOINT"], s3_key=env["ECOS_S3_KEY"],
                        s3_secret=env["ECOS_S3_SECRET"])  # fmt: skip
    return Store(url, settings.storage_options(url))


def large_object_round_trip(env: dict[str, str]) -> None:
    """An array the size of a 10,000-image domain's combined features (56 MB): s3fs writes
    it in parts and reads it in ranges, which fail unless the store's botocore checks
    checksums only when required (rclone sends the whole object's CRC with each range)."""
    import numpy as np

    store, t0 = worker_store(env), time.monotonic()
    array = np.random.default_rng(0).standard_normal((10_000 * 1400 + 17,), dtype=np.float32)
    store.write_npy("smoke-large/features.npy", array)
    assert np.array_equal(store.read_npy("smoke-large/features.npy"), array), "the large array came back changed"
    path, start = store.path("smoke-large/features.npy"), 52 * 1024 * 1024
    expected = array.tobytes()[start - 128 : start + 4096 - 128]  # .npy header: 128 bytes
    assert store.fs.cat_file(path, start=start, end=start + 4096) == expected, "a ranged read came back changed"
    store.delete("smoke-large/features.npy")
    step(f"a {array.nbytes / 2**20:.0f} MiB object written and read back in ranges in {time.monotonic() - t0:.1f} s")


def enrolled_keys(env: dict[str, str]) -> list[str]:
    """Every enrolled device's HMAC key, from the registry in the store."""
    from ecos_core.exchange.auth import enrolled_clients, load_enrollment

    store = worker_store(env)
    return [load_enrollment(store, c).key_b64 for c in enrolled_clients(store)]


def api_answers(env: dict[str, str], run_id: str) -> dict[str, bytes]:
    """What anyone who can reach the Prefect API reads about the deployments and runs."""
    out = {f"POST {p}": _raw(env, p, b) for p, b in (
        ("/block_documents/filter", {"include_secrets": False}), ("/deployments/filter", {}),
        ("/flow_runs/filter", {}), ("/task_runs/filter", {}), ("/variables/filter", {}), ("/artifacts/filter", {}),
        ("/work_pools/filter", {}), (f"/flow_runs/{run_id}/input/filter", {"prefix": "", "limit": 200}))}  # fmt: skip
    for block in json.loads(out["POST /block_documents/filter"]):
        out[f"GET /block_documents/{block['id']}"] = _raw(env, f"/block_documents/{block['id']}")
    for offset in range(0, 100_000, 200):  # every log line of every run, worker and watcher included
        page = _raw(env, "/logs/filter", {"limit": 200, "offset": offset, "sort": "TIMESTAMP_ASC"})
        out[f"POST /logs/filter offset {offset}"] = page
        if len(json.loads(page)) < 200:
            break
    out[f"GET /flow_runs/{run_id}/logs/download"] = _raw(env, f"/flow_runs/{run_id}/logs/download")
    return out


def assert_no_secret_in_api(env: dict[str, str], run_id: str) -> None:
    """Fail if any API answer holds the S3 secret or a device key (issue 16, item 4)."""
    secrets = {"the S3 secret": env["ECOS_S3_SECRET"], **{f"device key {i}": k for i, k in enumerate(enrolled_keys(env))}}
    assert len(secrets) > 1, "no enrolled device in the registry: nothing to look for"
    answers = api_answers(env, run_id)
    for where, body in answers.items():
        for what, value in secrets.items():
            for form in {value, json.dumps(value)[1:-1]}:  # as sent, and as JSON escapes it
                assert form.encode() not in body, f"Prefect API {where} returns {what}"
    step(f"no S3 secret or device key in {len(answers)} Prefect API answers ({sum(map(len, answers.values()))} bytes)")


def report_overhead(run_id: str, env: dict[str, str]) -> None:
    """Orchestration overhead of the round: its running time not spent inside tasks.
    Suspended time (waiting for the device) is not running time, so it is not counted."""
    flow = _api(env, f"/flow_runs/{run_id}")
    children = _api(env, "/flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"operator": "or_", "any_": [run_id]}}})
    runs = [run_id] + [c["id"] for c in children]  # type: ignore[union-attr]
    tasks = _api(env, "/task_runs/filter", {"flow_runs": {"id": {"any_": runs}}, "limit": 200})
    inside = sum(t["total_run_time"] for t in tasks if t.get("total_run_time"))  # type: ignore[union-attr]
    running = flow["total_run_time"]  # type: ignore[index]
    from datetime import datetime

    states = sorted(_api(env, f"/flow_run_states/?flow_run_id={run_id}"), key=lambda st: st["timestamp"])  # type: ignore[arg-type]
    stamps = [datetime.fromisoformat(st["timestamp"]) for st in states] + [datetime.fromisoformat(flow["end_time"])]  # type: ignore[index]
    spent: dict[str, float] = {}
    for st, t0, t1 in zip(states, stamps, stamps[1:]):
        spent[st["name"]] = spent.get(st["name"], 0.0) + (t1 - t0).total_seconds()
    wall = (stamps[-1] - stamps[0]).total_seconds() - spent.get("Suspended", 0.0)
    step(f"overhead: {wall:.1f} s of wall time outside the wait for the device, {inside:.1f} s inside {len(tasks)} "
         f"task runs; running {running:.1f} s (orchestration inside running flows: {running - inside:+.1f} s); "
         f"time per state: " + ", ".join(f"{k} {v:.1f} s" for k, v in spent.items()))  # fmt: skip


def screenshots(env: dict[str, str], run_id: str, out: Path) -> None:
    """What a person sees in the Prefect UI: the deployments, the runs, the smoke round's run
    page and its artifacts."""
    ui = env["PREFECT_API_URL"].removesuffix("/api")
    out.mkdir(parents=True, exist_ok=True)
    pages = (("deployments", "/deployments"), ("flow-run", f"/runs/flow-run/{run_id}"),
             ("artifacts", f"/runs/flow-run/{run_id}?tab=Artifacts"), ("runs", "/runs"))  # fmt: skip
    for name, page in pages:
        subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={tempfile.mkdtemp()}", "--window-size=1400,1000", "--virtual-time-budget=15000",
                        f"--screenshot={out / name}.png", ui + page], capture_output=True, timeout=90)  # fmt: skip
        step(f"screenshot {out / name}.png")


def ingest_user_pool(env: dict[str, str], state_dir: Path) -> str:
    """A user's pool in the bucket: a manifest mixing the user's own image files (PNG scans
    of digits) with built-in domains by reference, ingested into shards with `ecos pool ingest`."""
    import pandas as pd

    from ecos_core.pool.sources import source_rows

    ecos, files = str(BIN / "ecos"), state_dir / "user-pool"
    run([ecos, "data", "export", "builtin:mnist", "--max-samples", "150", "--seed", "3", "--out", str(files)], env)
    scans = pd.DataFrame([(str(p), p.parent.name, "scans") for p in sorted(files.glob("*/*.png"))],
                         columns=["uri", "label", "domain"])  # fmt: skip
    builtin = [source_rows(f"builtin:{d}:{n}")[["uri", "label", "domain"]] for d, n in (("mnistm", 400), ("synth", 200),
                                                                                         ("animal", 200))]  # fmt: skip
    rows = pd.concat([scans, *builtin], ignore_index=True)
    rows.to_csv(state_dir / "pool.csv", index=False)
    pool_url = env["ECOS_STORE"] + "/pools/ci"
    step(f"ingesting a user pool of {len(rows)} images (files + built-in references) into {pool_url}")
    out = run([ecos, "pool", "ingest", str(state_dir / "pool.csv"), "--to", pool_url, "--shard-size", "128"], env, timeout=300)
    step(out.stdout.strip().splitlines()[-1])
    return pool_url


def main() -> int:
    state_dir = Path(tempfile.mkdtemp(prefix="ecos-smoke-"))
    env = {**os.environ, "ECOS_INFRA_DIR": str(state_dir / "infra"), "ECOS_S3_PORT": str(free_port()),
           "ECOS_PREFECT_PORT": str(free_port()), "ECOS_S3_PREFIX": "smoke", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "ECOS_S3_KEY": "ecos-ci-key", "ECOS_S3_SECRET": os.urandom(12).hex()}  # fmt: skip
    services = [str(BIN / "python"), "-m", "infra.services"]
    start = time.monotonic()
    try:
        step("starting the S3 server and the Prefect server")
        run([*services, "up", "s3", "prefect"], env, timeout=240)
        env.update(line.removeprefix("export ").split("=", 1) for line in
                   run([*services, "env"], env).stdout.split("\n") if line.startswith("export "))  # fmt: skip
        env = {k: v.strip("'\"") for k, v in env.items()}
        large_object_round_trip(env)
        step("deploying prefect.yaml")
        run([str(BIN / "python"), "-m", "infra.deploy"], env, timeout=300)
        step("starting a worker and the watcher")
        run([*services, "up", "worker", "watcher"], env, timeout=240)

        device = state_dir / "device"
        ecos = str(BIN / "ecos")
        run([ecos, "clients", "enroll", "ci-device", "--out", str(device / "enrollment.json")], env)
        run([ecos, "data", "export", "builtin:mnistm", "--max-samples", "80", "--seed", "7", "--out", str(device / "images")], env)
        pool_url = ingest_user_pool(env, state_dir)
        round_id = f"ci-{int(time.time())}"
        step(f"starting deployment ecos-round/ecos-smoke the way the UI does (API create_flow_run), round {round_id}, "
             f"on the user pool {pool_url}")  # fmt: skip
        deployment = _api(env, "/deployments/name/ecos-round/ecos-smoke")
        cfg = deployment["parameters"]["cfg"]  # type: ignore[index]
        cfg["data"]["pool"] = pool_url  # as a person edits the typed cfg parameter in the UI
        created = _api(env, f"/deployments/{deployment['id']}/create_flow_run",  # type: ignore[index]
                       {"parameters": {"round_id": round_id, "cfg": cfg}, "idempotency_key": round_id})  # retried: one run
        run_id = created["id"]  # type: ignore[index]
        nightly = _api(env, "/deployments/name/ecos-index/ecos-index-nightly")
        assert nightly["schedules"], "the index deployment has no schedule"  # type: ignore[index]

        run([ecos, "clients", "invitation", "ci-device", "--round", round_id, "--out", str(device / "invite.json"),
             "--wait", "240"], env)  # fmt: skip
        # The device: no storage keys, no Prefect API, only its invitation and enrollment.
        device_env = {k: v for k, v in env.items() if not k.startswith(("ECOS_S3", "AWS_", "PREFECT_API"))}
        answer = run([ecos, "client", "respond", "--invite", str(device / "invite.json"), "--enrollment",
                      str(device / "enrollment.json"), "--ledger", str(device / "ledger.json"), "--data",
                      str(device / "images"), "--no-progress"], device_env)  # fmt: skip
        step(answer.stdout.strip())

        states = wait_for_state(run_id, env, timeout_s=300)
        assert states[-1] == "Completed", f"smoke round ended {states[-1]}; states {states}"
        # from the server's state history: the watcher may resume the run before this poll sees it suspended
        history = [st["name"] for st in sorted(_api(env, f"/flow_run_states/?flow_run_id={run_id}"),  # type: ignore[arg-type]
                                               key=lambda st: st["timestamp"])]  # fmt: skip
        assert "Suspended" in history, f"the round never suspended (states {history}): it held its worker"
        name = _api(env, f"/flow_runs/{run_id}")["name"]  # type: ignore[index]
        assert name == f"round-{round_id}", f"the run is named {name!r}, not after its round"
        keys = [f"ecos-{round_id}-{what}" for what in ("answers", "results", "report")]
        found = _api(env, "/artifacts/filter", {"artifacts": {"key": {"any_": keys}}})
        assert {a["key"] for a in found} == set(keys), f"artifacts {[a['key'] for a in found]}, expected {keys}"  # type: ignore[union-attr]
        step(f"run {name!r} with artifacts {', '.join(keys)}")
        logs = _api(env, "/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200})
        suspending = [entry for entry in logs if "Suspending flow run" in entry["message"]]  # type: ignore[union-attr]
        assert len(suspending) == 1, f"'Suspending flow run' logged {len(suspending)} times (only the first run suspends)"

        fs = worker_store(env).fs  # with the worker's options (large objects readable)
        prefix = env["ECOS_STORE"].removeprefix("s3://") + f"/rounds/{round_id}"
        stored = {p.removeprefix(prefix + "/") for p in fs.find(prefix)}
        shards = fs.find(env["ECOS_STORE"].removeprefix("s3://") + "/pools/ci/shards")
        assert shards, "the user pool's shards are not in the bucket"
        for name in ("report.md", "results.csv", "results.png", "manifest.json", "ledger.json", "steps.json", "probe/probe.json",
                     "probe/centroids.npy", "responses/ci-device.json", "accepted/ci-device.json",
                     "selections/ci-device/ecos.npy", "models/ci-device/ecos.pt"):  # fmt: skip
            assert name in stored, f"{name} missing from s3://{prefix}: {sorted(stored)}"
        steps = dict(json.loads(fs.cat_file(f"{prefix}/steps.json"))["steps"])
        assert all(v >= 0 for v in steps.values()) and steps["wait for responses"] >= 1.0, f"step times {steps}"
        step("step times: " + ", ".join(f"{k} {v:.1f} s" for k, v in steps.items()))
        bucket = env["ECOS_STORE"].removeprefix("s3://").split("/", 1)[0]
        results = fs.find(f"{bucket}/prefect-results")
        assert results, "no Prefect results persisted in the bucket"
        step(f"{len(results)} Prefect task/flow results persisted in s3://{bucket}/prefect-results")
        report_overhead(run_id, env)
        assert_no_secret_in_api(env, run_id)
        if os.environ.get("ECOS_SMOKE_SCREENSHOTS"):
            screenshots(env, run_id, Path(os.environ["ECOS_SMOKE_SCREENSHOTS"]))
        step(f"smoke passed in {time.monotonic() - start:.0f} s: round {round_id} Completed, {len(stored)} objects in the bucket")
        return 0
    except Exception as err:  # noqa: BLE001 - report, then tear down
        import traceback

        traceback.print_exc()
        step(f"FAILED: {type(err).__name__}: {err}")
        for log in sorted((state_dir / "infra").glob("**/*.log")):
            print(f"--- {log.name} (tail)\n{log.read_text(errors='replace')[-2500:]}", flush=True)
        return 1
    finally:
        subprocess.run([*services, "down"], env=env, cwd=REPO)


if __name__ == "__main__":
    sys.exit(main())
