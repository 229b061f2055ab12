"""Publish the round's probe (centroids + feature-space identity + σ + deadline, and in the
combined feature space the adapted CNN's weights) and one invitation per client
(pre-signed URLs + the probe's MAC under that client's key)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from prefect import get_run_logger, task

from ecos_core.storage import layout
from ecos_core.exchange.auth import load_enrollment, probe_mac
from ecos_core.embedding.feature_space import BackboneSpec
from ecos_core.exchange.protocol import Invitation, Probe, check_adapted, decode_probe, encode_probe
from ecos_core.storage.store import Store
from tasks import catalog
from tasks.common import STORAGE_RETRIES
from tasks.index import load_centroids


@task(name="publish-probe", **STORAGE_RETRIES)
def publish_probe(
    store_url: str, round_id: str, index_key: str, backbone: dict, sigma: float, delta: float, deadline_s: float,
    clients: list[str], coverage: str = "ball", adapted: dict | None = None,
) -> dict:  # fmt: skip
    """Idempotent: a re-run of the round (after a suspend or a crash) finds its probe and
    publishes nothing new but the invitations a crash left unwritten, so the deadline and the
    clients' invitations stay valid. The index and adapted space the probe was made from are
    recorded beside it and returned: the round samples with those, whatever it rebuilt."""
    store, log = catalog.store(store_url), get_run_logger()
    reused = store.exists(layout.probe_json(round_id))
    json_key, npy_key, npz_key = layout.probe_json(round_id), layout.probe_centroids(round_id), layout.probe_adapted(round_id)
    if reused:
        probe_json, npy = store.read_bytes(json_key), store.read_bytes(npy_key)
        probe, _ = decode_probe(probe_json, npy, store.uri(layout.round_key(round_id, "probe")), round_id)
        if (probe.radii() is not None) != (coverage == "ball"):
            # clients answered (or will answer) under the published rule; the cloud must count the same way
            raise ValueError(f"round {round_id}: its published probe uses the "
                             f"{'ball' if probe.radii() is not None else 'nearest'} coverage rule, this run asks for "
                             f"{coverage!r}; start a new round id to change the rule")  # fmt: skip
        source = layout.probe_source(round_id)
        made = store.read_json(source) if store.exists(source) else {"index_key": index_key, "adapted": adapted}
        index_key, adapted = made["index_key"], made["adapted"]
        log.info("probe of round %s already published: reused", round_id)
    else:
        # a whole second: the pre-signed URLs (signed in whole seconds) expire exactly then
        deadline = (datetime.now(timezone.utc) + timedelta(seconds=deadline_s)).replace(microsecond=0)
        centroids, radii = load_centroids(store_url, index_key)
        probe, probe_json, npy = encode_probe(round_id, centroids, BackboneSpec(**backbone), sigma, delta, deadline,
                                              radii if coverage == "ball" else None,
                                              adapted and adapted["sha256"])  # fmt: skip
        for client_id in clients:
            load_enrollment(store, client_id)  # an unknown client fails before anything is written
        # centroids, weights and source first, probe.json last: whoever sees probe.json finds a complete probe
        store.write_bytes(npy_key, npy)  # may be left by a failed attempt: unseen until probe.json exists
        if adapted:
            store.write_bytes(npz_key, check_adapted(probe, store.read_bytes(layout.adapted_space(adapted["key"]))))
        store.write_json(layout.probe_source(round_id), {"index_key": index_key, "adapted": adapted})
        store.write_bytes(json_key, probe_json, overwrite=False)
        # the responses "folder" exists before any device uploads: rclone, which keeps objects
        # as files, answered 500 to concurrent first PUTs racing to create it (dot-names are never listed)
        store.write_bytes(f"{layout.responses_prefix(round_id)}/.open", b"")
    written = write_invitations(store, probe, probe_json, clients)
    if written and reused:
        log.warning("round %s: invitations of %s were missing (an interrupted publish): written now", round_id, written)
    weights = adapted["bytes"] if adapted else 0
    return {"round_id": round_id, "k": probe.k, "dim": probe.dim, "bytes": len(probe_json) + len(npy) + weights,
            "deadline": probe.deadline.isoformat(), "uri": store.uri(json_key), "index_key": index_key,
            "adapted": adapted}  # fmt: skip


def write_invitations(store: Store, probe: Probe, probe_json: bytes, clients: list[str]) -> list[str]:
    """Each client's invitation that is not in the store yet (all of them on a first publish);
    the clients written. Same deadline and MAC whenever written: they derive from the probe."""
    rid, missing = probe.round_id, [c for c in clients if not store.exists(layout.invitation(probe.round_id, c))]
    for client_id in missing:
        def url(key: str, method: str = "get") -> str:
            return store.presign(key, method, probe.deadline)

        invitation = Invitation(
            round_id=rid, client_id=client_id, deadline=probe.deadline, probe_url=url(layout.probe_json(rid)),
            centroids_url=url(layout.probe_centroids(rid)), response_url=url(layout.response(rid, client_id), "put"),
            probe_hmac_sha256=probe_mac(load_enrollment(store, client_id).key_b64, probe_json),
            adapted_url=url(layout.probe_adapted(rid)) if probe.adapted_sha256 else None,
        )  # fmt: skip
        store.write_bytes(layout.invitation(rid, client_id), invitation.model_dump_json(indent=1).encode())
    return missing


def published_index(round_id: str, probe: dict, built: str, ingested: bool) -> tuple[str, dict | None]:
    """The index (and adapted space) a round samples with: the one its probe was made from.
    An ingested pool may have grown since (a nightly ingest while the round was suspended):
    the round keeps the published index, which its devices answered against. The built-in
    pool cannot change unless the config did, and then the round's answers are meaningless."""
    if probe["index_key"] != built and not ingested:
        raise ValueError(f"round {round_id}: its probe was made from index {probe['index_key']}, this run built "
                         f"{built} (the config, or ecos's index format, changed since); start a new round id")  # fmt: skip
    return probe["index_key"], probe["adapted"]
