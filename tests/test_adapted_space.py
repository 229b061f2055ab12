"""The pool-adapted feature space as it travels: annotated rows, the weights archive (its
bytes, its hash, everything malformed refused), the probe that pins it and the device that
applies it, refusing before any ε."""

import hashlib
import io
import zipfile

import numpy as np
import pytest

from ecos_core.storage import layout
from ecos_core.embedding.adapted_space import AdaptedSpace, annotated_rows, annotated_set, combined
from ecos_core.exchange.auth import enroll
from ecos_core.exchange.client import respond
from ecos_core.data.split import subsample
from ecos_core.privacy.ledger import PrivacyLedger
from ecos_core.exchange.protocol import ProtocolError, check_adapted, decode_probe, encode_probe
from ecos_core.storage.store import Store
from tests.conftest import make_imageset
from tests.test_client import publish


@pytest.fixture(scope="module")
def space() -> AdaptedSpace:
    import torch

    from ecos_core.training.train import SmallCNN

    torch.manual_seed(0)
    return AdaptedSpace({k: v.numpy() for k, v in SmallCNN(11, 4).state_dict().items()}, 4, 11)


def test_annotated_rows_are_the_benchmarks_sample_on_a_labelled_pool_and_skip_unlabelled_rows():
    pool = make_imageset(300)
    assert np.array_equal(pool.subset(annotated_rows(pool.labels, pool.domains, 120, (), 3)).ids,
                          subsample(pool, 120, 3).ids)  # fmt: skip
    labels = pool.labels.copy()
    labels[::2] = -1  # unlabelled (an ingested pool's -1)
    domains = np.where(np.arange(300) % 4 == 0, "letters", "digits")  # off task: "none" needs no label
    rows = annotated_rows(labels, domains, 1000, ("letters",), 0)
    assert set(rows) == set(np.flatnonzero((labels >= 0) | (domains == "letters")))
    assert np.array_equal(rows, annotated_rows(labels, domains, 1000, ("letters",), 0))
    y = annotated_set(pool.images[rows], labels[rows], domains[rows], pool.ids[rows], ("letters",), 10).labels
    assert (y[domains[rows] == "letters"] == 10).all() and (y[domains[rows] == "digits"] < 10).all()


def test_too_few_or_out_of_range_annotations_are_refused_in_one_line():
    pool = make_imageset(60)
    with pytest.raises(ValueError, match=r"needs at least 50 annotated images of pool.parquet .* use --feature-space backbone"):
        annotated_set(pool.images[:10], pool.labels[:10], pool.domains[:10], pool.ids[:10], (), 10, "pool.parquet")
    bad = pool.labels.copy()
    bad[7] = 12
    with pytest.raises(ValueError, match=r"label 12 is not a class id in 0..9"):
        annotated_set(pool.images, bad, pool.domains, pool.ids, (), 10)


def test_the_archive_is_byte_identical_for_the_same_weights_and_round_trips(space, monkeypatch):
    import time

    first = space.to_bytes()
    monkeypatch.setattr(time, "time", lambda: 2e9)  # np.savez would stamp another time into the zip
    assert space.to_bytes() == first and space.sha256 == hashlib.sha256(first).hexdigest()
    again = AdaptedSpace.from_bytes(first, space.sha256)
    images = make_imageset(5).images
    assert np.array_equal(again.embed(images), space.embed(images)) and space.embed(images).shape == (5, 128)


