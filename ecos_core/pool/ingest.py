"""Decoding source rows into shards, one chunk at a time, with an error per bad row.

Every check a row can fail is here, so the message always names the row and its URI:
missing or unreadable file, not an image, a decompression bomb (more pixels than
`max_pixels`, refused before any pixel is decoded), a label that is not a class id.
on_error="fail" raises at the first bad row; "skip" leaves it out and reports it.
"""

from __future__ import annotations

import functools
import io
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from ecos_core.data.builtin import IMAGE_SIZE, load_domain
from ecos_core.data.user import MAX_BYTES_PER_FILE, _open_store, _read_capped
from ecos_core.pool.catalog import UNLABELLED
from ecos_core.pool.synthetic import augmented

OnError = Literal["fail", "skip"]
MAX_PIXELS = 40_000_000  # a 6,300 px square photo; a bomb declares far more in a few KB


class IngestError(ValueError):
    """A bad source row under on_error="fail"; names the row and the URI."""


@dataclass(frozen=True)
class RowError:
    source_row: int
    id: str
    uri: str
    reason: str

    def __str__(self) -> str:
        return f"row {self.source_row} ({self.uri}): {self.reason}"

    def as_dict(self) -> dict:
        return asdict(self)


def parse_label(text: str) -> int:
    """A class id (int ≥ 0), or UNLABELLED for an empty cell."""
    if text == "":
        return UNLABELLED
    try:
        number = float(text)
        if not number.is_integer() or number < 0:
            raise ValueError
    except (ValueError, OverflowError):
        raise ValueError(f"label {text!r} is not a class id (an integer ≥ 0, or empty for unlabelled)") from None
    return int(number)


@functools.lru_cache(maxsize=2)
def _builtin(name: str):  # noqa: ANN202 - one decoded domain per process, shared by its chunks
    return load_domain(name)


def _resize(rgb: Image.Image, size: int) -> np.ndarray:
    return np.asarray(rgb.resize((size, size), Image.BILINEAR) if rgb.size != (size, size) else rgb, dtype=np.uint8)


def load_image(uri: str, size: int, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_BYTES_PER_FILE) -> np.ndarray:
    """uint8 (size, size, 3) RGB; ValueError with the reason when the row is bad."""
    if uri.startswith("augment:"):
        seed, _, index = uri.removeprefix("augment:").partition("/")
        image = augmented(int(seed), int(index))[0]
        return image if size == IMAGE_SIZE else _resize(Image.fromarray(image), size)
    if uri.startswith("builtin:"):
        name, _, index = uri.removeprefix("builtin:").partition("/")
        image = _builtin(name).images[int(index)]
        return image if size == IMAGE_SIZE else _resize(Image.fromarray(image), size)
    try:
        fs, path = _open_store(uri)
        data = _read_capped(fs, path, uri, max_bytes)
    except FileNotFoundError:
        raise ValueError("file not found") from None
    except ValueError:
        raise
    except Exception as err:  # noqa: BLE001 - every backend has its own errors
        raise ValueError(f"unreadable ({type(err).__name__}: {err})") from None
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            if width * height > max_pixels:
                raise ValueError(f"decompression bomb: declares {width}×{height} pixels, more than the {max_pixels:,} allowed")
            return _resize(im.convert("RGB"), size)
    except Image.DecompressionBombError as err:
        raise ValueError(f"decompression bomb: {err}") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"not an image ({err})") from None


def decode_chunk(
    rows: pd.DataFrame, size: int, on_error: OnError = "fail", max_pixels: int = MAX_PIXELS,
    max_bytes: int = MAX_BYTES_PER_FILE,
) -> tuple[np.ndarray, pd.DataFrame, list[RowError]]:  # fmt: skip
    """(images, the rows kept with integer labels, the rows skipped) of one chunk."""
    if on_error not in ("fail", "skip"):
        raise ValueError(f"on_error must be 'fail' or 'skip', got {on_error!r}")
    images, kept, errors = [], [], []
    for i, row in enumerate(rows.itertuples(index=False)):
        try:
            label = parse_label(str(row.label))
            images.append(load_image(row.uri, size, max_pixels, max_bytes))
            kept.append((i, label))
        except ValueError as err:
            error = RowError(int(row.source_row), str(row.id), str(row.uri), str(err))
            if on_error == "fail":
                raise IngestError(str(error)) from None
            errors.append(error)
    out = rows.iloc[[i for i, _ in kept]].reset_index(drop=True)
    out["label"] = np.asarray([label for _, label in kept], dtype=np.int64)
    stack = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
    return stack, out, errors


def chunk_bounds(n: int, shard_size: int) -> list[tuple[int, int]]:
    """[start, stop) of each chunk: one chunk becomes one shard."""
    if shard_size < 1:
        raise ValueError(f"shard size must be ≥ 1, got {shard_size}")
    return [(start, min(start + shard_size, n)) for start in range(0, n, shard_size)]
