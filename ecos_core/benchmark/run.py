"""The benchmark grid (the paper's Table 4): pure logic, no Prefect.

A `GridSpec` names the axes (client domains, regimes, budgets, samplers, applications,
seeds, noise levels) and the fixed setting (pool sizes, K, training). `grid_cells` expands
it into `Cell`s, each with a stable content-hash `cell_key`; `run_cell` runs one cell and
returns one result row. A `BenchContext` memoises what cells share: the seeded domains,
their MobileNetV2 features (also cached in the store by content key, the same key the
round flow uses, so a rerun reuses them), the client/pool split, the K-means index, the
exact coverage counts and the compression teacher.

Applications (what the proxy set is used for):
  labeling         the selection is exported for annotation, the pool's ground truth plays
                   the annotator, the labels are imported (validated) -> train_classifier
  labeling_fixmatch  the same labels plus the unlabelled members of the clusters the
                   selection drew from -> FixMatch (semi-supervised)
  compression      a cloud teacher (trained once per seed, client domain and regime on a
                   labelled subset of that pool) is distilled into a student on the
                   selected images, which carry no labels
  client_labeling  the client labels the selection with Private-kNN on its own features;
                   ε composes the coverage scores' and the kNN answers' (PLD)
Samplers: ecos (noisy counts, add_noise seeded by the cell's seed), oracle (exact counts,
the σ=0 rule, ε=∞), random, kcenter, full (every pool sample), local (train on the
client's own data; "labeling" only).
"""

from __future__ import annotations

import functools
import json
import tempfile
import time
from pathlib import Path
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from ecos_core.storage import layout
from ecos_core.embedding.backbones import load_backbone
from ecos_core.embedding.feature_space import BackboneSpec
from ecos_core.sampling.coverage import add_noise, coverage_counts
from ecos_core.data.builtin import load_domain
from ecos_core.data.user import load_dataset
from ecos_core.pool.reader import is_pool, load_pool
from ecos_core.settings import Settings
from ecos_core.data.split import REGIMES, split_client_pool, subsample
from ecos_core.config import RULE_FIELDS
from ecos_core.training.distill import distill, train_teacher
from ecos_core.sampling.class_share import annotated_pool_classes, select_by_class
from ecos_core.labeling.feedback import select_with_feedback
from ecos_core.labeling.annotation import annotate_with_ground_truth, export_for_annotation, import_labels
from ecos_core.embedding.features import content_key, embed
from ecos_core.sampling.index import PoolIndex, build_index, l2_normalize
from ecos_core.privacy.accounting import epsilon, gaussian_event
from ecos_core.labeling.private_knn import combined_epsilon
from ecos_core.exchange.protocol import Response, encode_probe, encode_response
from ecos_core.sampling.samplers import SamplingPool, make_sampler
from ecos_core.training.semisup import FixMatchConfig, train_fixmatch
from ecos_core.storage.store import Store
from ecos_core.training.train import accuracy, train_classifier
from ecos_core.sampling.two_stage import two_stage_budgets
from ecos_core.types import ImageSet
from ecos_core.benchmark.grid import (APPLICATIONS, BACKBONE_MACS_224, BENCH_SAMPLERS, LOCAL_APPLICATIONS,  # noqa: F401
                                      MOBILENET_V2_MACS_224, NOISY_SAMPLERS, ROW_FIELDS, Cell, GridSpec, cell_key,
                                      grid_cells, grid_key)  # fmt: skip (re-exported: the CLI and tests import them here)


__all__ = ["APPLICATIONS", "BENCH_SAMPLERS", "NOISY_SAMPLERS", "LOCAL_APPLICATIONS", "MOBILENET_V2_MACS_224", "ROW_FIELDS", "GridSpec", "Cell", "grid_key", "cell_key", "grid_cells", "BenchContext", "Setup", "run_cell"]


@dataclass
class Setup:
    """What every cell of one (client domain, regime, seed) shares."""

    train: ImageSet
    test: ImageSet
    pool: ImageSet
    train_features: np.ndarray  # raw (N, d)
    pool_features: np.ndarray  # l2-normalised (N, d)
    index: PoolIndex
    counts: np.ndarray  # exact coverage counts (K,)
    client_s: float  # client compute: embedding its train set + scoring
    label_pool: np.ndarray  # the space client labeling runs in: the adapted one when there is one
    label_train: np.ndarray
    space_bytes: int = 0  # the adapted space's weights, shipped in the probe
    predicted: np.ndarray | None = None  # the cloud's class guess per pool image (class_balance)