def _archive(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


@pytest.mark.parametrize("make, why", [
    (lambda b: b"not an archive", "not a weights archive"),
    (lambda b: b[: len(b) // 2], "not a weights archive"),
    (lambda b: _archive(width=np.int64(4), classes=np.int64(11), **{"w:x": np.array([object()], dtype=object)}),
     "not a weights archive"),
    (lambda b: _archive(width=np.int64(4)), "not a weights archive"),  # no classes
    (lambda b: _archive(width=np.int64(10**6), classes=np.int64(11)), "out of range"),
    (lambda b: _archive(width=np.int64(8), classes=np.int64(11), **{"w:head.4.bias": np.zeros(11, np.float32)}),
     "do not fit a width-8 SmallCNN"),
])  # fmt: skip
def test_a_malformed_archive_is_refused_without_unpickling(space, make, why):
    with pytest.raises(ValueError, match=why):
        AdaptedSpace.from_bytes(make(space.to_bytes()))


def test_nan_weights_and_a_changed_hash_are_refused(space):
    weights = {k: v.copy() for k, v in space.weights.items()}
    weights["head.4.bias"][0] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        AdaptedSpace.from_bytes(AdaptedSpace(weights, 4, 11).to_bytes())
    with pytest.raises(ValueError, match="sha256 mismatch"):
        AdaptedSpace.from_bytes(space.to_bytes(), "0" * 64)
    with pytest.raises(ValueError, match="takes 28×28 RGB images"):
        space.embed(np.zeros((2, 32, 32, 3), np.uint8))


def test_the_probe_pins_the_space_and_its_dimension(space):
    from datetime import datetime, timezone

    from ecos_core.embedding.feature_space import BackboneSpec

    now, data = datetime.now(timezone.utc), space.to_bytes()
    plain = encode_probe("r1", np.zeros((3, 1280), np.float32), BackboneSpec(), 6.1, 1e-5, now)[1]
    assert b"adapted" not in plain  # a backbone-space probe reads exactly as before the field existed
    probe, pj, npy = encode_probe("r1", np.zeros((3, 1408), np.float32), BackboneSpec(), 6.1, 1e-5, now,
                                  adapted_sha256=space.sha256)  # fmt: skip
    assert decode_probe(pj, npy)[0].feature_dims() == (1280, 128)
    assert check_adapted(probe, data) == data
    with pytest.raises(ProtocolError, match="adapted.npz: sha256 does not match"):
        check_adapted(probe, data[:-1] + b"x")
    with pytest.raises(ValueError, match=r"dim 1280 is not the feature space's \(1280, 128\)"):
        encode_probe("r1", np.zeros((3, 1280), np.float32), BackboneSpec(), 6.1, 1e-5, now, adapted_sha256=space.sha256)


@pytest.fixture
def device(tmp_path):
    store = Store(str(tmp_path / "store"))
    return store, enroll(store, "c1"), PrivacyLedger(tmp_path / "device" / "ledger.json")


def test_the_device_answers_in_the_combined_space_as_the_cloud_computes_it(device, space):
    from ecos_core.embedding.backbones import load_backbone
    from ecos_core.sampling.coverage import coverage_counts
    from ecos_core.embedding.features import embed

    store, enrollment, ledger = device
    invitation = publish(store, enrollment, adapted=space.to_bytes())
    data = make_imageset(30)
    respond(invitation, enrollment, data.images, ledger, seed=0, show_bar=False)
    assert store.exists(layout.response("r1", "c1")) and ledger.spent(1e-5) > 0
    # what the cloud stores for the same images: backbone features (its batch size), then combined
    model, spec = load_backbone()
    cloud = combined(embed(data.images, model, spec.preprocessing, 128, show_bar=False), space.embed(data.images))
    from ecos_core.embedding.adapted_space import space_features

    assert np.array_equal(space_features(data.images, model, spec.preprocessing, space), cloud)
    centroids = decode_probe(store.read_bytes(layout.probe_json("r1")), store.read_bytes(layout.probe_centroids("r1")))[1]
    assert coverage_counts(cloud, centroids, None).sum() == 30


@pytest.mark.parametrize("tamper", ["altered", "no_url", "too_big"])
def test_a_bad_adapted_space_is_refused_before_any_feature_or_epsilon(device, space, tamper, monkeypatch):
    import ecos_core.embedding.features as features
    from ecos_core.exchange import protocol

    store, enrollment, ledger = device
    invitation = publish(store, enrollment, adapted=space.to_bytes())
    if tamper == "altered":  # the bucket's copy changed after publishing: the MAC'd probe pins the hash
        store.write_bytes(layout.probe_adapted("r1"), space.to_bytes()[:-4] + b"\0\0\0\0", overwrite=True)
    elif tamper == "no_url":
        invitation = invitation.model_copy(update={"adapted_url": None})
    else:
        monkeypatch.setattr(protocol, "MAX_ADAPTED_BYTES", 1000)
    monkeypatch.setattr(features, "embed", lambda *a, **k: pytest.fail("a feature was computed"))
    why = {"altered": "sha256 does not match", "no_url": "the invitation has no adapted_url", "too_big": "larger than"}
    with pytest.raises(Exception, match=why[tamper]) as refused:
        respond(invitation, enrollment, make_imageset(4).images, ledger, show_bar=False)
    assert str(refused.value).count("round r1 probe") == 1  # one line, its source named once
    assert not ledger.path.exists() and not store.exists(layout.response("r1", "c1"))


def test_an_archive_whose_members_hide_a_pickle_is_refused(space):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive, archive.open("width.npy", "w") as out:
        out.write(b"\x80\x04K\x04.")  # a pickle where an .npy header belongs
    with pytest.raises(ValueError, match="not a weights archive"):
        AdaptedSpace.from_bytes(buf.getvalue())


def test_the_space_is_keyed_by_its_own_training_not_the_rounds(tmp_path, one_torch_thread):
    """The GPU-training deployment sets train.accelerator="gpu" for the proxy-set models; the
    adapted space is trained where the index runs, on its own settings (index.adapted_steps),
    so every round on the pool shares it whatever its cfg.train; its steps are in its key."""
    from prefect import flow

    from ecos_core.config import DataConfig, IndexConfig
    from tasks.adapted import adapted_space, adapted_training
    from tests_helpers_tiny import TINY_ROUND

    data, index = DataConfig.model_validate(TINY_ROUND["data"]), IndexConfig(adapted_size=120, adapted_steps=3)
    assert adapted_training(index, 10).accelerator == "auto" and adapted_training(index, 10).max_steps == 3

    @flow
    def train(index: IndexConfig) -> dict:
        return adapted_space(str(tmp_path), None, data, index, 10, 0)

    first = train(index)
    assert first["bytes"] > 0 and Store(str(tmp_path)).exists(layout.adapted_space(first["key"]))
    assert train(index) == first  # found in the store, not retrained
    assert train(index.model_copy(update={"adapted_steps": 4}))["key"] != first["key"]


def test_a_pool_the_space_cannot_train_on_is_refused_before_any_shard_is_embedded(tmp_path):
    import pandas as pd

    from ecos_core.config import IndexConfig
    from ecos_core.pool.sources import source_rows
    from flows.ingest_flow import ingest_flow
    from flows.pool_index_flow import pool_index_flow

    rows = source_rows("builtin:mnist:80")[["id", "uri", "label", "domain"]]
    rows.assign(label=["" if i >= 30 else v for i, v in enumerate(rows["label"])]).to_csv(tmp_path / "m.csv", index=False)
    ingest_flow(str(tmp_path / "m.csv"), str(tmp_path / "pool"), shard_size=64, workers=1)
    with pytest.raises(ValueError, match=r"needs at least 50 annotated images of .*pool.*; it has 30\. Label more, or use "
                                         r"--feature-space backbone"):
        pool_index_flow(str(tmp_path / "pool"), str(tmp_path / "store"), IndexConfig(k=4), workers=1)
    ingest_flow(str(tmp_path / "m.csv"), str(tmp_path / "pool32"), shard_size=64, image_size=32, workers=1)
    with pytest.raises(ValueError, match=r"images are 32 px; .* takes 28 px \(ingest with --image-size 28, or use "):
        pool_index_flow(str(tmp_path / "pool32"), str(tmp_path / "store"), IndexConfig(k=4), workers=1)
    assert pd.read_csv(tmp_path / "m.csv")["label"].notna().sum() == 30
    assert not (tmp_path / "store" / "features").exists()  # refused before any shard was embedded
