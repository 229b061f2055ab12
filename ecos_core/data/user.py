"""Load a user's own images as an ImageSet, from local disk or any fsspec URL.

Two layouts are supported:

* image folder: root/<class>/<file>. Class folder names, sorted, give the label ids
  (label i == image_folder_classes(root)[i]). Files may sit in nested folders under a
  class folder. Hidden entries (".DS_Store", ".git") and loose files directly in root
  (a README, say) are ignored. Every other file must be an image.
* manifest: a .csv or .parquet table with columns uri, label, domain and optionally id.
  Labels must be non-negative integers (a uri may be builtin:<domain>/<index>). Class-name strings are rejected on purpose:
  mapping them per file would give the same name different ids in the client's and the
  pool's manifests. Relative uris resolve against `base`, else the manifest's folder.

Every image is converted to RGB and resized to size x size (bilinear, aspect ratio not
kept, matching the built-in 28x28 domains). Listing and decoding are ecos_core.pool's
(sources, ingest): a dataset loads exactly as `ecos pool ingest` would ingest it.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import Any

import fsspec
import numpy as np
import pandas as pd
from fsspec.core import url_to_fs
from PIL import Image

from ecos_core.data.builtin import IMAGE_SIZE, load_domain, parse_builtin
from ecos_core.data.split import subsample
from ecos_core.types import ImageSet

MAX_BYTES_PER_FILE = 20_000_000
MANIFEST_COLUMNS = ("uri", "label", "domain")
_MANIFEST_SUFFIXES = (".csv", ".parquet", ".pq")


# --------------------------------------------------------------------------- helpers


def _open_store(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The URL's filesystem with the store's S3 endpoint, credentials and checksum settings
    (a user's pool on the project's S3 server reads like the store itself)."""
    from ecos_core.settings import Settings

    try:
        return url_to_fs(url, **Settings().storage_options(url))
    except (ImportError, ValueError) as exc:
        # e.g. "s3://..." without s3fs installed, or a malformed URL.
        raise ValueError(f"{url}: cannot open storage ({exc})") from exc


@contextlib.contextmanager
def _storage_errors(url: str, action: str) -> Iterator[None]:
    """Turn backend-specific failures (botocore, aiohttp, ...) into one ValueError naming the URL.

    FileNotFoundError and our own ValueErrors already name the URL and pass through.
    """
    try:
        yield
    except (FileNotFoundError, ValueError):
        raise
    except Exception as exc:  # noqa: BLE001 - each fsspec backend has its own exception types
        raise ValueError(f"{url}: cannot {action} ({type(exc).__name__}: {exc})") from exc


def _read_capped(fs: fsspec.AbstractFileSystem, path: str, url: str, max_bytes: int) -> bytes:
    size = fs.size(path)
    if size is not None and size > max_bytes:
        raise ValueError(f"{url}: file too large ({size} bytes > limit {max_bytes})")
    with fs.open(path, "rb") as fh:
        data = fh.read(max_bytes + 1)  # the listed size may lie; never read unbounded
    if len(data) > max_bytes:
        raise ValueError(f"{url}: file too large (> limit {max_bytes} bytes)")
    return data


def _check_size(size: int) -> None:
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"image size must be a positive int, got {size!r}")


def _is_hidden(path: str) -> bool:
    return any(part.startswith(".") for part in PurePosixPath(path).parts)


def _join_url(fs: fsspec.AbstractFileSystem, root: str, path: str) -> str:
    """Display form of a filesystem path in messages: plain for local roots, else a URL."""
    return path if "://" not in root else fs.unstrip_protocol(path)


# --------------------------------------------------------------------------- image folder


def _class_dirs(root: str) -> tuple[fsspec.AbstractFileSystem, str, list[tuple[str, str]]]:
    fs, path = _open_store(root)
    with _storage_errors(root, "list image folder"):
        try:
            is_dir = fs.isdir(path)
            if not is_dir:
                reason = "is a file, not a folder" if fs.exists(path) else "image folder not found"
                raise FileNotFoundError(f"{root}: {reason}")
            entries = fs.ls(path, detail=True)
        except FileNotFoundError as exc:
            if str(exc).startswith(root):
                raise
            raise FileNotFoundError(f"{root}: image folder not found") from exc
    dirs = sorted(
        (posixpath.basename(e["name"].rstrip("/")), e["name"])
        for e in entries
        if e.get("type") == "directory" and not posixpath.basename(e["name"].rstrip("/")).startswith(".")
    )
    if not dirs:
        raise ValueError(f"{root}: empty image folder (expected root/<class>/<image files>)")
    return fs, path, dirs


def image_folder_classes(root: str) -> list[str]:
    """Class names of an image folder; label i of load_image_folder(root) is classes[i]."""
    return [name for name, _ in _class_dirs(root)[2]]


