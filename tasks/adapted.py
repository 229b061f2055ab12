"""The pool-adapted feature space in rounds (index.feature_space = "combined"): trained once
on annotated pool images (cached in the store by its inputs), then applied beside the
backbone to every built-in domain or every shard of an ingested pool. What travels between
steps is its ref {"key", "sha256", "bytes"}; the probe ships the weights themselves."""

from __future__ import annotations

import functools
import hashlib

import numpy as np
from prefect import get_run_logger, task

from ecos_core.storage import layout
from ecos_core.config import DataConfig, IndexConfig, TrainConfig
from ecos_core.storage.content import content_key
from ecos_core.types import ImageSet
from tasks import catalog
from tasks.common import STORAGE_RETRIES

# the training settings that change the weights (not where or how visibly they are trained)
_TRAIN_KEYED = {"max_epochs", "max_steps", "batch_size", "lr", "weight_decay", "max_shift", "num_classes", "width"}


def _annotated(store_url: str, pool_url: str | None, data: DataConfig | None, index: IndexConfig, seed: int):  # noqa: ANN202
    """(ids, labels, domains, rows, what the rows' pixels are, their images) of what the
    annotators label. Pixels: a built-in image is its id; an ingested one, its shard's hash."""
    from ecos_core.embedding.adapted_space import annotated_rows

    if pool_url is None:
        pool = catalog.split(data or DataConfig(), seed)[2]
        rows = annotated_rows(pool.labels, pool.domains, index.adapted_size, index.off_task_domains, seed)
        return pool.ids, pool.labels, pool.domains, rows, pool.ids[rows], lambda: pool.images[rows]
    from tasks.pool import images_of, require_pool

    _, table = require_pool(pool_url)
    rows = annotated_rows(table.labels, table.domains, index.adapted_size, index.off_task_domains, seed)
    pixels = table.table["shard"].to_numpy(str)[rows]
    return table.ids, table.labels, table.domains, rows, pixels, lambda: images_of(pool_url, table.ids[rows]).images


@task(name="train-adapted-space", **STORAGE_RETRIES)
def adapted_space(store_url: str, pool_url: str | None, data: DataConfig | None, index: IndexConfig,
                  train: TrainConfig, seed: int) -> dict:  # fmt: skip
    """The pool's adapted space (the built-in pool of `data`, or the ingested pool at
    pool_url), trained now or found in the store; its ref."""
    from ecos_core.embedding.adapted_space import annotated_set, train_adapted_space

    store = catalog.store(store_url)
    # on whatever this process has (the round's training may be routed to a GPU pool; this is not)
    train = train.model_copy(update={"accelerator": "auto", "devices": 1, "strategy": "auto"})
    ids, labels, domains, rows, pixels, images = _annotated(store_url, pool_url, data, index, seed)
    keyed = train.model_dump(mode="json", include=_TRAIN_KEYED)
    key = content_key("adapted-v1", ids[rows], pixels, labels[rows], domains[rows], list(index.off_task_domains),
                      index.adapted_width, keyed, seed)[:32]  # fmt: skip
    path = layout.adapted_space(key)
    if not store.exists(path):
        where = pool_url or "the built-in pool"
        labelled = annotated_set(images(), labels[rows], domains[rows], ids[rows], index.off_task_domains,
                                 train.num_classes, where)  # fmt: skip
        get_run_logger().info("training the adapted feature space on %d annotated images of %s", len(labelled), where)
        store.write_bytes(path, train_adapted_space(labelled, train.num_classes, index.adapted_width, seed, train).to_bytes())
    blob = store.read_bytes(path)
    return {"key": key, "sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}


@functools.lru_cache(maxsize=4)
def _load(store_url: str, key: str, sha256: str):  # noqa: ANN202
    from ecos_core.embedding.adapted_space import AdaptedSpace

    return AdaptedSpace.from_bytes(catalog.store(store_url).read_bytes(layout.adapted_space(key)), sha256)


def load_adapted(store_url: str, ref: dict | None):  # noqa: ANN201 - AdaptedSpace | None
    """The space a ref names, hash-checked; None for the backbone's space alone."""
    return None if ref is None else _load(store_url, ref["key"], ref["sha256"])


def combine(store_url: str, backbone_path: str, ref: dict, images: np.ndarray) -> str:
    """Store the combined features of `images` (their backbone features are at
    backbone_path); the content key they are stored under (found again, not recomputed)."""
    from ecos_core.embedding.adapted_space import combined

    store = catalog.store(store_url)
    key = content_key("combined-v1", backbone_path, ref["sha256"])
    if not store.exists(layout.features(key)):
        adapted = load_adapted(store_url, ref).embed(images)
        store.write_npy(layout.features(key), combined(store.read_npy(backbone_path), adapted))
    return key


@task(name="combine-features", **STORAGE_RETRIES)
def combine_domain_features(store_url: str, keys: dict[str, str], data: DataConfig, seed: int, ref: dict) -> dict:
    """Every built-in domain's features in the combined space: {domain: content key}."""
    return {name: combine(store_url, layout.features(keys[name]), ref, part.images)
            for name, part in catalog.domains(data, seed).items()}  # fmt: skip


@task(name="adapt-shard", **STORAGE_RETRIES)
def adapt_shard(store_url: str, pool_url: str, sha256: str, backbone_path: str, ref: dict, threads: int) -> str:
    """One shard's features in the combined space; where they are stored."""
    import torch

    from tasks.pool import read_shard

    if threads > 0:  # workers × threads = the cores; 0: a remote cluster keeps its own setting
        torch.set_num_threads(threads)
    return layout.features(combine(store_url, backbone_path, ref, read_shard(pool_url, sha256)))


def images_in_space(store_url: str, images: ImageSet, index: IndexConfig, ref: dict | None) -> np.ndarray:
    """Features of images the cloud holds outside its caches (a simulated client's own
    dataset, for the Oracle), in the round's space: as a device would compute them."""
    from ecos_core.embedding.adapted_space import space_features
    from ecos_core.embedding.backbones import load_backbone
    from tasks.features import backbone_spec

    model, _ = load_backbone(spec := backbone_spec(index))
    return space_features(images.images, model, spec.preprocessing, load_adapted(store_url, ref), index.batch_size)