@dataclass
class BenchContext:
    """Caches shared by the cells of a grid; `store` (optional) keeps features across runs."""

    spec: GridSpec
    store: Store | None = None
    cache_dir: str | None = None
    show_bar: bool = False
    _domains: dict[int, dict[str, ImageSet]] = field(default_factory=dict)
    _features: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)
    _embed_s: dict[tuple[str, int], float] = field(default_factory=dict)  # seconds per image
    _setups: dict[tuple[str, str, int], Setup] = field(default_factory=dict)
    _teachers: dict[tuple[str, str, int], Any] = field(default_factory=dict)
    _local: dict[tuple[str, str, int], dict] = field(default_factory=dict)
    feature_hits: int = 0
    feature_misses: int = 0

    @functools.cached_property
    def backbone(self) -> tuple[Any, BackboneSpec]:
        from ecos_core.embedding.backbones import resolve_spec

        spec = resolve_spec(self.spec.backbone, self.spec.preprocessing, self.spec.model_url, self.spec.model_sha256)
        return load_backbone(spec)

    def domains(self, seed: int) -> dict[str, ImageSet]:
        """The pool's domains for this seed: built-in ones at domain_sizes, or the user's
        pool_data split by its domain column (capped only by domain_sizes the user gave:
        the built-in defaults never cap a user domain that shares a built-in name)."""
        if seed not in self._domains:
            explicit = "domain_sizes" in self.spec.model_fields_set
            sizes = self.spec.domain_sizes if self.spec.pool_data is None or explicit else {}
            if self.spec.pool_data is None:
                self._domains[seed] = {n: load_domain(n, self.cache_dir, size, seed) for n, size in sizes.items()}
            else:
                data = self._user_pool
                names = sorted(set(data.domains.astype(str).tolist()))
                self._domains[seed] = {n: subsample(data.subset(np.flatnonzero(data.domains.astype(str) == n)),
                                                    sizes.get(n), seed) for n in names}  # fmt: skip
        return self._domains[seed]

    @functools.cached_property
    def _user_pool(self) -> ImageSet:
        """An ingested pool (`ecos pool ingest`), or a manifest / folder loaded the same way."""
        url = str(self.spec.pool_data)
        pool = Store(url, Settings().storage_options(url))
        return load_pool(pool) if is_pool(pool) else load_dataset(url)

    def data_key(self) -> str | None:
        """Content fingerprint of a user's pool (None for the built-in one, which the setting names)."""
        if self.spec.pool_data is None:
            return None
        pool = self._user_pool
        return content_key(pool.images, pool.ids, pool.labels, pool.domains.astype(str))[:16]

    def reference_costs(self, client_domain: str, regime: str) -> dict:
        """What the alternatives to an ECOS round would cost the client (the paper's
        communication comparison): upload its training images, or download the pool (raw
        uint8 images) and embed all of it on the device to choose locally."""
        spec, parts = self.spec, self.domains(self.spec.seeds[0])
        client = parts[client_domain]
        removed = spec.n_client_train + spec.n_client_test if regime == "id+ood" else len(client)
        pool = sum(len(p) for p in parts.values()) - removed
        image_bytes = int(client.images[0].nbytes)
        return {"pool_size": pool, "upload_client_bytes": spec.n_client_train * image_bytes,
                "download_pool_bytes": pool * image_bytes, "embed_pool_macs": pool * _embed_macs(spec)}  # fmt: skip

    def check(self) -> None:
        """Fail before any cell runs if a client domain cannot be split off the pool."""
        parts = self.domains(self.spec.seeds[0])
        for domain in self.spec.client_domains:
            if domain not in parts:
                raise ValueError(f"client domain {domain!r} is not in the pool; its domains: {sorted(parts)}")
            needed = self.spec.n_client_train + self.spec.n_client_test
            if len(parts[domain]) < needed:
                raise ValueError(f"client domain {domain!r} has {len(parts[domain])} samples, fewer than the "
                                 f"client's {needed} (train + test)")  # fmt: skip

    def features(self, name: str, seed: int) -> np.ndarray:
        """MobileNetV2 features of one domain's seeded subset; the store key is the round flow's."""
        if (name, seed) in self._features:
            return self._features[(name, seed)]
        part = self.domains(seed)[name]
        model, bspec = self.backbone
        key = content_key(part.images, part.ids, bspec.model_dump(mode="json"))
        timing_key = layout.cache("embed-time", key)
        feats = None
        if self.store is not None and self.store.exists(layout.features(key)):
            feats = self.store.read_npy(layout.features(key))
            per_image = self.store.read_json(timing_key)["seconds_per_image"] if self.store.exists(timing_key) else float("nan")
            self.feature_hits += 1
        if feats is None or feats.shape[0] != len(part):
            start = time.perf_counter()
            feats = embed(part.images, model, bspec.preprocessing, self.spec.embed_batch_size, show_bar=self.show_bar,
                          desc=f"features {name}")  # fmt: skip
            per_image = (time.perf_counter() - start) / max(len(part), 1)
            self.feature_misses += 1
            if self.store is not None:
                self.store.write_npy(layout.features(key), feats)
                self.store.write_json(timing_key, {"seconds_per_image": per_image, "n": len(part)})
        self._features[(name, seed)] = feats
        self._embed_s[(name, seed)] = per_image
        return feats

    def setup(self, client_domain: str, regime: str, seed: int) -> Setup:
        key = (client_domain, regime, seed)
        if key in self._setups:
            return self._setups[key]
        spec = self.spec
        parts = self.domains(seed)
        train, test, pool = split_client_pool(parts, client_domain, spec.n_client_train, spec.n_client_test,
                                              regime, seed)  # type: ignore[arg-type]  # fmt: skip
        names = list(parts)
        table = np.concatenate([self.features(n, seed) for n in names])
        rows = pd.Index(np.concatenate([parts[n].ids for n in names]).astype(str))
        train_f = table[rows.get_indexer(train.ids.astype(str))]
        pool_f = table[rows.get_indexer(pool.ids.astype(str))]
        label_pool, label_train, space_bytes = pool_f, train_f, 0
        if spec.feature_space == "combined":
            from ecos_core.embedding.adapted_space import combined
            from ecos_core.benchmark.spaces import adapted_features

            adapted = adapted_features(spec, self.store, pool, train, seed)
            label_pool, label_train, space_bytes = adapted.pool, adapted.train, adapted.weights_bytes
            pool_f, train_f = combined(pool_f, adapted.pool), combined(train_f, adapted.train)
        if spec.k > len(pool):
            raise ValueError(f"k={spec.k} is larger than the pool ({len(pool)} samples) for {client_domain}/{regime}")
        index = build_index(pool_f, spec.k, seed, spec.niter, spec.nredo)
        start = time.perf_counter()
        counts = coverage_counts(train_f, index.centroids, index.radii if spec.coverage == "ball" else None)
        score_s = time.perf_counter() - start
        per_image = self._embed_s.get((client_domain, seed), float("nan"))
        predicted = None
        if spec.class_balance and spec.feature_space == "combined":  # the annotated images' kNN vote in their space
            predicted = annotated_pool_classes(pool, label_pool, spec.adapted_size, tuple(spec.distractor_domains),
                                               spec.train.num_classes, seed)  # fmt: skip
        setup = Setup(train, test, pool, train_f, l2_normalize(pool_f), index, counts,
                      client_s=per_image * len(train) + score_s, label_pool=label_pool, label_train=label_train,
                      space_bytes=space_bytes, predicted=predicted)  # fmt: skip
        self._setups[key] = setup
        return setup

    def teacher(self, client_domain: str, regime: str, seed: int) -> Any:
        """The compression teacher: trained on a labelled subset of this pool, once."""
        key = (client_domain, regime, seed)
        if key not in self._teachers:
            pool = self.setup(*key).pool
            labelled = subsample(pool, self.spec.teacher_size, seed)
            self._teachers[key] = train_teacher(labelled, self.spec.teacher_train, seed)
        return self._teachers[key]


