"""Where each artifact lives in the store: one function per key, one place to change them.

Every round's artifacts sit under rounds/<round_id>/. No key is both an object and a
"folder" (S3 servers that keep objects as files refuse that).
"""

from __future__ import annotations


def features(content_key: str) -> str:
    return f"features/{content_key}.npy"


def index_part(index_key: str, part: str) -> str:
    return f"index/{index_key}/{part}"  # centroids.npy, assignments.npy, meta.json


def round_key(round_id: str, name: str) -> str:
    return f"rounds/{round_id}/{name}"


def probe_json(round_id: str) -> str:
    return round_key(round_id, "probe/probe.json")


def probe_centroids(round_id: str) -> str:
    return round_key(round_id, "probe/centroids.npy")


def probe_source(round_id: str) -> str:
    """Cloud-only: the index and adapted space the round's probe was made from."""
    return round_key(round_id, "probe-source.json")


def probe_adapted(round_id: str) -> str:
    return round_key(round_id, "probe/adapted.npz")


def adapted_space(content_key: str) -> str:
    """A trained pool-adapted feature space (ecos_core.embedding.adapted_space), by its inputs' key."""
    return f"adapted/{content_key}.npz"


def responses_prefix(round_id: str) -> str:
    return round_key(round_id, "responses")


def response(round_id: str, client_id: str) -> str:
    return f"{responses_prefix(round_id)}/{client_id}.json"


def selection(round_id: str, client_id: str, method: str) -> str:
    return round_key(round_id, f"selections/{client_id}/{method}.npy")


def labels(round_id: str, client_id: str, method: str) -> str:
    """Annotators' labels of one selection, imported and validated (int64, selection order)."""
    return round_key(round_id, f"labels/{client_id}/{method}.npy")


def cache(kind: str, key: str) -> str:
    return f"cache/{kind}/{key}.json"


def invitation(round_id: str, client_id: str) -> str:
    return round_key(round_id, f"invites/{client_id}.json")


def accepted(round_id: str, client_id: str) -> str:
    return round_key(round_id, f"accepted/{client_id}.json")


def verdicts_prefix(round_id: str) -> str:
    """Cloud-only: one verdict per upload version judged, named by a digest of key + version."""
    return round_key(round_id, "verdicts")


def verdict(round_id: str, digest: str) -> str:
    return f"{verdicts_prefix(round_id)}/{digest}.json"


def training_row(round_id: str, client_id: str, method: str) -> str:
    return round_key(round_id, f"training/{client_id}/{method}.json")


WATCHER_HEARTBEAT = "watcher/heartbeat.json"  # the watcher's last sweep, for rounds about to suspend
