"""The edge client: answer a probe with K noisy coverage scores, nothing else.

Imports only ecos_core, numpy and torch (never Prefect): it runs on the device.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ecos_core import layout
from ecos_core.backbone import load_backbone
from ecos_core.coverage import noisy_coverage_scores
from ecos_core.features import embed
from ecos_core.privacy import gaussian_epsilon
from ecos_core.protocol import Probe, ProtocolError, decode_probe, response_json_bytes
from ecos_core.store import Store


@dataclass(frozen=True)
class ClientAnswer:
    wire: bytes  # the response exactly as uploaded
    n_samples: int
    epsilon: float
    seconds: float


def answer_probe(
    probe: Probe,
    centroids: np.ndarray,
    images: np.ndarray,
    client_id: str,
    seed: int | None = None,
    weights_path: str | None = None,
    show_bar: bool = True,
) -> ClientAnswer:
    """Embed the local images with the probe's backbone and return the noisy scores.

    load_backbone refuses a probe whose weights hash differs from the local weights,
    so the scores are always computed in the cloud's feature space.
    """
    start = time.perf_counter()
    model, spec = load_backbone(probe.backbone, weights_path=weights_path)
    feats = embed(images, model, spec.preprocessing, show_bar=show_bar, desc=f"{client_id} features")
    scores = noisy_coverage_scores(feats, centroids, probe.sigma, seed)
    wire = response_json_bytes(probe.round_id, client_id, scores)
    eps = gaussian_epsilon(probe.sigma, probe.delta)
    return ClientAnswer(wire, len(images), eps, time.perf_counter() - start)


def fetch_probe(store: Store, round_id: str, wait_s: float = 0.0, poll_s: float = 1.0) -> tuple[Probe, np.ndarray, int]:
    """Wait up to `wait_s` for the round's probe, verify it, return it with its size in bytes."""
    deadline = time.monotonic() + wait_s
    json_key, npy_key = layout.probe_json(round_id), layout.probe_centroids(round_id)
    while True:
        store.invalidate()
        if store.exists(json_key) and store.exists(npy_key):
            break
        if time.monotonic() >= deadline:
            raise TimeoutError(f"no probe for round {round_id!r} at {store.uri(json_key)} after {wait_s:.0f} s")
        time.sleep(poll_s)
    probe_json, npy = store.read_bytes(json_key, 1 << 20), store.read_bytes(npy_key, 1 << 26)
    probe, centroids = decode_probe(probe_json, npy, store.uri(layout.round_key(round_id, "probe")), round_id)
    return probe, centroids, len(probe_json) + len(npy)


def upload_response(store: Store, round_id: str, client_id: str, wire: bytes) -> str:
    """Upload once: an existing response is never overwritten (a second answer is refused)."""
    key = layout.response(round_id, client_id)
    try:
        store.write_bytes(key, wire, overwrite=False)
    except FileExistsError:
        raise ProtocolError(f"{store.uri(key)}: client {client_id!r} already answered round {round_id!r}") from None
    return store.uri(key)
