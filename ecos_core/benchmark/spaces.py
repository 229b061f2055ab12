"""The benchmark's feature spaces and its automated client labeling.

`adapted_features` trains (once per client domain, regime and seed; cached in the store
by content) the pool-adapted space of ecos_core.embedding.adapted_space on `adapted_size` annotated
pool images and embeds the pool and the client with it. `client_labels` runs the
client-labeling application's labeler (the group histogram of ecos_core.labeling.cluster_labels,
or Private-kNN) and says what it cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ecos_core.storage import layout
from ecos_core.storage.content import content_key
from ecos_core.types import ImageSet


@dataclass(frozen=True)
class Adapted:
    pool: np.ndarray  # (N_pool, 128) adapted embeddings of the pool
    train: np.ndarray  # (N_client, 128) the client's
    weights_bytes: int  # what shipping the space in the probe costs


def adapted_features(spec, store, pool: ImageSet, train: ImageSet, seed: int) -> Adapted:  # noqa: ANN001
    """Train the adapted space on annotated pool images (store-cached) and embed both sides."""
    from ecos_core.embedding.adapted_space import annotated_rows, annotated_set, train_adapted_space

    classes = spec.train.num_classes
    key = content_key("bench-adapted-v1", pool.ids.astype(str), train.ids.astype(str), seed, spec.adapted_size,
                      spec.adapted_width, list(spec.distractor_domains), spec.train.model_dump(mode="json"))[:24]  # fmt: skip
    paths = {"pool": layout.features(f"{key}-pool"), "train": layout.features(f"{key}-train")}
    meta = layout.cache("bench-adapted", key)
    if store is not None and all(store.exists(p) for p in (*paths.values(), meta)):
        return Adapted(store.read_npy(paths["pool"]), store.read_npy(paths["train"]),
                       int(store.read_json(meta)["weights_bytes"]))  # fmt: skip
    off_task = tuple(spec.distractor_domains)
    rows = annotated_rows(pool.labels, pool.domains, spec.adapted_size, off_task, seed)
    labelled = pool.subset(rows)
    labelled = annotated_set(labelled.images, labelled.labels, labelled.domains, labelled.ids, off_task, classes)
    space = train_adapted_space(labelled, classes, spec.adapted_width, seed, spec.train)
    out = Adapted(space.embed(pool.images), space.embed(train.images), len(space.to_bytes()))
    if store is not None:
        store.write_npy(paths["pool"], out.pool)
        store.write_npy(paths["train"], out.train)
        store.write_json(meta, {"weights_bytes": out.weights_bytes, "sha256": space.sha256})
    return out


@dataclass(frozen=True)
class ClientLabels:
    labels: np.ndarray  # (B,) a label per selected sample, -1 where none was given
    events: list  # the client's DP events for these labels
    bytes_down: int
    bytes_up: int
    macs: float


def client_labels(spec, query: np.ndarray, local: np.ndarray, local_labels: np.ndarray, seed: int) -> ClientLabels:  # noqa: ANN001
    """Label the selection (features `query`) from the client's labelled features `local`."""
    classes, dim = spec.train.num_classes, query.shape[1]
    if spec.client_labeler == "knn":
        from ecos_core.labeling.private_knn import private_knn_event, private_knn_labels

        labels = private_knn_labels(query, local, local_labels, k=spec.knn_k, sigma=spec.knn_sigma, classes=classes,
                                    sample_rate=spec.knn_sample_rate, seed=seed)  # fmt: skip
        event = private_knn_event(max(len(query), 1), spec.knn_sigma, spec.knn_sample_rate)
        # the selection's features down, one int64 label each up, an exact kNN search
        return ClientLabels(labels, [event], 4 * len(query) * dim, 8 * len(query), float(len(query) * len(local) * dim))
    from ecos_core.labeling.cluster_labels import add_histogram_noise, cluster_label_event, group_labels, group_selection
    from ecos_core.labeling.cluster_labels import label_histogram

    centres, groups = group_selection(query, spec.label_groups, seed)
    noisy = add_histogram_noise(label_histogram(local, local_labels, centres, classes), spec.label_sigma, seed)
    labels = group_labels(noisy, spec.label_sigma, spec.label_min_sigmas)[groups]
    # G centres down, G×C noisy counts up, a nearest-centre search per local sample
    return ClientLabels(labels, [cluster_label_event(spec.label_sigma)], 4 * centres.size, 8 * noisy.size,
                        float(len(local) * len(centres) * dim))  # fmt: skip
