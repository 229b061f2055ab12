"""Simulation only: clients played by local processes, and the Oracle's exact counts.

A real round gets its responses from devices; here each simulated client runs the real
edge client (`ecos client respond`) in its own process, reading its private data from a
local "device" folder that the cloud flow never reads back.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from prefect import task

from ecos_core.storage import layout
from ecos_core.exchange.auth import enroll, enrolled_clients, save_enrollment
from ecos_core.config import RoundConfig
from ecos_core.sampling.coverage import coverage_counts
from ecos_core.data.npz import save_imageset
from ecos_core.types import ImageSet
from tasks import catalog
from tasks.adapted import images_in_space
from tasks.features import features_of
from tasks.index import load_centroids


def client_shard(cfg: RoundConfig, client_id: str) -> ImageSet:
    """The private training data of one simulated client: its share of the client split."""
    train = catalog.client_split(cfg.data, cfg.seed)[0]
    shards = np.array_split(np.arange(len(train)), len(cfg.clients))
    return train.subset(shards[cfg.clients.index(client_id)])


SIMULATED_BUDGET = 50.0  # ε budget of a simulated device: many demo rounds before it refuses


@task(name="enroll-simulated-clients")
def enroll_simulated_clients(store_url: str, clients: list[str], device_dir: str) -> None:
    """Enrollment as a device would get it: the key in the cloud registry and on the device."""
    store = catalog.store(store_url)
    enrolled = set(enrolled_clients(store))
    for client_id in clients:
        device = Path(device_dir) / client_id / "enrollment.json"
        if client_id not in enrolled or not device.exists():
            save_enrollment(enroll(store, client_id, SIMULATED_BUDGET, rotate=True), device)


@task(name="launch-simulated-clients")
def launch_simulated_clients(store_url: str, cfg: RoundConfig, round_id: str, device_dir: str) -> list[int]:
    """Deliver each invitation to its device folder and start the real edge client there."""
    store = catalog.store(store_url)
    pids = []
    for i, client_id in enumerate(cfg.clients):
        home = Path(device_dir) / client_id
        rounds = home / "rounds" / round_id
        rounds.mkdir(parents=True, exist_ok=True)
        (rounds / "invitation.json").write_bytes(store.read_bytes(layout.invitation(round_id, client_id)))
        save_imageset(client_shard(cfg, client_id), rounds / "data.npz")
        cmd = [sys.executable, "-m", "ecos_cli", "client", "respond", "--invite", str(rounds / "invitation.json"),
               "--enrollment", str(home / "enrollment.json"), "--ledger", str(home / "ledger.json"),
               "--data", str(rounds / "data.npz"), "--seed", str(cfg.seed * 1000 + i), "--no-progress"]  # fmt: skip
        with open(rounds / "client.log", "wb") as log:
            pids.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT).pid)
    return pids


@task(name="oracle-counts")
def oracle_counts(store_url: str, cfg: RoundConfig, feature_keys: dict[str, str], index_key: str, client_id: str,
                  adapted: dict | None = None) -> list[float]:  # fmt: skip
    """Exact, noise-free coverage counts: what only a non-private oracle could know."""
    shard = client_shard(cfg, client_id)
    if cfg.data.pool or cfg.data.client:  # the client is not part of the cloud's feature cache: embed it here
        feats = images_in_space(store_url, shard, cfg.index, adapted)
    else:
        feats = features_of(store_url, feature_keys, cfg.data, cfg.seed, shard.ids)
    centroids, radii = load_centroids(store_url, index_key)
    return coverage_counts(feats, centroids, radii if cfg.index.coverage == "ball" else None).tolist()
