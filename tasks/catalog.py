"""The catalog: where the flows' data comes from (store, built-in domains, splits).

Loads are memoised per process so that tasks can ask for what they need by config
instead of passing large arrays through Prefect.
"""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd

from ecos_core.config import DataConfig
from ecos_core.settings import Settings
from ecos_core.data.builtin import load_domains
from ecos_core.data.split import split_client_pool
from ecos_core.store import Store
from ecos_core.types import ImageSet


@functools.cache
def store(url: str) -> Store:
    return Store(url)


def settings() -> Settings:
    return Settings()


@functools.lru_cache(maxsize=4)
def domains(data: DataConfig, seed: int) -> dict[str, ImageSet]:
    """Every domain of the universe, each capped at max_per_domain (seeded)."""
    return load_domains(data.domains, settings().cache_dir, data.max_per_domain, seed)


@functools.lru_cache(maxsize=4)
def split(data: DataConfig, seed: int) -> tuple[ImageSet, ImageSet, ImageSet]:
    """(client_train, client_test, pool) for the built-in simulation."""
    return split_client_pool(
        domains(data, seed), data.client_domain, data.n_client_train, data.n_client_test, data.regime, seed
    )


def rows_of(ids: np.ndarray, universe_ids: np.ndarray) -> np.ndarray:
    """Row of each id in `universe_ids` (every id must be there)."""
    rows = pd.Index(universe_ids).get_indexer(ids)
    if (rows < 0).any():
        raise KeyError(f"{int((rows < 0).sum())} sample ids are not in the feature table, e.g. {ids[rows < 0][:3]}")
    return rows