def _probe_bytes(k: int, dim: int, bspec: BackboneSpec, sigma: float, delta: float, ball: bool,
                 adapted: bool) -> tuple[int, int]:  # fmt: skip
    """(bytes down, bytes up) of one coverage round: probe.json + centroids.npy (the adapted
    space's weights are added by the caller), response json."""
    _, probe_json, npy = encode_probe("bench-round", np.zeros((k, dim), np.float32), bspec, sigma, delta,
                                      datetime(2030, 1, 1, tzinfo=UTC), np.zeros(k) if ball else None,
                                      "0" * 64 if adapted else None)  # fmt: skip
    up = encode_response(Response.from_scores("bench-round", "client-0", np.zeros(k)))
    return len(probe_json) + len(npy), len(up)


def _embed_macs(spec: GridSpec) -> float:
    """Backbone MACs of one image: at 224 px (MobileNetV2 0.30 GMAC), proportional to the pixels."""
    return BACKBONE_MACS_224.get(spec.backbone, float("nan")) * (spec.preprocessing.size / 224) ** 2


def _client_macs(spec: GridSpec, n_samples: int, k: int, dim: int) -> float:
    """Embedding plus K·d per sample for scoring."""
    return float(n_samples * (_embed_macs(spec) + k * dim))


def annotated_labels(proxy: ImageSet, classes: int) -> np.ndarray:
    """Selective manual labeling, simulated: export the selection, let the pool's ground
    truth annotate the file, import it with the same validation real annotators get."""
    with tempfile.TemporaryDirectory(prefix="ecos-annotate-") as tmp:
        export, done = str(Path(tmp) / "selection.csv"), str(Path(tmp) / "labelled.csv")
        export_for_annotation(proxy.ids, None, export)
        annotate_with_ground_truth(export, dict(zip(map(str, proxy.ids), proxy.labels.tolist())), done)
        return import_labels(done, proxy.ids, classes)


