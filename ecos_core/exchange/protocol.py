"""The two messages of a round, versioned and validated: probe (cloud → client) and
response (client → cloud).

Probe on the wire: `probe.json` (metadata and the K cluster radii as base64 float32)
+ `centroids.npy` (K×d float32, ≈ 4·K·d bytes) + in the combined feature space
`adapted.npz` (the pool-adapted CNN's weights, 403 KB, pinned by its sha256 in probe.json).
Response on the wire: one small JSON whose scores are K little-endian float32 in base64
(≈ 4·K bytes + ~300 bytes of ids), so nothing but the K noisy scalars and ids leaves the
device. Every decoder checks size before parsing and never unpickles.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
from datetime import datetime

import numpy as np
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_serializer, model_validator

from ecos_core.embedding.feature_space import BackboneSpec

SCHEMA_VERSION = 1
PROBE_SCHEMA_VERSION = 2  # 2: the probe carries the K cluster radii; a v1 client refuses it by version, not by shape
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
MAX_PROBE_JSON_BYTES = 1024 * 1024  # metadata + base64 radii of up to 100,000 centroids
MAX_INVITATION_BYTES = 16 * 1024
MAX_RESPONSE_BYTES = 64 * 1024
MAX_CENTROID_BYTES = 64 * 1024 * 1024
MAX_ADAPTED_BYTES = 16 * 1024 * 1024  # a width-128 SmallCNN's weights are 8.3 MB; width 16 (the default) 403 KB
ADAPTED_DIM = 128  # the adapted space's embedding (ecos_core.embedding.adapted_space.EMBED_DIM; torch-free here)
SHA256 = r"^[0-9a-f]{64}$"


def _omit_none(names: tuple[str, ...]):  # noqa: ANN202
    """A serializer leaving these fields out when unset, so messages without them read (and
    hash, and MAC) exactly as before the fields existed, and older devices still parse them."""

    @model_serializer(mode="wrap")
    def serialize(self, handler):  # noqa: ANN001, ANN202
        out = handler(self)
        return {k: v for k, v in out.items() if not (k in names and v is None)}

    return serialize


class ProtocolError(ValueError):
    """A probe or response that must not be used; the message names its source."""


# Strict types on the wire: a JSON 100.0 or "100" is not the integer 100, nor 1 the boolean
# true; ints still read as floats, and datetimes as ISO strings, as the encoders write them.
STRICT = ConfigDict(frozen=True, extra="forbid", strict=True)


class Probe(BaseModel):
    model_config = STRICT

    schema_version: int = Field(PROBE_SCHEMA_VERSION, ge=PROBE_SCHEMA_VERSION, le=PROBE_SCHEMA_VERSION)
    round_id: str = Field(pattern=ID_PATTERN)
    k: int = Field(ge=1, le=100_000)
    dim: int = Field(ge=1, le=100_000)
    backbone: BackboneSpec
    feature_norm: str = Field("l2", pattern="^l2$")
    sigma: float = Field(gt=0)
    delta: float = Field(gt=0, lt=1)
    deadline: AwareDatetime
    centroids_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    # each cluster's ball (ecos_core.sampling.index.coverage_radii); None: count at the nearest centroid, however far
    radii_f32_b64: str | None = Field(None, max_length=MAX_PROBE_JSON_BYTES)
    # the combined feature space: the adapted CNN shipped beside the centroids (adapted.npz),
    # its features concatenated after the backbone's; None: the backbone's features alone
    adapted_sha256: str | None = Field(None, pattern=SHA256)

    _serialize = _omit_none(("adapted_sha256",))

    @model_validator(mode="after")
    def _dims(self) -> "Probe":
        if self.dim != self.feature_dims()[0] + self.feature_dims()[1]:
            raise ValueError(f"dim {self.dim} is not the feature space's {self.feature_dims()} (backbone, adapted)")
        return self

    def feature_dims(self) -> tuple[int, int]:
        """(backbone, adapted) dimensions of the probe's feature space."""
        return self.backbone.feature_dim, ADAPTED_DIM if self.adapted_sha256 else 0

    def radii(self) -> np.ndarray | None:
        if self.radii_f32_b64 is None:
            return None
        return np.frombuffer(base64.b64decode(self.radii_f32_b64, validate=True), dtype="<f4").astype(np.float32)


def _f32_b64(values: np.ndarray) -> str:
    return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode()


