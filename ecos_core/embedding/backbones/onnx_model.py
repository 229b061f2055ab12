"""The user's own feature extractor: an ONNX file at any fsspec URL (a local path, file://,
s3://, http(s)://), pinned by its sha256, run with onnxruntime on the CPU.

Why ONNX and not TorchScript: the file crosses trust boundaries (the user's model into
the cloud, and the cloud's choice onto every device), and this project never unpickles
anything that did. A TorchScript archive is pickles (data.pkl, constants.pkl), and torch
2.13's own docs warn that `torch.jit.load` can execute arbitrary code from crafted
pickle data; torch 2.13 also deprecates `torch.jit.trace/save/load` (and torch.export's
.pt2 loader uses pickle too). An ONNX file is a protobuf graph of standard operators:
onnxruntime parses it without running Python, refuses custom operators nobody registered,
and refuses external-data paths outside the model's folder (each cached model sits alone
in its own folder). Cost: onnxruntime (+ protobuf, flatbuffers) on the cloud and the
devices, pinned in requirements.lock; users export with `torch.onnx.export(model, x,
"model.onnx", dynamo=False, input_names=["images"], dynamic_axes={"images": {0: "n"}})`
(needs the `onnx` package, also pinned).

The file is downloaded once into ~/.cache/ecos/models/<sha256>/model.onnx
($ECOS_CACHE_DIR), hashed while it streams and refused on mismatch (nothing is kept),
re-hashed before every load, and its output is checked on a fixed batch before any real
image goes through it: 2-D (N, feature_dim), floating point, finite. Every later batch is
checked the same way, so a NaN on real data stops the client before any ε is spent.
"""

from __future__ import annotations

import functools
import hashlib
import os
import uuid
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ecos_core.embedding.backbones.common import BackboneUnavailable, check_output, file_sha256
from ecos_core.embedding.feature_space import USER_MODEL, BackboneSpec, Preprocessing

MAX_MODEL_BYTES = 2 * 1024**3  # protobuf's own limit for one file
MODEL_FILENAME = "model.onnx"


def models_cache_dir() -> Path:
    return Path(os.environ.get("ECOS_CACHE_DIR") or Path.home() / ".cache" / "ecos") / "models"


def _local_path(url: str) -> Path | None:
    if url.startswith("file://"):
        return Path(url.removeprefix("file://"))
    return None if "://" in url else Path(url)


def fetch_model(url: str, sha256: str, cache_dir: Path | None = None) -> Path:
    """The model file in the local cache, verified; downloaded (streamed, hashed, size-capped)
    when missing. A file whose hash differs from `sha256` is refused and not kept."""
    folder = (cache_dir or models_cache_dir()) / sha256
    target = folder / MODEL_FILENAME
    if target.is_file():
        if file_sha256(target) == sha256:
            return target
        target.unlink()  # altered in the cache: fetch it again
    local = _local_path(url)
    if local is not None and not local.is_file():
        raise BackboneUnavailable(f"model file not found: {url}")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{sha256}.part-{uuid.uuid4().hex}"  # outside the folder ORT may read from
    h, size = hashlib.sha256(), 0
    try:
        import fsspec

        from ecos_core.settings import Settings

        with fsspec.open(url, "rb", **Settings().storage_options(url)) as src, open(tmp, "wb") as dst:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                size += len(chunk)
                if size > MAX_MODEL_BYTES:
                    raise ValueError(f"model file {url}: larger than {MAX_MODEL_BYTES} bytes; refused")
                h.update(chunk)
                dst.write(chunk)
        if h.hexdigest() != sha256:
            raise ValueError(f"sha256 mismatch for model file {url}: expected {sha256}, got {h.hexdigest()}; "
                             "refusing to load it (wrong or altered file, or a wrong --model-sha256)")  # fmt: skip
        os.replace(tmp, target)
    except FileNotFoundError:
        raise BackboneUnavailable(f"model file not found: {url}") from None
    finally:
        tmp.unlink(missing_ok=True)
        if not target.exists() and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    return target


