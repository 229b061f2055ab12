"""The edge client: answer a probe with K noisy coverage scores, nothing else.

Imports only ecos_core, numpy and torch (never Prefect): it runs on the device.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np

from ecos_core.exchange import transport
from ecos_core.embedding.adapted_space import IMAGE_SIDE, AdaptedSpace, space_features
from ecos_core.exchange.auth import Enrollment, signed_response_bytes, verify
from ecos_core.embedding.backbones import load_backbone
from ecos_core.sampling.coverage import noisy_coverage_scores
from ecos_core.privacy.accounting import gaussian_epsilon
from ecos_core.privacy.ledger import PrivacyLedger
from ecos_core.exchange.protocol import (
    MAX_ADAPTED_BYTES,
    MAX_CENTROID_BYTES,
    MAX_PROBE_JSON_BYTES,
    Invitation,
    Probe,
    ProtocolError,
    check_adapted,
    decode_probe,
    response_json_bytes,
)


@dataclass(frozen=True)
class ClientAnswer:
    wire: bytes  # the response exactly as uploaded
    n_samples: int
    epsilon: float  # of this response (answer_probe) or of all the device's responses (respond)
    seconds: float


def probe_backbone(probe: Probe, weights_path: str | None = None) -> Any:
    """The probe's feature extractor on this device, or one line saying why there is none:
    a backbone it does not have (weights package, model file), or weights that differ."""
    source = f"round {probe.round_id}: the probe's backbone {probe.backbone.describe()}"
    try:
        model, _ = load_backbone(probe.backbone, weights_path=weights_path)
    except FileNotFoundError as err:
        raise ProtocolError(f"{source} is not on this device: {err}") from None
    except ValueError as err:
        raise ProtocolError(f"{source} does not match this device's: {err}") from None
    dim = probe.feature_dims()[0]
    if getattr(model, "feature_dim", dim) != dim:
        raise ProtocolError(f"{source} gives {model.feature_dim}-d features, the probe's are {dim}-d")
    return model


def probe_adapted(probe: Probe, data: bytes, source: str = "probe") -> AdaptedSpace:
    """The probe's adapted feature space from its bytes: size and sha256 as probe.json pins
    them, then parsed without unpickling into exactly the expected network."""
    data = check_adapted(probe, data, source)  # its own ProtocolError names the file
    try:
        return AdaptedSpace.from_bytes(data, probe.adapted_sha256)
    except ValueError as err:
        raise ProtocolError(f"{source}/adapted.npz: {err}") from None


def answer_probe(
    probe: Probe,
    centroids: np.ndarray,
    images: np.ndarray,
    client_id: str,
    seed: int | None = None,
    weights_path: str | None = None,
    show_bar: bool = True,
    model: Any = None,
    adapted: AdaptedSpace | None = None,
) -> ClientAnswer:
    """Embed the local images in the probe's feature space and return the noisy scores.

    load_backbone refuses a probe whose weights hash differs from the local weights, and a
    probe in the combined space needs its adapted space, so the scores are always computed
    in the cloud's feature space.
    """
    start = time.perf_counter()
    if (adapted.sha256 if adapted is not None else None) != probe.adapted_sha256:
        raise ProtocolError(f"round {probe.round_id}: this adapted feature space is not the one the probe pins")
    if adapted is not None and images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE, 3):  # before the backbone's pass
        raise ProtocolError(f"round {probe.round_id}: the probe's feature space takes {IMAGE_SIDE}×{IMAGE_SIDE} RGB "
                            f"images, this device's data are {images.shape[1:]}")  # fmt: skip
    model = model if model is not None else probe_backbone(probe, weights_path)
    feats = space_features(images, model, probe.backbone.preprocessing, adapted, show_bar=show_bar,
                           desc=f"{client_id} features")  # fmt: skip
    scores = noisy_coverage_scores(feats, centroids, probe.sigma, seed, probe.radii())
    wire = response_json_bytes(probe.round_id, client_id, scores)
    eps = gaussian_epsilon(probe.sigma, probe.delta)
    return ClientAnswer(wire, len(images), eps, time.perf_counter() - start)


def respond(
    invitation: Invitation,
    enrollment: Enrollment,
    images: np.ndarray,
    ledger: PrivacyLedger,
    seed: int | None = None,
    weights_path: str | None = None,
    show_bar: bool = True,
) -> ClientAnswer:
    """Answer one invitation: verify the probe (MAC with the enrollment key, centroids and
    adapted-space hashes; its backbone must be on this device, with the same weights), refuse if the
    privacy budget would be exceeded, compute the noisy scores, sign them, and upload them
    to the invitation's own URL. Every refusal comes before any feature or ε."""
    source = f"round {invitation.round_id} probe"
    if invitation.client_id != enrollment.client_id:
        raise ProtocolError(f"invitation is for {invitation.client_id!r}, this device is {enrollment.client_id!r}")
    if datetime.now(timezone.utc) > invitation.deadline:
        raise ProtocolError(f"round {invitation.round_id}: the deadline {invitation.deadline.isoformat()} has passed")
    probe_json = transport.fetch(invitation.probe_url, MAX_PROBE_JSON_BYTES)
    if not verify(enrollment.key_b64, probe_json, invitation.probe_hmac_sha256):
        raise ProtocolError(f"{source}: its MAC does not verify with this device's key (forged or altered)")
    npy = transport.fetch(invitation.centroids_url, MAX_CENTROID_BYTES)
    probe, centroids = decode_probe(probe_json, npy, source, expected_round=invitation.round_id)
    model = probe_backbone(probe, weights_path)  # a backbone this device lacks: refused before any ε or feature
    adapted = None
    if probe.adapted_sha256 is not None:
        if invitation.adapted_url is None:
            raise ProtocolError(f"{source}: the probe ships an adapted feature space, the invitation has no adapted_url")
        adapted = probe_adapted(probe, transport.fetch(invitation.adapted_url, MAX_ADAPTED_BYTES), source)
    ledger.check(probe.round_id, probe.sigma, probe.delta, enrollment.epsilon_budget)
    answer = answer_probe(probe, centroids, images, enrollment.client_id, seed, weights_path, show_bar, model, adapted)
    signed = signed_response_bytes(answer.wire, enrollment.key_b64)
    ledger.record(probe.round_id, probe.sigma, probe.delta)  # before the upload: a lost upload still counts
    transport.put(invitation.response_url, signed)
    return ClientAnswer(signed, answer.n_samples, ledger.spent(probe.delta), answer.seconds)
