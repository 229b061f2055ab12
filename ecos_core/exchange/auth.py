"""Authenticated responses and probes: HMAC-SHA256 with a per-client key issued at enrollment.

The cloud enrolls a client once and hands it a 32-byte random key. The client signs each
response with it, so the cloud can reject scores that a third party forged or altered,
or that claim another client's id (the key is looked up by the *claimed* id, so a MAC
made with any other key fails). The cloud MACs each probe.json with the same key, so the
client can refuse a forged or altered probe; probe.json carries the centroids' sha256,
so the MAC covers the centroids too.

Wire format of a signed response (protocol.Response unchanged, only wrapped):
    {"hmac_sha256": "<64 hex>", "response": <Response JSON object>}
The MAC covers `canonical_json(response object)`, so whitespace or key order added in
transit cannot break it, and the cloud decodes exactly the bytes it verified.

The registry holds every client's key: keep it in a store the clients cannot read.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator

from ecos_core.exchange.protocol import ID_PATTERN, MAX_RESPONSE_BYTES, ProtocolError, cut
from ecos_core.storage.private_file import write_private
from ecos_core.storage.store import Store

KEY_BYTES = 32
MAC_FIELD = "hmac_sha256"
REGISTRY_PREFIX = "registry/clients"
_MAC_RE = re.compile(r"^[0-9a-f]{64}$")
_ID_RE = re.compile(ID_PATTERN)


class UnknownClient(LookupError):
    """A client id with no enrollment in the registry."""


def _key_bytes(key_b64: str, source: str = "HMAC key") -> bytes:
    try:
        key = base64.b64decode(key_b64, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ValueError(f"{source}: not base64 ({err})") from None
    if len(key) != KEY_BYTES:
        raise ValueError(f"{source}: {len(key)} bytes, expected {KEY_BYTES}")
    return key


class Enrollment(BaseModel):
    """One client's identity and secret; the cloud and the device each keep a copy."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    client_id: str = Field(pattern=ID_PATTERN)
    key_b64: str
    issued_at: AwareDatetime
    epsilon_budget: float = Field(3.0, gt=0)  # lifetime ε of this client's answers, at `delta`
    delta: float = Field(1e-5, gt=0, lt=1)

    @field_validator("key_b64")
    @classmethod
    def _key_is_32_bytes(cls, value: str) -> str:
        _key_bytes(value, "key_b64")
        return value

    def __repr__(self) -> str:  # never print the key into logs
        return f"Enrollment(client_id={self.client_id!r}, issued_at={self.issued_at.isoformat()}, key=***)"

    __str__ = __repr__


def new_enrollment(client_id: str, epsilon_budget: float = 3.0) -> Enrollment:
    return Enrollment(
        client_id=client_id,
        key_b64=base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode(),
        issued_at=datetime.now(timezone.utc),
        epsilon_budget=epsilon_budget,
    )


def _parse_enrollment(data: bytes | str, source: str) -> Enrollment:
    try:
        return Enrollment.model_validate_json(data)
    except ValidationError as err:
        # Only field names and messages: pydantic's default text would echo the key.
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'document'}: {e['msg']}" for e in err.errors())
        raise ValueError(f"{source}: not a valid enrollment: {problems}") from None


# ------------------------------------------------------------------ registry (cloud side)


def registry_key(client_id: str) -> str:
    if not _ID_RE.match(client_id):
        raise ValueError(f"client id {client_id!r} does not match {ID_PATTERN}")
    return f"{REGISTRY_PREFIX}/{client_id}.json"


def enroll(store: Store, client_id: str, epsilon_budget: float = 3.0, rotate: bool = False) -> Enrollment:
    """Issue a fresh key; an existing client keeps its key unless `rotate` (which revokes the old one)."""
    key = registry_key(client_id)
    enrollment = new_enrollment(client_id, epsilon_budget)
    try:
        store.write_bytes(key, enrollment.model_dump_json(indent=1).encode(), overwrite=rotate)
    except FileExistsError:
        raise FileExistsError(
            f"{store.uri(key)}: client {client_id!r} is already enrolled; to issue it a new key (revoking the old one) enroll it again with --rotate"
        ) from None
    return enrollment


def load_enrollment(store: Store, client_id: str) -> Enrollment:
    key = registry_key(client_id)
    try:
        data = store.read_bytes(key, 64 * 1024)
    except FileNotFoundError:
        raise UnknownClient(f"{store.uri(key)}: client {client_id!r} is not enrolled") from None
    enrollment = _parse_enrollment(data, store.uri(key))
    if enrollment.client_id != client_id:
        raise ValueError(f"{store.uri(key)}: holds client {enrollment.client_id!r}, expected {client_id!r}")
    return enrollment


def enrolled_clients(store: Store) -> list[str]:
    names = (k.rsplit("/", 1)[-1] for k in store.list(REGISTRY_PREFIX))
    return sorted(n[: -len(".json")] for n in names if n.endswith(".json"))


def registry_key_for(store: Store) -> Callable[[str], str | None]:
    """A `key_for` for open_signed_response backed by the registry (None for an unknown client)."""

    def key_for(client_id: str) -> str | None:
        try:
            return load_enrollment(store, client_id).key_b64
        except UnknownClient:
            return None

    return key_for


