"""Selective manual labeling of a round's proxy set: export it to annotators, import
their labels (validated) and train on them.

The round itself trains on the pool's ground truth (the simulation's annotator); these
steps are how real annotators' labels get in: export → label → import → train, each
reading the round's config and selection from the store.
"""

from __future__ import annotations

import posixpath

import numpy as np

from ecos_core.storage import layout
from ecos_core.labeling.annotation import export_for_annotation, import_labels, render_images
from ecos_core.config import RoundConfig
from ecos_core.types import ImageSet
from tasks import catalog
from tasks.pool import round_pool_images

ANNOTATED = "{method}-annotated"  # the training row / model name of a retrained proxy set


def round_config(store_url: str, round_id: str) -> RoundConfig:
    store = catalog.store(store_url)
    key = layout.round_key(round_id, "config.json")
    if not store.exists(key):
        raise FileNotFoundError(f"round {round_id!r} has no config at {store.uri(key)}: is the round id right?")
    return RoundConfig.model_validate(store.read_json(key))


def selection(store_url: str, round_id: str, client_id: str, method: str) -> tuple[RoundConfig, ImageSet]:
    """The round's config and the proxy set one sampler picked for one client."""
    cfg = round_config(store_url, round_id)
    store, key = catalog.store(store_url), layout.selection(round_id, client_id, method)
    if not store.exists(key):
        raise FileNotFoundError(f"no selection for client {client_id!r}, method {method!r} in round {round_id!r} "
                                f"({store.uri(key)})")  # fmt: skip
    return cfg, round_pool_images(store_url, cfg, store.read_npy(key))


def export_selection(store_url: str, round_id: str, client_id: str, method: str, out: str,
                     images: str | None = None) -> int:  # fmt: skip
    """Write the annotation file (ids, image URIs, empty labels); images as PNGs under `images`."""
    _, proxy = selection(store_url, round_id, client_id, method)
    export_for_annotation(proxy.ids, None, out)  # checks the file type and target before any image is written
    uris = render_images(proxy.images, proxy.ids, images) if images else None
    export_for_annotation(proxy.ids, uris, out)
    return len(proxy)


def import_selection_labels(store_url: str, round_id: str, client_id: str, method: str, path: str) -> np.ndarray:
    """Validate the annotators' file against the selection, then store the labels.

    Nothing is written unless the whole file passes (import_labels raises first)."""
    cfg, proxy = selection(store_url, round_id, client_id, method)
    labels = import_labels(path, proxy.ids, cfg.train.num_classes)
    store = catalog.store(store_url)
    store.write_npy(layout.labels(round_id, client_id, method), labels)
    # a model trained on earlier labels no longer matches: the next `labels train` retrains
    store.delete(layout.training_row(round_id, client_id, ANNOTATED.format(method=method)))
    return labels


def train_on_annotations(store_url: str, round_id: str, client_id: str, method: str) -> dict:
    """Train on the selection with the imported labels; the row and model are stored under
    "<method>-annotated" beside the round's ground-truth-trained one."""
    from tasks.training import train_once  # lightning: only for this step

    cfg, proxy = selection(store_url, round_id, client_id, method)
    store, key = catalog.store(store_url), layout.labels(round_id, client_id, method)
    if not store.exists(key):
        raise FileNotFoundError(f"no imported labels for {client_id}/{method} in round {round_id!r}: "
                                f"run `ecos labels import` first ({store.uri(key)})")  # fmt: skip
    labels = store.read_npy(key)
    if labels.shape != (len(proxy),):
        raise ValueError(f"{store.uri(key)}: {labels.shape} labels for a selection of {len(proxy)}")
    labelled = ImageSet(proxy.images, labels.astype(np.int64), proxy.domains, proxy.ids)
    row = train_once(store_url, cfg, round_id, client_id, ANNOTATED.format(method=method), labelled)
    agreement = float((labels == proxy.labels).mean())  # simulation only: the pool's ground truth is known
    return {**row, "label_agreement": agreement, "labels_key": posixpath.basename(key)}
