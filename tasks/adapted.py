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

# where and how visibly a space is trained: never part of its key (GPU or CPU, both are the space)
_PLACEMENT = {"accelerator", "devices", "strategy", "progress_bar", "evaluate"}


def adapted_training(index: IndexConfig, classes: int) -> TrainConfig:
    """The space's own training: the defaults (the benchmark's too) but index.adapted_steps,
    on whatever this process has (the round's proxy models may be trained on a GPU pool)."""
    return TrainConfig(num_classes=classes, max_steps=index.adapted_steps, accelerator="auto", devices=1)


def _annotated(pool_url: str | None, data: DataConfig | None, index: IndexConfig, seed: int):  # noqa: ANN202
    """(ids, labels, domains, rows, what the rows' pixels are, their images) of what the
    annotators label. Pixels: a built-in image's bytes; an ingested one's shard hash and row."""
    from ecos_core.embedding.adapted_space import annotated_rows

    if pool_url is None:
        pool = catalog.split(data or DataConfig(), seed)[2]
        rows = annotated_rows(pool.labels, pool.domains, index.adapted_size, index.off_task_domains, seed)
        images = pool.images[rows]
        return pool.ids, pool.labels, pool.domains, rows, [images], lambda: images
    from tasks.pool import images_of, require_pool

    _, table = require_pool(pool_url)
    rows = annotated_rows(table.labels, table.domains, index.adapted_size, index.off_task_domains, seed)
    pixels = [table.table["shard"].to_numpy(str)[rows], table.table["row"].to_numpy()[rows]]
    return table.ids, table.labels, table.domains, rows, pixels, lambda: images_of(pool_url, table.ids[rows]).images


def check_pool_for_adapted(pool_url: str, index: IndexConfig, classes: int, where: str | None = None) -> None:
    """Before any shard is embedded: a pool the combined space cannot train on is refused in
    one line (too few annotated rows, a label out of range, images not 28 px), naming `where`
    (what the user gave: a manifest, a folder) or the pool's URL."""
    where = where or pool_url
    from ecos_core.embedding.adapted_space import IMAGE_SIDE, annotated_rows, check_annotations
    from tasks.pool import require_pool

    meta, table = require_pool(pool_url)
    if int(meta["image_size"]) != IMAGE_SIDE:
        raise ValueError(f"{where}: images are {meta['image_size']} px; the combined feature space's CNN takes "
                         f"{IMAGE_SIDE} px (ingest with --image-size {IMAGE_SIDE}, or use --feature-space backbone)")  # fmt: skip
    rows = annotated_rows(table.labels, table.domains, len(table), index.off_task_domains, 0)  # every annotated row
    check_annotations(table.labels[rows], table.domains[rows], index.off_task_domains, classes, where)


@task(name="train-adapted-space", **STORAGE_RETRIES)
def adapted_space(store_url: str, pool_url: str | None, data: DataConfig | None, index: IndexConfig, classes: int,
                  seed: int) -> dict:  # fmt: skip
    """The pool's adapted space (the built-in pool of `data`, or the ingested pool at
    pool_url), trained now or found in the store; its ref. The first writer wins: a second
    index that trained it at the same time reads the stored one back."""
    from ecos_core.embedding.adapted_space import annotated_set, train_adapted_space

    store = catalog.store(store_url)
    train = adapted_training(index, classes)
    ids, labels, domains, rows, pixels, images = _annotated(pool_url, data, index, seed)
    key = content_key("adapted-v2", ids[rows], *pixels, labels[rows], domains[rows], list(index.off_task_domains),
                      index.adapted_width, train.model_dump(mode="json", exclude=_PLACEMENT), seed)[:32]  # fmt: skip
    path = layout.adapted_space(key)
    if not store.exists(path):
        where = pool_url or "the built-in pool"
        labelled = annotated_set(images(), labels[rows], domains[rows], ids[rows], index.off_task_domains, classes, where)
        get_run_logger().info("training the adapted feature space on %d annotated images of %s", len(labelled), where)
        try:
            store.write_bytes(path, train_adapted_space(labelled, classes, index.adapted_width, seed, train).to_bytes(),
                              overwrite=False)  # fmt: skip
        except FileExistsError:
            pass
    blob = store.read_bytes(path)
    return {"key": key, "sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}


@functools.lru_cache(maxsize=4)
def _load(store_url: str, key: str, sha256: str):  # noqa: ANN202
    from ecos_core.embedding.adapted_space import AdaptedSpace

    return AdaptedSpace.from_bytes(catalog.store(store_url).read_bytes(layout.adapted_space(key)), sha256)


def load_adapted(store_url: str, ref: dict | None):  # noqa: ANN201 - AdaptedSpace | None
    """The space a ref names, hash-checked; None for the backbone's space alone."""
    return None if ref is None else _load(store_url, ref["key"], ref["sha256"])


def class_reference(store_url: str, pool_url: str | None, data: DataConfig | None, index: IndexConfig, classes: int,
                    seed: int, ref: dict) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """What the cloud's class vote reads (class_balance): the annotated pool images that
    trained the space, as (their adapted features, the annotators' answers; `classes` = none)."""
    from ecos_core.embedding.adapted_space import annotator_labels

    _, labels, domains, rows, _, images = _annotated(pool_url, data, index, seed)
    answers = annotator_labels(labels[rows], domains[rows], index.off_task_domains, classes)
    return load_adapted(store_url, ref).embed(images()), answers


def combined_key(backbone_path: str, ref: dict) -> str:
    return content_key("combined-v1", backbone_path, ref["sha256"])


def combine(store_url: str, backbone_path: str, ref: dict, images: np.ndarray) -> str:
    """Store the combined features of `images` (their backbone features are at
    backbone_path); the content key they are stored under (found again, not recomputed)."""
    from ecos_core.embedding.adapted_space import combined

    store = catalog.store(store_url)
    key = combined_key(backbone_path, ref)
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
    """One shard's features in the combined space; where they are stored. A shard combined
    before is not read again (a nightly index reads only the new shards)."""
    import torch

    from tasks.pool import read_shard

    done = layout.features(combined_key(backbone_path, ref))
    if catalog.store(store_url).exists(done):
        return done
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
