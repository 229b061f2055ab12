"""Publish the round's probe (centroids + feature-space identity + σ + deadline, and in the
combined feature space the adapted CNN's weights) and one invitation per client
(pre-signed URLs + the probe's MAC under that client's key)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from prefect import get_run_logger, task

from ecos_core.storage import layout
from ecos_core.exchange.auth import load_enrollment, probe_mac
from ecos_core.embedding.feature_space import BackboneSpec
from ecos_core.exchange.protocol import Invitation, check_adapted, decode_probe, encode_probe
from tasks import catalog
from tasks.common import STORAGE_RETRIES
from tasks.index import load_centroids


@task(name="publish-probe", **STORAGE_RETRIES)
def publish_probe(
    store_url: str, round_id: str, index_key: str, backbone: dict, sigma: float, delta: float, deadline_s: float,
    clients: list[str], coverage: str = "ball", adapted: dict | None = None,
) -> dict:  # fmt: skip
    """Idempotent: a re-run of the round (after a suspend or a crash) finds its probe and
    publishes nothing new, so the deadline and the clients' invitations stay valid."""
    store = catalog.store(store_url)
    json_key, npy_key, npz_key = layout.probe_json(round_id), layout.probe_centroids(round_id), layout.probe_adapted(round_id)
    if store.exists(json_key):
        probe_json, npy = store.read_bytes(json_key), store.read_bytes(npy_key)
        probe, _ = decode_probe(probe_json, npy, store.uri(json_key), round_id)
        if (probe.radii() is not None) != (coverage == "ball"):
            # clients answered (or will answer) under the published rule; the cloud must count the same way
            raise ValueError(f"round {round_id}: its published probe uses the "
                             f"{'ball' if probe.radii() is not None else 'nearest'} coverage rule, this run asks for "
                             f"{coverage!r}; start a new round id to change the rule")  # fmt: skip
        if probe.adapted_sha256 != (adapted and adapted["sha256"]):
            raise ValueError(f"round {round_id}: its published probe is in another feature space than this run's; "
                             "start a new round id to change it")  # fmt: skip
        get_run_logger().info("probe of round %s already published: reused", round_id)
    else:
        # a whole second: the pre-signed URLs (signed in whole seconds) expire exactly then
        deadline = (datetime.now(timezone.utc) + timedelta(seconds=deadline_s)).replace(microsecond=0)
        centroids, radii = load_centroids(store_url, index_key)
        probe, probe_json, npy = encode_probe(round_id, centroids, BackboneSpec(**backbone), sigma, delta, deadline,
                                              radii if coverage == "ball" else None,
                                              adapted and adapted["sha256"])  # fmt: skip
        keys = {c: load_enrollment(store, c).key_b64 for c in clients}  # fails before anything is written
        # centroids and weights first, probe.json last: whoever sees probe.json finds a complete probe
        store.write_bytes(npy_key, npy)  # may be left by a failed attempt: unseen until probe.json exists
        if adapted:
            store.write_bytes(npz_key, check_adapted(probe, store.read_bytes(layout.adapted_space(adapted["key"]))))
        store.write_bytes(json_key, probe_json, overwrite=False)
        # the responses "folder" exists before any device uploads: rclone, which keeps objects
        # as files, answered 500 to concurrent first PUTs racing to create it (dot-names are never listed)
        store.write_bytes(f"{layout.responses_prefix(round_id)}/.open", b"")
        for client_id, key in keys.items():
            invitation = Invitation(
                round_id=round_id, client_id=client_id, deadline=probe.deadline,
                probe_url=store.presign(json_key, "get", probe.deadline), centroids_url=store.presign(npy_key, "get", probe.deadline),
                response_url=store.presign(layout.response(round_id, client_id), "put", probe.deadline),
                probe_hmac_sha256=probe_mac(key, probe_json),
                adapted_url=store.presign(npz_key, "get", probe.deadline) if adapted else None,
            )  # fmt: skip
            store.write_bytes(layout.invitation(round_id, client_id), invitation.model_dump_json(indent=1).encode())
    weights = adapted["bytes"] if adapted else 0
    return {"round_id": round_id, "k": probe.k, "dim": probe.dim, "bytes": len(probe_json) + len(npy) + weights,
            "deadline": probe.deadline.isoformat(), "uri": store.uri(json_key)}  # fmt: skip
