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
from ecos_core.data.builtin import load_domain
from ecos_core.data.split import split_client_pool
from ecos_core.data.user import load_dataset
from ecos_core.storage.store import Store
from ecos_core.types import ImageSet


@functools.cache
def store(url: str) -> Store:
    return Store(url, settings().storage_options(url))


def settings() -> Settings:
    return Settings()


def domains(data: DataConfig, seed: int) -> dict[str, ImageSet]:
    """Every domain of the universe, each a seeded subset of its configured size."""
    return _domains(data.model_dump_json(), seed)


def split(data: DataConfig, seed: int) -> tuple[ImageSet, ImageSet, ImageSet]:
    """(client_train, client_test, pool) for the built-in simulation."""
    return _split(data.model_dump_json(), seed)


# memoised on the config's JSON: DataConfig holds a dict, so it is not hashable itself
@functools.lru_cache(maxsize=4)
def _domains(data_json: str, seed: int) -> dict[str, ImageSet]:
    data = DataConfig.model_validate_json(data_json)
    return {name: load_domain(name, settings().cache_dir, size, seed) for name, size in data.domain_sizes.items()}


@functools.lru_cache(maxsize=4)
def _split(data_json: str, seed: int) -> tuple[ImageSet, ImageSet, ImageSet]:
    data = DataConfig.model_validate_json(data_json)
    parts = _domains(data_json, seed)
    return split_client_pool(parts, data.client_domain, data.n_client_train, data.n_client_test, data.regime, seed)


def client_split(data: DataConfig, seed: int) -> tuple[ImageSet, ImageSet]:
    """(client_train, client_test): the client's own dataset when it has one, else its
    part of the built-in split."""
    return _client_split(data.model_dump_json(), seed)


@functools.lru_cache(maxsize=4)
def _client_split(data_json: str, seed: int) -> tuple[ImageSet, ImageSet]:
    data = DataConfig.model_validate_json(data_json)
    if data.client is None:
        return _split(data_json, seed)[:2]
    own = load_dataset(data.client, cache_dir=settings().cache_dir, seed=seed)
    name = str(own.domains[0]) if len(own) else data.client_domain
    train, test, _ = split_client_pool({name: own}, name, data.n_client_train, data.n_client_test, "ood", seed)
    return train, test


def rows_of(ids: np.ndarray, universe_ids: np.ndarray) -> np.ndarray:
    """Row of each id in `universe_ids` (every id must be there)."""
    rows = pd.Index(universe_ids).get_indexer(ids)
    if (rows < 0).any():
        raise KeyError(f"{int((rows < 0).sum())} sample ids are not in the feature table, e.g. {ids[rows < 0][:3]}")
    return rows
