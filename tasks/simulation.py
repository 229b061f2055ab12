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

from ecos_core.config import RoundConfig
from ecos_core.coverage import coverage_counts
from ecos_core.data.npz import save_imageset
from ecos_core.types import ImageSet
from tasks import catalog
from tasks.features import features_of
from tasks.index import load_index


def client_shard(cfg: RoundConfig, client_id: str) -> ImageSet:
    """The private training data of one simulated client: its share of the client split."""
    train = catalog.split(cfg.data, cfg.seed)[0]
    shards = np.array_split(np.arange(len(train)), len(cfg.clients))
    return train.subset(shards[cfg.clients.index(client_id)])


@task(name="launch-simulated-clients")
def launch_simulated_clients(store_url: str, cfg: RoundConfig, round_id: str, device_dir: str) -> list[int]:
    pids = []
    for i, client_id in enumerate(cfg.clients):
        home = Path(device_dir) / round_id / client_id
        save_imageset(client_shard(cfg, client_id), home / "data.npz")
        cmd = [sys.executable, "-m", "ecos_cli", "client", "respond", "--store", store_url, "--round", round_id,
               "--client-id", client_id, "--data", str(home / "data.npz"), "--wait", str(cfg.deadline_s),
               "--seed", str(cfg.seed * 1000 + i), "--no-progress"]  # fmt: skip
        with open(home / "client.log", "wb") as log:
            pids.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT).pid)
    return pids


@task(name="oracle-counts")
def oracle_counts(store_url: str, cfg: RoundConfig, feature_keys: dict[str, str], index_key: str, client_id: str) -> list[float]:
    """Exact, noise-free coverage counts: what only a non-private oracle could know."""
    shard = client_shard(cfg, client_id)
    feats = features_of(store_url, feature_keys, cfg.data, cfg.seed, shard.ids)
    return coverage_counts(feats, load_index(store_url, index_key).centroids).tolist()
