"""Publish the round's probe (centroids + feature-space identity + σ + deadline)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from prefect import task

from ecos_core import layout
from ecos_core.backbone import BackboneSpec
from ecos_core.protocol import encode_probe
from tasks import catalog
from tasks.common import STORAGE_RETRIES
from tasks.index import load_index


@task(name="publish-probe", **STORAGE_RETRIES)
def publish_probe(store_url: str, round_id: str, index_key: str, backbone: dict, sigma: float, delta: float, deadline_s: float) -> dict:
    store = catalog.store(store_url)
    deadline = datetime.now(timezone.utc) + timedelta(seconds=deadline_s)
    centroids = load_index(store_url, index_key).centroids
    probe, probe_json, npy = encode_probe(round_id, centroids, BackboneSpec(**backbone), sigma, delta, deadline)
    # centroids first, probe.json last: a client that sees probe.json finds a complete probe
    store.write_bytes(layout.probe_centroids(round_id), npy, overwrite=False)
    store.write_bytes(layout.probe_json(round_id), probe_json, overwrite=False)
    return {"round_id": round_id, "k": probe.k, "dim": probe.dim, "bytes": len(probe_json) + len(npy),
            "deadline": deadline.isoformat(), "uri": store.uri(layout.probe_json(round_id))}  # fmt: skip