class OnnxExtractor(nn.Module):
    """A user's ONNX feature extractor as a frozen module: (N,3,H,W) floats -> (N, feature_dim),
    every output checked (shape, dtype, finite). It has no torch parameters; it runs on the CPU."""

    def __init__(self, session: object, feature_dim: int, source: str) -> None:
        super().__init__()
        self.session = session
        self.input_name = session.get_inputs()[0].name  # type: ignore[attr-defined]
        self.feature_dim = feature_dim
        self.source = source
        super().train(False)

    def train(self, mode: bool = True) -> "OnnxExtractor":
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feed = {self.input_name: x.detach().to("cpu", torch.float32).contiguous().numpy()}
        out = self.session.run(None, feed)[0]  # type: ignore[attr-defined]
        out = torch.from_numpy(np.asarray(out))
        return check_output(out, len(x), self.feature_dim, self.source).float().to(x.device)


def check_batch(pre: Preprocessing) -> torch.Tensor:
    """Two fixed inputs of the spec's size, as preprocessing makes them: mid-grey and seeded noise."""
    g = torch.Generator().manual_seed(0)
    pixels = torch.stack([torch.full((3, pre.size, pre.size), 0.5), torch.rand(3, pre.size, pre.size, generator=g)])
    mean, std = torch.tensor(pre.mean).view(1, 3, 1, 1), torch.tensor(pre.std).view(1, 3, 1, 1)
    return (pixels - mean) / std


def _session(path: str, source: str) -> object:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: the user sees our one line, not ORT's log
    options.intra_op_num_threads = torch.get_num_threads()  # the same core budget as the torch backbones
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own exception types
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"model {source}: onnxruntime cannot load it ({first})") from None
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].type != "tensor(float)" or len(inputs[0].shape) != 4:
        got = ", ".join(f"{i.name}: {i.type} {i.shape}" for i in inputs)
        raise ValueError(f"model {source}: needs exactly one float input of shape (N, 3, H, W), has {got}")
    return session


@functools.cache
def _load_cached(path: str, sha256: str, pre: Preprocessing, feature_dim: int | None, source: str) -> OnnxExtractor:
    if file_sha256(path) != sha256:  # the cache could have changed since it was fetched
        raise ValueError(f"sha256 mismatch for model file {path} ({source}): expected {sha256}; refusing to load it")
    session = _session(path, source)
    try:
        out = session.run(None, {session.get_inputs()[0].name: check_batch(pre).numpy()})[0]  # type: ignore[attr-defined]
    except Exception as err:  # noqa: BLE001
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"model {source}: fails on a (2, 3, {pre.size}, {pre.size}) batch ({first})") from None
    out = check_output(torch.from_numpy(np.asarray(out)), 2, feature_dim, f"model {source}")
    return OnnxExtractor(session, int(out.shape[1]), f"model {source}")


def load_onnx(url: str, sha256: str, pre: Preprocessing, feature_dim: int | None = None,
              weights_path: str | Path | None = None) -> OnnxExtractor:  # fmt: skip
    """The user's model, verified and checked. `weights_path`: a local copy to use instead of
    the URL (e.g. on a device that cannot reach it); it must hash to `sha256` all the same."""
    if weights_path is not None:
        path = fetch_model(str(weights_path), sha256)  # copied into the cache: alone in its folder
    else:
        path = fetch_model(url, sha256)
    return _load_cached(str(path.resolve()), sha256, pre, feature_dim, url)


def load(spec: BackboneSpec | None, weights_path: str | Path | None, device: str) -> tuple[nn.Module, BackboneSpec]:
    if spec is None or spec.model_url is None:
        raise ValueError(f"backbone {USER_MODEL!r} needs a spec with model_url and weights_sha256")
    return load_onnx(spec.model_url, spec.weights_sha256, spec.preprocessing, spec.feature_dim, weights_path), spec


def resolve(url: str, sha256: str, pre: Preprocessing, feature_dim: int | None) -> BackboneSpec:
    """The spec of a user's model: its feature dimension is measured when not given."""
    model = load_onnx(url, sha256, pre, feature_dim)
    return BackboneSpec(name=USER_MODEL, weights_sha256=sha256, feature_dim=model.feature_dim, preprocessing=pre,
                        model_url=url)  # fmt: skip
