"""The edge client: answer a probe with K noisy coverage scores, nothing else.

The signed answer is kept on the device (beside its privacy ledger) before the first
upload attempt, and only those bytes are ever sent for that round: an outage, a refusal or
Ctrl-C costs a re-run, never a second release or a second ε.

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
from ecos_core.privacy.ledger import DuplicateRound, KeptResponse, PrivacyLedger
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
    n_samples: int  # 0 when a kept response was re-sent (nothing was computed)
    epsilon: float  # of this response (answer_probe) or of all the device's responses (respond)
    seconds: float
    outcome: str = "sent"  # respond: "sent", "resent" (a kept response) or "delivered before" (nothing sent)
    attempts: int = 1  # upload attempts of this run
    kept_path: str | None = None  # where the device keeps the signed response


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
    backoff: transport.Backoff = transport.Backoff(),
    on_retry: transport.RetryHook | None = None,
) -> ClientAnswer:
    """Answer one invitation: verify the probe (MAC with the enrollment key, centroids and
    adapted-space hashes; its backbone must be on this device, with the same weights), refuse if the
    privacy budget would be exceeded, compute the noisy scores, sign them, keep them beside the
    ledger, record ε, and upload them to the invitation's own URL, retrying transient failures
    until its deadline. Every refusal comes before any feature or ε. A round answered before is
    never recomputed: its kept response is re-sent (or nothing is, once it was delivered)."""
    again = resend_kept(invitation, enrollment, ledger, backoff, on_retry)
    if again is not None:
        return again
    source = f"round {invitation.round_id} probe"
    _check_deadline(invitation)
    get = lambda url, limit: transport.fetch(url, limit, until=invitation.deadline, backoff=backoff)  # noqa: E731
    probe_json = get(invitation.probe_url, MAX_PROBE_JSON_BYTES)
    if not verify(enrollment.key_b64, probe_json, invitation.probe_hmac_sha256):
        raise ProtocolError(f"{source}: its MAC does not verify with this device's key (forged or altered)")
    probe, centroids = decode_probe(probe_json, get(invitation.centroids_url, MAX_CENTROID_BYTES), source,
                                    expected_round=invitation.round_id)  # fmt: skip
    model = probe_backbone(probe, weights_path)  # a backbone this device lacks: refused before any ε or feature
    adapted = None
    if probe.adapted_sha256 is not None:
        if invitation.adapted_url is None:
            raise ProtocolError(f"{source}: the probe ships an adapted feature space, the invitation has no adapted_url")
        adapted = probe_adapted(probe, get(invitation.adapted_url, MAX_ADAPTED_BYTES), source)
    _check_unanswered(ledger, probe.round_id)
    ledger.check(probe.round_id, probe.sigma, probe.delta, enrollment.epsilon_budget)
    answer = answer_probe(probe, centroids, images, enrollment.client_id, seed, weights_path, show_bar, model, adapted)
    signed = signed_response_bytes(answer.wire, enrollment.key_b64)
    # kept before ε is recorded, ε recorded before the first upload: a crash at any point
    # leaves either nothing released, or a recorded release whose exact bytes are kept
    kept = ledger.keep(probe.round_id, enrollment.client_id, probe.sigma, probe.delta, invitation.deadline, signed)
    _record_once(ledger, kept, enrollment.epsilon_budget)
    attempts = _deliver(invitation, ledger, kept, backoff, on_retry)
    outcome = "sent" if kept.signed() == signed else "resent"  # "resent": another run kept its answer first
    return ClientAnswer(kept.signed(), answer.n_samples, ledger.spent(probe.delta), answer.seconds, outcome, attempts,
                        str(ledger.kept_path(probe.round_id)))  # fmt: skip


def resend_kept(
    invitation: Invitation,
    enrollment: Enrollment,
    ledger: PrivacyLedger,
    backoff: transport.Backoff = transport.Backoff(),
    on_retry: transport.RetryHook | None = None,
) -> ClientAnswer | None:
    """For a round this device answered before: nothing, if its answer was delivered; else
    the kept bytes again (no probe, no data, no new noise). None for a round never answered."""
    if invitation.client_id != enrollment.client_id:
        raise ProtocolError(f"invitation is for {invitation.client_id!r}, this device is {enrollment.client_id!r}")
    start = time.perf_counter()
    kept = ledger.kept(invitation.round_id)
    if kept is None:
        return None
    path = str(ledger.kept_path(kept.round_id))
    if kept.client_id != enrollment.client_id:
        raise ProtocolError(f"kept response {path}: it is {kept.client_id!r}'s, "
                            f"this device is {enrollment.client_id!r}")  # fmt: skip
    if kept.sent_at is not None:
        return ClientAnswer(kept.signed(), 0, ledger.spent(kept.delta), 0.0, "delivered before", 0, path)
    _check_deadline(invitation, f"; its answer stays kept at {path}, never delivered")
    _record_once(ledger, kept, enrollment.epsilon_budget)  # recorded already, unless a crash came in between
    attempts = _deliver(invitation, ledger, kept, backoff, on_retry)
    seconds = time.perf_counter() - start
    return ClientAnswer(kept.signed(), 0, ledger.spent(kept.delta), seconds, "resent", attempts, path)


def _check_deadline(invitation: Invitation, why_kept: str = "") -> None:
    if datetime.now(timezone.utc) > invitation.deadline:
        raise ProtocolError(f"round {invitation.round_id}: the deadline {invitation.deadline.isoformat()} has passed"
                            f"{why_kept}")  # fmt: skip


def _check_unanswered(ledger: PrivacyLedger, round_id: str) -> None:
    """A round in the ledger without a kept response (a ledger from before responses were
    kept): its bytes are gone, and a new answer would be a second release."""
    if ledger.entry(round_id) is not None:
        raise DuplicateRound(f"privacy ledger {ledger.path}: round {round_id!r} was already answered and no copy of "
                             f"that answer is kept ({ledger.kept_path(round_id)}); not answering twice")  # fmt: skip


def _record_once(ledger: PrivacyLedger, kept: KeptResponse, budget: float) -> None:
    """ε of the kept response, recorded once: a second run of the same round finds it recorded."""
    entry = ledger.entry(kept.round_id)
    if entry is None:
        ledger.check(kept.round_id, kept.sigma, kept.delta, budget)
        ledger.record(kept.round_id, kept.sigma, kept.delta, kept.sha256)
    elif entry.response_sha256 not in (None, kept.sha256):
        raise ValueError(f"kept response {ledger.kept_path(kept.round_id)}: not the response the ledger "
                         f"{ledger.path} recorded for round {kept.round_id!r}; not sending it")  # fmt: skip


def _deliver(invitation: Invitation, ledger: PrivacyLedger, kept: KeptResponse, backoff: transport.Backoff,
             on_retry: transport.RetryHook | None) -> int:  # fmt: skip
    """Upload the kept bytes until they land or the URL expires; mark them sent. A failure
    says, in its one line, that the answer stays kept for the next run."""
    try:
        attempts = transport.put_until(invitation.response_url, kept.signed(), invitation.deadline, backoff=backoff,
                                       on_retry=on_retry)  # fmt: skip
    except transport.TransportError as err:
        why = "" if isinstance(err, transport.DeadlinePassed) else "; refused, not retried"
        raise type(err)(f"{err}{why}; round {kept.round_id}'s answer stays kept at "
                        f"{ledger.kept_path(kept.round_id)}") from None  # fmt: skip
    ledger.mark_sent(kept.round_id)
    return attempts
