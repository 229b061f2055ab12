"""Is a round's published probe still the one its clients were invited with? The watcher
asks on every sweep: a probe changed or removed after publish can be answered by no device,
so its round is resumed at once to fail, naming the file."""

from __future__ import annotations

import functools

from ecos_core.exchange.auth import UnknownClient, load_enrollment, verify
from ecos_core.exchange.protocol import (
    MAX_ADAPTED_BYTES,
    MAX_CENTROID_BYTES,
    MAX_INVITATION_BYTES,
    MAX_PROBE_JSON_BYTES,
    ProtocolError,
    check_adapted,
    decode_invitation,
    decode_probe,
)
from ecos_core.storage import layout
from ecos_core.storage.store import Store, StoreError
from tasks import catalog
from tasks.uploads import RoundTerms


def round_terms(store_url: str, round_id: str, clients: tuple[str, ...]) -> RoundTerms:
    """A round's probe, verified again whenever one of its objects changes (one LIST per
    sweep gives their versions): a probe altered after publish is noticed at the next sweep.
    ProtocolError, ValueError or FileNotFoundError when the probe does not verify, or is
    gone: a round suspends only after publishing it, so no device can answer it any more."""
    store = catalog.store(store_url)
    found = store.versions(layout.round_key(round_id, "probe"))
    if layout.probe_json(round_id) not in found:
        raise FileNotFoundError(f"{store.uri(layout.probe_json(round_id))}: no such object (deleted after publish?)")
    limits = {layout.probe_json(round_id): MAX_PROBE_JSON_BYTES, layout.probe_centroids(round_id): MAX_CENTROID_BYTES,
              layout.probe_adapted(round_id): MAX_ADAPTED_BYTES}  # fmt: skip
    for key, limit in limits.items():  # an object grown past its limit is a broken probe, not a store failure
        if key in found and found[key].size > limit:
            raise ProtocolError(f"{store.uri(key)}: {found[key].size} bytes, larger than the {limit}-byte limit")
    return _verified_terms(store_url, round_id, clients, tuple(sorted((k, v.id) for k, v in found.items())))


@functools.lru_cache(maxsize=256)
def _verified_terms(store_url: str, round_id: str, clients: tuple[str, ...], versions: tuple) -> RoundTerms:
    """Kept per version of the probe's objects (`versions`): a failure raises and is not kept."""
    del versions  # the cache key only
    store = catalog.store(store_url)
    probe_json = store.read_bytes(layout.probe_json(round_id), MAX_PROBE_JSON_BYTES)
    folder = store.uri(layout.round_key(round_id, "probe"))  # decode_probe names <folder>/probe.json, /centroids.npy
    probe, _ = decode_probe(probe_json, store.read_bytes(layout.probe_centroids(round_id), MAX_CENTROID_BYTES),
                            folder, round_id)  # fmt: skip
    if probe.adapted_sha256 is not None:
        check_adapted(probe, store.read_bytes(layout.probe_adapted(round_id), MAX_ADAPTED_BYTES), folder)
    check_invited_with(store, round_id, clients, probe_json)
    return RoundTerms.load(store, round_id, list(clients), probe.k, probe.sigma, probe.deadline)


def check_invited_with(store: Store, round_id: str, clients: tuple[str, ...], probe_json: bytes) -> None:
    """ProtocolError unless probe.json is the one the clients were invited with: each
    invitation carries its MAC under the client's key, which nobody else can recompute. The
    first invitation that can be checked settles it (an invitation or key missing is skipped)."""
    mismatched = []
    for client_id in clients:
        key = layout.invitation(round_id, client_id)
        try:
            invitation = decode_invitation(store.read_bytes(key, MAX_INVITATION_BYTES), store.uri(key))
            key_b64 = load_enrollment(store, client_id).key_b64
        except (FileNotFoundError, UnknownClient, ValueError):  # ValueError: a broken invitation or registry entry
            continue  # nothing to check with here; a forged probe.json still fails every invitation's MAC
        except StoreError as err:
            if "larger than" in str(err):  # an oversized invitation: broken, like the above
                continue
            raise  # the store failing: checked again next sweep, never passed unchecked
        if verify(key_b64, probe_json, invitation.probe_hmac_sha256):
            return
        mismatched.append(client_id)
        if len(mismatched) >= 3:  # a changed probe.json fails them all: three say so
            break
    if mismatched:
        raise ProtocolError(f"{store.uri(layout.probe_json(round_id))}: changed after publish (it does not match the "
                            f"MAC in the invitations of {mismatched})")  # fmt: skip