def run_cell(cell: Cell, ctx: BenchContext) -> dict:
    """Run one cell: select, train (or distil), evaluate on the client's test set."""
    spec = ctx.spec
    s = ctx.setup(cell.client_domain, cell.regime, cell.seed)
    k, dim = s.index.centroids.shape
    _, bspec = ctx.backbone
    row: dict[str, Any] = cell.model_dump()
    extra: dict[str, Any] = {}
    start = time.perf_counter()

    if cell.sampler == "local":
        result = train_classifier(s.train, spec.train, cell.seed)
        row.update(accuracy=accuracy(result.model, s.test), epsilon=0.0, proxy_size=len(s.train), unspent=0,
                   distractor_share=0.0, client_domain_share=1.0, bytes_down=0, bytes_up=0,
                   client_macs=float("nan"), client_s=result.seconds, train_s=result.seconds, select_s=0.0,
                   proxy_domains=json.dumps({cell.client_domain: len(s.train)}))  # fmt: skip
        return row

    sampling_pool = SamplingPool(s.pool_features, s.index.assignments, s.index.centroids)
    ecos_params = {name: getattr(spec, name) for name in RULE_FIELDS}
    noisy = add_noise(s.counts, cell.sigma, seed=cell.seed) if cell.sampler == "ecos" else None
    sampler = make_sampler(cell.sampler, seed=cell.seed, sigma=cell.sigma or 0.0, noisy_scores=noisy,
                           exact_counts=s.counts, **ecos_params)  # fmt: skip
    off_task = np.isin(s.pool.domains.astype(str), spec.distractor_domains)  # what annotators would say: "none"
    feedback = spec.annotator_feedback and cell.application in ("labeling", "labeling_fixmatch")
    two_stage = None  # the DP event of a two-stage round (ecos_core.sampling.two_stage), when the grid asks for one
    if s.predicted is not None and cell.sampler in ("ecos", "oracle"):  # "none" guesses are never picked
        classes = spec.train.num_classes
        picked = select_by_class(sampler, sampling_pool, cell.budget, s.predicted, classes)  # type: ignore[arg-type]
    elif feedback and cell.sampler in ("ecos", "oracle"):
        picked = select_with_feedback(sampler, sampling_pool, cell.budget, lambda rows: off_task[rows])  # type: ignore[arg-type]
    elif cell.sampler == "ecos" and spec.two_stage_share is not None:
        share, two_stage = two_stage_budgets(s.counts, s.index.centroids, np.bincount(s.index.assignments, minlength=k),
                                             cell.budget, cell.sigma, spec.two_stage_share, spec.two_stage_group_size,
                                             spec.group_sigmas, cell.seed)  # type: ignore[arg-type]  # fmt: skip
        picked = sampler.rule.pick(sampling_pool, share)  # type: ignore[attr-defined]
    else:
        picked = sampler.select(sampling_pool, cell.budget)
    select_s = time.perf_counter() - start
    proxy = s.pool.subset(picked)

    # privacy and cost of what the sampler needs from the client
    events = []
    if cell.sampler == "ecos":
        events.append(two_stage or gaussian_event(cell.sigma))
        eps = epsilon(events[0], spec.delta)
        down, up = _probe_bytes(k, dim, bspec, cell.sigma, spec.delta, spec.coverage == "ball", s.space_bytes > 0)
        down += s.space_bytes
        macs, client_s = _client_macs(spec, len(s.train), k, dim), s.client_s
    elif cell.sampler == "oracle":  # exact counts: no noise, no guarantee
        eps = float("inf")
        down, up = _probe_bytes(k, dim, bspec, 1.0, spec.delta, spec.coverage == "ball", s.space_bytes > 0)
        down += s.space_bytes
        macs, client_s = _client_macs(spec, len(s.train), k, dim), s.client_s
    else:  # blind to the client
        eps, down, up, macs, client_s = 0.0, 0, 0, 0.0, 0.0

    if len(picked) == 0 or (feedback and off_task[picked].all()):  # nothing (on task) to train on
        acc, train_s = float("nan"), 0.0
    elif cell.application in ("labeling", "labeling_fixmatch"):
        on_task = ~off_task[picked] if feedback else np.ones(len(picked), bool)  # "none" answers are not trained on
        labelled = ImageSet(proxy.images, annotated_labels(proxy, spec.train.num_classes), proxy.domains,
                            proxy.ids).subset(np.flatnonzero(on_task))  # fmt: skip
        if cell.application == "labeling":
            result = train_classifier(labelled, spec.train, cell.seed)
        else:  # unlabelled: the rest of the clusters the selection came from
            drawn = np.isin(s.index.assignments, np.unique(s.index.assignments[picked]))
            drawn[picked] = False
            unlabelled = s.pool.images[drawn] if drawn.any() else proxy.images
            result = train_fixmatch(labelled, unlabelled, FixMatchConfig(train=spec.train), cell.seed)
            extra.update(mask_rate=result.mask_rate, unlabelled_size=int(drawn.sum()))
        acc, train_s = accuracy(result.model, s.test), result.seconds
    elif cell.application == "compression":
        teacher = ctx.teacher(cell.client_domain, cell.regime, cell.seed)
        result = distill(teacher.model.net, proxy.images, spec.distill_config, cell.seed)
        acc, train_s = accuracy(result.student, s.test), result.seconds
        extra.update(teacher_accuracy=accuracy(teacher.model, s.test), teacher_params=result.teacher_size["params"],
                     student_params=result.student_size["params"])  # fmt: skip
    elif cell.application == "client_labeling":
        from ecos_core.benchmark.spaces import client_labels

        t0 = time.perf_counter()
        answer = client_labels(spec, s.label_pool[picked], s.label_train, s.train.labels, cell.seed)
        client_s += time.perf_counter() - t0
        eps = float("inf") if cell.sampler == "oracle" else combined_epsilon([*events, *answer.events], spec.delta)
        given = answer.labels >= 0  # a group the client's data does not reach is not trained on
        extra.update(label_agreement=float((answer.labels[given] == proxy.labels[given]).mean()) if given.any() else float("nan"),
                     labelled=int(given.sum()))  # fmt: skip
        if given.any():
            labelled = ImageSet(proxy.images[given], answer.labels[given], proxy.domains[given], proxy.ids[given])
            result = train_classifier(labelled, spec.train, cell.seed)
            acc, train_s = accuracy(result.model, s.test), result.seconds
        else:
            acc, train_s = float("nan"), 0.0
        down, up, macs = down + answer.bytes_down, up + answer.bytes_up, macs + answer.macs
    else:  # validated by GridSpec; a hand-made Cell may still be wrong
        raise ValueError(f"unknown application {cell.application!r}; known: {list(APPLICATIONS)}")

    domains = pd.Series(proxy.domains.astype(str))
    row.update(accuracy=acc, epsilon=eps, proxy_size=len(picked), unspent=max(cell.budget - len(picked), 0),
               distractor_share=float(domains.isin(spec.distractor_domains).mean()) if len(picked) else float("nan"),
               client_domain_share=float((domains == cell.client_domain).mean()) if len(picked) else float("nan"),
               bytes_down=int(down), bytes_up=int(up), client_macs=macs, client_s=client_s, train_s=train_s,
               select_s=select_s, proxy_domains=json.dumps(domains.value_counts().sort_index().to_dict()),
               **extra)  # fmt: skip
    return row


__all__ = [
    "APPLICATIONS",
    "BENCH_SAMPLERS",
    "REGIMES",
    "BenchContext",
    "Cell",
    "GridSpec",
    "cell_key",
    "grid_cells",
    "grid_key",
    "run_cell",
]  # fmt: skip