class Response(BaseModel):
    model_config = STRICT

    schema_version: int = Field(SCHEMA_VERSION, ge=SCHEMA_VERSION, le=SCHEMA_VERSION)
    round_id: str = Field(pattern=ID_PATTERN)
    client_id: str = Field(pattern=ID_PATTERN)
    k: int = Field(ge=1, le=100_000)
    scores_f32_b64: str = Field(max_length=MAX_RESPONSE_BYTES)

    @classmethod
    def from_scores(cls, round_id: str, client_id: str, scores: np.ndarray) -> "Response":
        return cls(round_id=round_id, client_id=client_id, k=len(scores), scores_f32_b64=_f32_b64(scores))

    def scores(self) -> np.ndarray:
        return np.frombuffer(base64.b64decode(self.scores_f32_b64, validate=True), dtype="<f4").astype(np.float64)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


MAX_PROBLEM_CHARS = 300  # of a refusal's reason: a hostile document must not make it long


def cut(text: str, limit: int = MAX_PROBLEM_CHARS) -> str:
    """One line of at most `limit` characters: reasons end up in logs, ledgers and the UI."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _parse(model: type[BaseModel], data: bytes, source: str, limit: int) -> BaseModel:
    if len(data) > limit:
        raise ProtocolError(f"{source}: {len(data)} bytes, larger than the {limit}-byte limit")
    try:
        return model.model_validate_json(data)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'document'}: {e['msg']}" for e in err.errors())
        raise ProtocolError(f"{source}: not a valid {model.__name__.lower()}: {cut(problems)}") from None
    except Exception as err:  # noqa: BLE001 - whatever a hostile document provokes is a refusal, not a crash
        why = cut(f"{type(err).__name__}: {err}")
        raise ProtocolError(f"{source}: not a valid {model.__name__.lower()} ({why})") from None


# ------------------------------------------------------------------ probe


def encode_probe(
    round_id: str, centroids: np.ndarray, backbone: BackboneSpec, sigma: float, delta: float, deadline: datetime,
    radii: np.ndarray | None = None, adapted_sha256: str | None = None,
) -> tuple[Probe, bytes, bytes]:  # fmt: skip
    """(probe, probe.json bytes, centroids.npy bytes); adapted.npz travels as it is stored."""
    centroids = np.ascontiguousarray(centroids, dtype="<f4")
    buf = io.BytesIO()
    np.save(buf, centroids, allow_pickle=False)
    npy = buf.getvalue()
    probe = Probe(
        round_id=round_id,
        k=int(centroids.shape[0]),
        dim=int(centroids.shape[1]),
        backbone=backbone,
        sigma=float(sigma),  # strict fields: a numpy scalar from a config grid is made a plain float
        delta=float(delta),
        deadline=deadline,
        centroids_sha256=_sha256(npy),
        radii_f32_b64=None if radii is None else _f32_b64(radii),
        adapted_sha256=adapted_sha256,
    )
    return probe, probe.model_dump_json(indent=1).encode(), npy


def decode_probe(
    probe_json: bytes, centroids_npy: bytes, source: str = "probe", expected_round: str | None = None
) -> tuple[Probe, np.ndarray]:
    """Validate a probe and its centroids; ProtocolError names what is wrong."""
    probe = _parse(Probe, probe_json, f"{source}/probe.json", MAX_PROBE_JSON_BYTES)
    assert isinstance(probe, Probe)
    where = f"{source}/centroids.npy"
    if expected_round is not None and probe.round_id != expected_round:
        raise ProtocolError(f"{source}: probe is for round {probe.round_id!r}, expected {expected_round!r}")
    if len(centroids_npy) > MAX_CENTROID_BYTES:
        raise ProtocolError(f"{where}: {len(centroids_npy)} bytes, larger than {MAX_CENTROID_BYTES}")
    if _sha256(centroids_npy) != probe.centroids_sha256:
        raise ProtocolError(f"{where}: sha256 does not match the probe's centroids_sha256 (altered or truncated)")
    try:
        centroids = np.load(io.BytesIO(centroids_npy), allow_pickle=False)
    except ValueError as err:
        raise ProtocolError(f"{where}: not a plain .npy array ({err})") from None
    if centroids.dtype != np.dtype("<f4"):
        raise ProtocolError(f"{where}: dtype {centroids.dtype}, expected float32")
    if centroids.shape != (probe.k, probe.dim):
        raise ProtocolError(f"{where}: shape {centroids.shape}, the probe says ({probe.k}, {probe.dim})")
    if not np.isfinite(centroids).all():
        raise ProtocolError(f"{where}: contains NaN or inf")
    try:
        radii = probe.radii()
    except (binascii.Error, ValueError) as err:
        raise ProtocolError(f"{source}/probe.json: radii are not base64 float32 ({err})") from None
    if radii is not None and (radii.shape != (probe.k,) or not np.isfinite(radii).all() or (radii < 0).any()):
        raise ProtocolError(f"{source}/probe.json: radii must be {probe.k} finite non-negative numbers")
    return probe, centroids


def check_adapted(probe: Probe, data: bytes, source: str = "probe") -> bytes:
    """The adapted space's bytes, if they are the ones probe.json pins (size, then sha256);
    they are parsed (allow_pickle=False) only after this, by ecos_core.embedding.adapted_space."""
    where = f"{source}/adapted.npz"
    if probe.adapted_sha256 is None:
        raise ProtocolError(f"{source}: the probe ships no adapted feature space")
    if len(data) > MAX_ADAPTED_BYTES:
        raise ProtocolError(f"{where}: {len(data)} bytes, larger than {MAX_ADAPTED_BYTES}")
    if _sha256(data) != probe.adapted_sha256:
        raise ProtocolError(f"{where}: sha256 does not match the probe's adapted_sha256 (altered or truncated)")
    return data


# ------------------------------------------------------------------ response


def encode_response(response: Response) -> bytes:
    return response.model_dump_json().encode()


def decode_response(
    data: bytes,
    source: str,
    *,
    expected_round: str,
    expected_k: int,
    sigma: float,
    known_clients: set[str] | None = None,
    max_total: float = 1e7,
) -> Response:
    """Validate an uploaded response against its round.

    Scores below -8σ cannot come from the mechanism (a zero count plus noise is below
    that with probability < 1e-15), and a total above `max_total` is not a device's data.
    """
    response = _parse(Response, data, source, MAX_RESPONSE_BYTES)
    assert isinstance(response, Response)
    if response.round_id != expected_round:
        raise ProtocolError(f"{source}: response is for round {response.round_id!r}, expected {expected_round!r}")
    if known_clients is not None and response.client_id not in known_clients:
        raise ProtocolError(f"{source}: unknown client {response.client_id!r}")
    try:
        scores = response.scores()
    except (binascii.Error, ValueError) as err:
        raise ProtocolError(f"{source}: scores are not base64 float32 ({err})") from None
    if response.k != expected_k or len(scores) != expected_k:
        raise ProtocolError(f"{source}: {len(scores)} scores (k={response.k}), the probe has {expected_k} centroids")
    if not np.isfinite(scores).all():
        raise ProtocolError(f"{source}: scores contain NaN or inf")
    if scores.min() < -8 * sigma:
        raise ProtocolError(f"{source}: score {scores.min():.1f} is below -8σ ({-8 * sigma:.1f}): not a noisy count")
    if scores.sum() > max_total:
        raise ProtocolError(f"{source}: scores sum to {scores.sum():.3g}, above the plausible {max_total:.3g}")
    return response


def response_json_bytes(round_id: str, client_id: str, scores: np.ndarray) -> bytes:
    return encode_response(Response.from_scores(round_id, client_id, scores))


class Invitation(BaseModel):
    """What one client needs to answer one round, delivered to the device out of band.

    The URLs are pre-signed (GET the probe, PUT this client's own response) and expire
    at the deadline, so the device holds no storage credentials; the probe's MAC, made
    with the client's enrollment key, proves the probe came from the cloud.
    """

    model_config = STRICT

    schema_version: int = Field(SCHEMA_VERSION, ge=SCHEMA_VERSION, le=SCHEMA_VERSION)
    round_id: str = Field(pattern=ID_PATTERN)
    client_id: str = Field(pattern=ID_PATTERN)
    probe_url: str
    centroids_url: str
    response_url: str
    probe_hmac_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    deadline: AwareDatetime
    adapted_url: str | None = None  # the probe's adapted.npz, when it ships one

    _serialize = _omit_none(("adapted_url",))


def decode_invitation(data: bytes, source: str) -> Invitation:
    invitation = _parse(Invitation, data, source, MAX_INVITATION_BYTES)
    assert isinstance(invitation, Invitation)
    return invitation