def load_image_folder(
    root: str,
    size: int = IMAGE_SIZE,
    domain: str | None = None,
    max_bytes_per_file: int = MAX_BYTES_PER_FILE,
) -> ImageSet:
    """Load root/<class>/<file> images (local path or fsspec URL) as an ImageSet.

    Labels are indices into image_folder_classes(root). domain defaults to the root
    folder's name; ids are "<domain>/<class>/<relative file path>", stable across runs.
    Listed and decoded exactly as `ecos pool ingest` does (ecos_core.pool).
    """
    from ecos_core.pool.sources import folder_rows  # here: ecos_core.pool builds on this module's helpers

    _check_size(size)
    return _decoded(folder_rows(root, domain), size, root, max_bytes_per_file)


def _decoded(rows: pd.DataFrame, size: int, where: str, max_bytes: int = MAX_BYTES_PER_FILE) -> ImageSet:
    """Every row decoded, or a ValueError naming the first bad row; every row needs a label."""
    from ecos_core.pool.ingest import IngestError, decode_chunk

    try:
        images, kept, _ = decode_chunk(rows, size, "fail", max_bytes=max_bytes)
    except IngestError as err:
        raise ValueError(f"{where}: {err}") from None
    if (kept["label"] < 0).any():
        row = kept[kept["label"] < 0].iloc[0]
        raise ValueError(f"{where}: row {row['source_row']} ({row['uri']}): no label (a class id is needed here)")
    return ImageSet(images, kept["label"].to_numpy(np.int64), kept["domain"].to_numpy(str), kept["id"].to_numpy(str))


# --------------------------------------------------------------------------- manifest


def _read_table(url: str) -> pd.DataFrame:
    fs, path = _open_store(url)
    with _storage_errors(url, "access manifest"):
        exists = fs.exists(path)
    if not exists:
        raise FileNotFoundError(f"{url}: manifest not found")
    try:
        with _storage_errors(url, "read manifest"), fs.open(path, "rb") as fh:
            if url.lower().endswith(".csv"):
                # Read everything as text: we validate label/uri types ourselves.
                return pd.read_csv(fh, dtype=str, keep_default_na=False)
            return pd.read_parquet(fh)
    except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        if str(exc).startswith(f"{url}: "):
            raise
        raise ValueError(f"{url}: cannot read manifest ({exc})") from exc


def _resolve(uri: str, base: str) -> str:
    """A manifest row's uri, absolute: relative local paths resolve here, on the driver,
    since Dask workers (on other machines, in other folders) have other working directories."""
    if "://" in uri or uri.startswith("/"):
        return uri
    joined = posixpath.join(base, uri)
    return joined if "://" in joined else os.path.abspath(joined)


def _text(value: Any) -> str:
    """Cell as stripped text; missing cells (None/NaN) become ""."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return str(value).strip()


def load_manifest(url: str, size: int = IMAGE_SIZE, base: str | None = None) -> ImageSet:
    """Load the images listed in a CSV/parquet manifest (columns uri, label, domain[, id]).

    Rows are 0-based data rows. Without an id column, ids are "<manifest stem>/<row>".
    Listed and decoded exactly as `ecos pool ingest` does (ecos_core.pool).
    """
    from ecos_core.pool.sources import manifest_rows

    _check_size(size)
    if not url.lower().endswith(_MANIFEST_SUFFIXES):
        raise ValueError(f"{url}: manifest must end with one of {_MANIFEST_SUFFIXES}")
    return _decoded(manifest_rows(url, base, required=MANIFEST_COLUMNS), size, url)


# --------------------------------------------------------------------------- dispatch


def load_dataset(
    spec: str,
    size: int = IMAGE_SIZE,
    *,
    domain: str | None = None,
    cache_dir: str | None = None,
    max_samples: int | None = None,
    seed: int = 0,
) -> ImageSet:
    """Load "builtin:<domain>[:<count>]", a .csv/.parquet manifest, or an image folder.

    max_samples takes the same seeded, order-preserving subset for every source.
    """
    if spec.startswith("builtin:"):
        if size != IMAGE_SIZE:
            raise ValueError(f"{spec}: built-in domains are {IMAGE_SIZE}x{IMAGE_SIZE}, size={size} requested")
        name, count = parse_builtin(spec)
        limit = count if max_samples is None else max_samples if count is None else min(count, max_samples)
        return load_domain(name, cache_dir=cache_dir, max_samples=limit, seed=seed)
    if spec.lower().endswith(_MANIFEST_SUFFIXES):
        data = load_manifest(spec, size=size)
    else:
        data = load_image_folder(spec, size=size, domain=domain)
    return subsample(data, max_samples, seed)


def save_image_folder(data: ImageSet, root: str) -> int:
    """Write `data` as root/<label>/<n>.png, the layout load_image_folder reads (e.g. to
    give a simulated device its images). Returns the number of files written."""
    for i, (image, label) in enumerate(zip(data.images, data.labels)):
        folder = os.path.join(root, str(int(label)))
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(image).save(os.path.join(folder, f"{i:06d}.png"))
    return len(data)
