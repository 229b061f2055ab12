"""Shards: a block of decoded images in one .npy, addressed by the sha256 of its bytes.

The name is the content, so writing a shard twice is harmless (idempotent ingest), and
a shard whose bytes changed in the store after ingest no longer matches its name and is
refused instead of silently feeding other pixels to the index.
"""

from __future__ import annotations

import hashlib
import io

import numpy as np


class ShardIntegrityError(ValueError):
    """A shard's bytes no longer match the sha256 it is named by."""


def encode_shard(images: np.ndarray) -> tuple[bytes, str]:
    """(npy bytes, sha256 hex) of uint8 (n, S, S, 3) images."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"a shard holds uint8 (n, S, S, 3) images, got {images.dtype} {images.shape}")
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(images), allow_pickle=False)
    data = buf.getvalue()
    return data, hashlib.sha256(data).hexdigest()


def decode_shard(data: bytes, sha256: str, where: str) -> np.ndarray:
    """The images of a shard, after checking its bytes against its name."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise ShardIntegrityError(f"{where}: shard changed after ingest (sha256 {actual[:12]}…, expected "
                                  f"{sha256[:12]}…); re-ingest the pool")  # fmt: skip
    try:
        images = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as err:
        raise ShardIntegrityError(f"{where}: not a plain .npy shard ({err})") from None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ShardIntegrityError(f"{where}: shard holds {images.dtype} {images.shape}, not uint8 (n, S, S, 3) images")
    return images
