"""Client / pool split for the ECOS sampling experiments.

The client owns a small labelled train and test sample of one domain; the open-source
pool holds everything else the client may draw from. Splits are pure functions of
(inputs, seed), so a rerun reproduces the same sets.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np

from ecos_core.types import ImageSet

Regime = Literal["id+ood", "ood"]
REGIMES: tuple[str, ...] = get_args(Regime)


def subsample(data: ImageSet, max_samples: int | None, seed: int = 0) -> ImageSet:
    """A seeded random subset of at most max_samples rows, kept in original order.

    Sorting the chosen indices keeps the result deterministic and ordered like the
    source, so ids stay monotone and a subset of a subset is easy to reason about.
    """
    if max_samples is None or max_samples >= len(data):
        return data
    if max_samples < 0:
        raise ValueError(f"max_samples must be >= 0, got {max_samples}")
    rng = np.random.default_rng(seed)
    index = np.sort(rng.choice(len(data), size=max_samples, replace=False))
    return data.subset(index)


def domain_counts(data: ImageSet) -> dict[str, int]:
    """Number of samples per domain tag, sorted by domain name."""
    names, counts = np.unique(data.domains.astype(str), return_counts=True)
    return {str(n): int(c) for n, c in zip(names, counts)}


def split_client_pool(
    domains: dict[str, ImageSet],
    client_domain: str,
    n_client_train: int,
    n_client_test: int,
    regime: Regime = "id+ood",
    seed: int = 0,
) -> tuple[ImageSet, ImageSet, ImageSet]:
    """Split domains into (client_train, client_test, pool).

    The client's train and test parts are disjoint seeded random draws from
    domains[client_domain]. The pool holds every other domain (in sorted name order,
    so the result does not depend on dict insertion order) and, for regime "id+ood",
    the remaining client-domain samples; for "ood" the client domain is left out of
    the pool entirely. Client samples never appear in the pool.
    """
    if regime not in REGIMES:
        raise ValueError(f"unknown regime {regime!r}; expected one of {list(REGIMES)}")
    if client_domain not in domains:
        raise ValueError(f"unknown client domain {client_domain!r}; available: {sorted(domains)}")
    if n_client_train < 1 or n_client_test < 0:
        raise ValueError(
            f"need n_client_train >= 1 and n_client_test >= 0, got {n_client_train} and {n_client_test}"
        )
    client = domains[client_domain]
    needed = n_client_train + n_client_test
    if needed > len(client):
        raise ValueError(
            f"client domain {client_domain!r} has {len(client)} samples, "
            f"not enough for {n_client_train} train + {n_client_test} test"
        )
    shapes = {name: d.images.shape[1:] for name, d in domains.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"domains have different image shapes, cannot pool them: {shapes}")

    order = np.random.default_rng(seed).permutation(len(client))
    # Sorted indices keep each part in source order (stable ids, reproducible batches).
    train = client.subset(np.sort(order[:n_client_train]))
    test = client.subset(np.sort(order[n_client_train:needed]))

    parts = [domains[name] for name in sorted(domains) if name != client_domain]
    if regime == "id+ood" and needed < len(client):
        parts.insert(0, client.subset(np.sort(order[needed:])))
    # An empty pool (a lone domain in "ood") is valid: callers may only want the client parts.
    pool = ImageSet.concat(parts) if parts else client.subset(np.arange(0))

    # The same sample passed under two domain names would leak client data into the pool.
    leaked = np.intersect1d(np.concatenate([train.ids, test.ids]).astype(str), pool.ids.astype(str))
    if leaked.size:
        raise ValueError(f"{leaked.size} client sample ids also occur in the pool, e.g. {leaked[:3].tolist()}")
    return train, test, pool
