"""Content keys: what the store caches things by (features, indexes, selections). Light:
no torch, so every flow and task can import it."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
from pydantic import BaseModel


def _encode_part(part: Any) -> tuple[bytes, bytes | memoryview]:
    """(tag+header, payload); arrays are hashed in place so a big pool is never copied."""
    if isinstance(part, np.ndarray):
        if part.dtype.hasobject:
            raise TypeError("content_key: object arrays have no stable byte representation")
        header = json.dumps({"dtype": part.dtype.str, "shape": list(part.shape)}).encode()
        return b"ndarray:" + header, memoryview(np.ascontiguousarray(part).reshape(-1).view(np.uint8))
    if isinstance(part, (bytes, bytearray, memoryview)):
        return b"bytes:", bytes(part)
    if isinstance(part, BaseModel):
        part = part.model_dump(mode="json")
    if isinstance(part, np.generic):
        part = part.item()
    try:
        text = json.dumps(part, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"content_key: cannot hash part of type {type(part).__name__}: {exc}") from exc
    return b"json:", text.encode("utf-8")


def content_key(*parts: Any) -> str:
    """sha256 hex over arrays (bytes+shape+dtype), pydantic models and JSON-able values.

    Stable across processes and machines of the same endianness (no Python hash()).
    """
    h = hashlib.sha256(b"ecos-content-key-v1")
    for part in parts:
        header, payload = _encode_part(part)
        # Length framing, so ("ab", "c") and ("a", "bc") never collide.
        for chunk in (header, payload):
            h.update(len(chunk).to_bytes(8, "little"))
            h.update(chunk)
    return h.hexdigest()
