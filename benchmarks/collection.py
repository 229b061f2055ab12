"""Collection benchmark: N devices answer one round through their own pre-signed URLs on
the real S3 server (rclone, started here in a temporary run dir and stopped by PID); then
the time and the memory of the watcher's sweeps and of the round's collector.

    .venv/bin/python benchmarks/collection.py --sizes 200,1000,10000 --out benchmarks/results/collection

Per size: enrolling the clients, publishing the probe and N invitations, N concurrent
uploads (32 at a time), the watcher's first sweep (judges every upload: read, verify,
copy to accepted/, write its verdict), an idle sweep (nothing new: two listings), and
the collector's pass over the judged round. Memory: peak RSS during the step less the
RSS before it. Writes results.csv and collection.md.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import typer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


class StepMeter:
    """Wall time and peak RSS growth of this process over a `with` block."""

    def __init__(self) -> None:
        self.proc, self.stop = psutil.Process(), threading.Event()

    def __enter__(self) -> "StepMeter":
        self.base = self.peak = self.proc.memory_info().rss
        self.start = time.perf_counter()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def _watch(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.05)

    def __exit__(self, *_: object) -> None:
        self.seconds = time.perf_counter() - self.start
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)
        self.grew_mb = (self.peak - self.base) / 2**20


def one_size(n: int, url: str) -> dict:
    from ecos_core.storage import layout
    from ecos_core.exchange import transport
    from ecos_core.exchange.auth import enroll, signed_response_bytes
    from ecos_core.embedding.feature_space import FEATURE_DIM, BackboneSpec
    from ecos_core.exchange.protocol import decode_invitation, response_json_bytes
    from tasks import catalog, probe, responses
    from tasks.uploads import RoundTerms, answered, judge_new_uploads

    from faults import quiet_task_logs

    quiet_task_logs()
    store, k, rid = catalog.store(url), 100, f"bench-{n}"
    store.write_npy(layout.index_part("bench-index", "centroids.npy"),
                    np.random.default_rng(0).standard_normal((k, FEATURE_DIM)).astype("<f4"))  # fmt: skip
    store.write_npy(layout.index_part("bench-index", "radii.npy"), np.full(k, 2.0, "<f4"))
    clients = [f"dev-{i:05d}" for i in range(n)]
    row: dict = {"devices": n}
    with ThreadPoolExecutor(32) as pool:
        with StepMeter() as m:
            keys = dict(zip(clients, pool.map(lambda c: enroll(store, c).key_b64, clients)))
        row.update(enroll_s=m.seconds)
        with StepMeter() as m:
            published = probe.publish_probe.fn(url, rid, "bench-index", BackboneSpec().model_dump(mode="json"), 6.1,
                                               1e-5, 3600, clients)  # fmt: skip
        row.update(publish_s=m.seconds)
        invites = dict(zip(clients, pool.map(lambda c: decode_invitation(store.read_bytes(layout.invitation(rid, c)), c),
                                             clients)))  # fmt: skip
        rng = np.random.default_rng(1)
        bodies = {c: signed_response_bytes(response_json_bytes(rid, c, rng.normal(0, 6.1, k)), keys[c]) for c in clients}
        with StepMeter() as m:
            list(pool.map(lambda c: transport.put(invites[c].response_url, bodies[c]), clients))
        row.update(upload_s=m.seconds, uploads_per_s=n / m.seconds)
    terms = RoundTerms.load(store, rid, clients, k, 6.1, pd.Timestamp(published["deadline"]).to_pydatetime())
    with StepMeter() as m:
        judged = judge_new_uploads(store, terms)
        have = answered(store, rid)
    assert len(judged) == n and have == set(clients), (len(judged), len(have))
    row.update(first_sweep_s=m.seconds, first_sweep_mb=m.grew_mb)
    with StepMeter() as m:
        assert judge_new_uploads(store, terms) == [] and len(answered(store, rid)) == n
    row.update(idle_sweep_s=m.seconds, idle_sweep_mb=m.grew_mb)
    with StepMeter() as m:
        out = responses.collect_responses.fn(url, rid, clients, n, published["deadline"], 6.1, k, 1.0, False)
    assert len(out["accepted"]) == n and not out["rejected"]
    row.update(collect_s=m.seconds, collect_mb=m.grew_mb)
    return row


def main(
    sizes_: str = typer.Option("200,1000,10000", "--sizes", help="Numbers of devices, comma-separated."),
    out: Path = typer.Option(Path("benchmarks/results/collection"), help="Folder for results.csv and collection.md."),
) -> None:
    from infra import services
    from tasks import catalog

    run_dir = Path(tempfile.mkdtemp(prefix="ecos-collection-"))
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("ECOS_", "PREFECT_API_"))}
    environ.update(ECOS_INFRA_DIR=str(run_dir), ECOS_S3_PORT="0", ECOS_S3_BUCKET="ecos")
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        environ["ECOS_S3_PORT"] = str(s.getsockname()[1])
    cfg = services.Config.load(environ, dotenv=run_dir / "no.env")
    rows = []
    try:
        services.start("s3", cfg)
        key, secret = cfg.credentials(create=False)
        os.environ.update(ECOS_S3_ENDPOINT=cfg.s3_url, ECOS_S3_KEY=key, ECOS_S3_SECRET=secret, AWS_EC2_METADATA_DISABLED="true")
        catalog.store.cache_clear()
        for n in [int(s) for s in sizes_.split(",") if s.strip()]:
            print(f"collection: {n} devices …", flush=True)
            rows.append(one_size(n, f"s3://ecos/bench-{uuid.uuid4().hex[:8]}"))
            print(rows[-1], flush=True)
    finally:
        services.stop("s3", cfg, quiet=True)
    frame = pd.DataFrame(rows)
    out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out / "results.csv", index=False)
    from ecos_core.report import markdown_table

    text = ("# Collection benchmark\n\nrclone serve s3 on this machine; 32 concurrent uploads; "
            f"{os.cpu_count()} cores. Times in seconds, memory: peak RSS growth during the step (MB).\n\n"
            + markdown_table(frame, ".2f") + "\n")  # fmt: skip
    (out / "collection.md").write_text(text)
    print(text)


if __name__ == "__main__":
    typer.run(main)