# ------------------------------------------------------------------ device copy


def save_enrollment(enrollment: Enrollment, path: str | os.PathLike[str]) -> None:
    """Write the device's copy, readable by its owner only (0600), atomically."""
    write_private(path, enrollment.model_dump_json(indent=1).encode())


def read_enrollment(path: str | os.PathLike[str]) -> Enrollment:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no enrollment file (enroll this device first)") from None
    return _parse_enrollment(data, str(path))


# ------------------------------------------------------------------ MACs


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def sign(key_b64: str, payload: bytes) -> str:
    """Hex HMAC-SHA256 of `payload`."""
    return hmac.new(_key_bytes(key_b64), payload, hashlib.sha256).hexdigest()


def verify(key_b64: str, payload: bytes, mac: str) -> bool:
    """Constant-time check of a hex HMAC-SHA256; False for any malformed mac."""
    if not isinstance(mac, str) or not _MAC_RE.match(mac):
        return False
    return hmac.compare_digest(sign(key_b64, payload), mac)


def probe_mac(key_b64: str, probe_json: bytes) -> str:
    """The cloud's per-client MAC of probe.json (exact bytes); the client checks it with `verify`."""
    return sign(key_b64, probe_json)


def signed_response_bytes(response_wire: bytes, key_b64: str) -> bytes:
    """Wrap protocol.encode_response output with its MAC: the bytes the client uploads."""
    try:
        obj = json.loads(response_wire)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"response to sign: not JSON ({err})") from None
    if not isinstance(obj, dict):
        raise ValueError("response to sign: not a JSON object")
    return canonical_json({"response": obj, MAC_FIELD: sign(key_b64, canonical_json(obj))})


def _reject_constant(name: str) -> None:
    raise ValueError(f"non-standard JSON constant {name}")


def _quoted(value: Any) -> str:
    """A value from an upload, quoted into a message and cut short (it may be 64 KB, or nested)."""
    return cut(repr(value), 80) if isinstance(value, (str, int, float, bool, type(None))) else type(value).__name__


def _signed_parts(data: bytes, source: str) -> tuple[dict, str, str]:
    """(response object, mac, claimed client id) of an upload. Anything its bytes can provoke
    (invalid UTF-8, deep nesting, huge numbers, any shape) is a ProtocolError, never another
    exception: one device's URL must not be able to stop a round from being judged."""
    if len(data) > MAX_RESPONSE_BYTES:
        raise ProtocolError(f"{source}: {len(data)} bytes, larger than the {MAX_RESPONSE_BYTES}-byte limit")
    if not data:
        raise ProtocolError(f"{source}: empty upload (0 bytes), not a signed response")
    try:
        doc = json.loads(data, parse_constant=_reject_constant)
    except RecursionError:
        raise ProtocolError(f"{source}: signed response is not valid JSON (nested too deeply)") from None
    except Exception as err:  # noqa: BLE001 - JSONDecodeError, UnicodeDecodeError, ValueError (huge ints), ...
        raise ProtocolError(f"{source}: signed response is not valid JSON ({cut(str(err), 200)})") from None
    if not isinstance(doc, dict) or set(doc) != {"response", MAC_FIELD}:
        keys = cut(repr(sorted(doc)), 120) if isinstance(doc, dict) else type(doc).__name__
        raise ProtocolError(
            f"{source}: signed response must be an object with 'response' and '{MAC_FIELD}', got {keys}"
        )
    response, mac = doc["response"], doc[MAC_FIELD]
    if not isinstance(response, dict):
        raise ProtocolError(f"{source}: 'response' is not a JSON object")
    if not isinstance(mac, str) or not _MAC_RE.match(mac):
        raise ProtocolError(f"{source}: '{MAC_FIELD}' must be 64 lowercase hex characters")
    client_id = response.get("client_id")
    # Checked before the lookup: key_for may turn the id into a store path.
    if not isinstance(client_id, str) or not _ID_RE.match(client_id):
        raise ProtocolError(f"{source}: response has no valid client_id ({_quoted(client_id)})")
    return response, mac, client_id


def open_signed_response(data: bytes, source: str, key_for: Callable[[str], str | None]) -> bytes:
    """Check a signed upload; return the inner response bytes for protocol.decode_response.

    The returned bytes are exactly the ones the MAC covered, so nothing unverified is decoded.
    Every problem of the upload is a ProtocolError; only `key_for`'s own failures (the
    registry unreadable) pass through, so that the caller can judge the upload later.
    """
    response, mac, client_id = _signed_parts(data, source)
    key_b64 = key_for(client_id)
    if key_b64 is None:
        raise ProtocolError(f"{source}: unknown client {client_id!r} (not enrolled)")
    try:
        payload = canonical_json(response)
    except (RecursionError, ValueError) as err:  # a nesting loads took but dumps does not
        why = cut(f"{type(err).__name__}: {err}", 200)
        raise ProtocolError(f"{source}: response cannot be re-encoded ({why})") from None
    if not verify(key_b64, payload, mac):
        raise ProtocolError(f"{source}: bad signature for client {client_id!r} (forged, altered or wrong key)")
    return payload
