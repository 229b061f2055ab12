"""Signed responses/probes, client enrollment, and the device's privacy ledger."""

import base64
import json
import os
import re
import stat
import uuid

import numpy as np
import pytest

from ecos_core.exchange.auth import (
    Enrollment,
    UnknownClient,
    enroll,
    enrolled_clients,
    load_enrollment,
    new_enrollment,
    open_signed_response,
    probe_mac,
    read_enrollment,
    registry_key_for,
    save_enrollment,
    sign,
    signed_response_bytes,
    verify,
)
from ecos_core.privacy.ledger import DuplicateRound, PrivacyBudgetExceeded, PrivacyLedger, composed_epsilon
from ecos_core.privacy.accounting import gaussian_epsilon
from ecos_core.exchange.protocol import MAX_RESPONSE_BYTES, ProtocolError, Response, decode_response, response_json_bytes
from ecos_core.storage.store import Store

A, B = new_enrollment("client-a"), new_enrollment("client-b")
KEYS = {A.client_id: A.key_b64, B.client_id: B.key_b64}
K = 100


def wire(client_id: str = "client-a", k: int = K, seed: int = 0) -> bytes:
    scores = np.random.default_rng(seed).normal(5.0, 1.0, k)
    return response_json_bytes("r1", client_id, scores)


def signed(client_id: str = "client-a", key: str | None = None) -> bytes:
    return signed_response_bytes(wire(client_id), key or KEYS[client_id])


def open_(data: bytes) -> bytes:
    return open_signed_response(data, "upload", KEYS.get)


# ------------------------------------------------------------------ MACs


def test_sign_verify_round_trip_and_decode():
    assert verify(A.key_b64, b"payload", sign(A.key_b64, b"payload"))
    assert not verify(B.key_b64, b"payload", sign(A.key_b64, b"payload"))
    assert not verify(A.key_b64, b"payload", "not hex")
    inner = open_(signed())
    resp = decode_response(inner, "upload", expected_round="r1", expected_k=K, sigma=6.1, known_clients=set(KEYS))
    assert resp == Response.model_validate_json(wire())


def test_tampered_scores_fail():
    doc = json.loads(signed())
    scores = np.frombuffer(base64.b64decode(doc["response"]["scores_f32_b64"]), "<f4").copy()
    scores[0] += 100.0
    doc["response"]["scores_f32_b64"] = base64.b64encode(scores.tobytes()).decode()
    with pytest.raises(ProtocolError, match="upload: bad signature"):
        open_(json.dumps(doc).encode())


def test_whitespace_and_key_order_do_not_break_the_mac():
    doc = json.loads(signed())
    reordered = {"response": dict(reversed(list(doc["response"].items()))), "hmac_sha256": doc["hmac_sha256"]}
    assert open_(json.dumps(reordered, indent=3).encode()) == open_(signed())


def test_wrong_key_fails():
    with pytest.raises(ProtocolError, match="bad signature"):
        open_(signed("client-a", key=new_enrollment("client-a").key_b64))


def test_response_claiming_another_clients_id_fails():
    # Signed with A's key but claims to be B: the cloud checks it with B's key.
    with pytest.raises(ProtocolError, match="bad signature for client 'client-b'"):
        open_(signed_response_bytes(wire("client-b"), A.key_b64))


def test_unknown_client():
    with pytest.raises(ProtocolError, match="unknown client 'stranger'"):
        open_(signed_response_bytes(wire("stranger"), A.key_b64))


def test_oversized_upload_refused_before_parsing():
    with pytest.raises(ProtocolError, match="larger than"):
        open_(b"{" + b" " * MAX_RESPONSE_BYTES + b"}")


@pytest.mark.parametrize(
    "data, problem",
    [
        (b"not json", "not valid JSON"),
        (b"[1, 2]", "must be an object"),
        (json.dumps({"response": {}}).encode(), "must be an object"),
        (json.dumps({"response": {}, "hmac_sha256": "0" * 64, "x": 1}).encode(), "must be an object"),
        (json.dumps({"response": "str", "hmac_sha256": "0" * 64}).encode(), "not a JSON object"),
        (json.dumps({"response": {"client_id": "client-a"}, "hmac_sha256": "XYZ"}).encode(), "64 lowercase hex"),
        (json.dumps({"response": {"client_id": "../x"}, "hmac_sha256": "0" * 64}).encode(), "no valid client_id"),
        (json.dumps({"response": {}, "hmac_sha256": "0" * 64}).encode(), "no valid client_id"),
    ],
)
def test_malformed_wrapper(data, problem):
    with pytest.raises(ProtocolError, match=f"upload: .*{problem}"):
        open_(data)


@pytest.mark.parametrize(
    "data",
    [
        json.dumps({"response": {"client_id": "x" * 60_000}, "hmac_sha256": "0" * 64}).encode(),
        json.dumps({f"key-{i}": i for i in range(3_000)}).encode(),
        b"[" * 10_000,
        b'{"response": {"k": ' + b"9" * 5000 + b"}}",
        b"",
    ],
)
def test_a_hostile_upload_gets_a_short_one_line_refusal(data):
    with pytest.raises(ProtocolError) as err:
        open_(data)
    assert len(str(err.value)) <= 300 and "\n" not in str(err.value), str(err.value)[:300]


def test_a_registry_failure_is_not_a_refusal_of_the_upload():
    """Only the upload's own problems are ProtocolErrors: a key that cannot be read now
    (the store failing) passes through, so the upload is judged later, not refused."""

    def unreadable(client_id: str) -> str:
        raise OSError(f"registry of {client_id} unreachable")

    with pytest.raises(OSError, match="registry of client-a unreachable"):
        open_signed_response(signed(), "upload", unreadable)


def test_signed_upload_stays_small_for_k_100():
    data = signed()
    assert len(data) <= 4 * K + 1024, len(data)
    assert len(data) - len(wire()) <= 64 + 40  # the MAC plus its wrapper


def test_probe_mac_detects_an_altered_probe():
    probe_json = b'{"round_id": "r1", "centroids_sha256": "' + b"a" * 64 + b'"}'
    mac = probe_mac(A.key_b64, probe_json)
    assert verify(A.key_b64, probe_json, mac)
    assert not verify(A.key_b64, probe_json.replace(b"a", b"b"), mac)
    assert not verify(B.key_b64, probe_json, mac)


def test_bad_key_is_refused_with_a_clear_message():
    with pytest.raises(ValueError, match="expected 32"):
        sign(base64.b64encode(b"short").decode(), b"x")
    with pytest.raises(ValueError, match="key_b64"):
        Enrollment(client_id="c", key_b64="!!", issued_at=A.issued_at)


# ------------------------------------------------------------------ enrollment


@pytest.fixture(params=["local", "memory"])
def store(request, tmp_path):
    if request.param == "local":
        return Store(str(tmp_path))
    return Store(f"memory://ecos-auth-{uuid.uuid4().hex}")


def test_enrollment_store_round_trip(store):
    assert enrolled_clients(store) == []
    a = enroll(store, "client-a", epsilon_budget=2.0)
    enroll(store, "client-b")
    assert load_enrollment(store, "client-a") == a and a.epsilon_budget == 2.0 and a.delta == 1e-5
    assert enrolled_clients(store) == ["client-a", "client-b"]
    assert len(base64.b64decode(a.key_b64)) == 32
    with pytest.raises(UnknownClient, match="'nobody' is not enrolled"):
        load_enrollment(store, "nobody")
    # The registry serves as the cloud's key lookup.
    key_for = registry_key_for(store)
    assert open_signed_response(signed_response_bytes(wire("client-a"), a.key_b64), "u", key_for)
    with pytest.raises(ProtocolError, match="unknown client"):
        open_signed_response(signed_response_bytes(wire("nobody"), a.key_b64), "u", key_for)


def test_re_enroll_refused_unless_rotate(store):
    first = enroll(store, "client-a")
    with pytest.raises(FileExistsError, match="already enrolled.*--rotate"):
        enroll(store, "client-a")
    assert load_enrollment(store, "client-a") == first
    rotated = enroll(store, "client-a", rotate=True)
    assert rotated.key_b64 != first.key_b64 and load_enrollment(store, "client-a") == rotated


def test_enroll_refuses_an_id_outside_the_pattern(store):
    with pytest.raises(ValueError, match="does not match"):
        enroll(store, "../escape")


def test_device_copy_is_0600_and_round_trips(tmp_path):
    path = tmp_path / "device" / "enrollment.json"
    save_enrollment(A, path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert read_enrollment(path) == A
    save_enrollment(B, path)  # overwrite keeps the mode
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and read_enrollment(path) == B
    assert A.key_b64 not in repr(A) and A.key_b64 not in str(A)
    path.write_text('{"client_id": "x"}')
    with pytest.raises(ValueError, match=f"{re.escape(str(path))}: not a valid enrollment") as err:
        read_enrollment(path)
    assert "key_b64" in str(err.value)
    with pytest.raises(FileNotFoundError, match="no enrollment file"):
        read_enrollment(tmp_path / "missing.json")


# ------------------------------------------------------------------ ledger


def test_empty_ledger_spends_nothing(tmp_path):
    ledger = PrivacyLedger(tmp_path / "ledger.json")
    assert ledger.spent(1e-5) == 0.0 and ledger.entries() == []
    assert composed_epsilon([], 1e-5) == 0.0


def test_one_release_matches_the_reference_value(tmp_path):
    ledger = PrivacyLedger(tmp_path / "ledger.json")
    assert ledger.would_spend(6.1, 1e-5) == pytest.approx(0.584, abs=0.002)
    assert ledger.check("r1", 6.1, 1e-5, budget=3.0) == pytest.approx(0.584, abs=0.002)
    ledger.record("r1", 6.1, 1e-5)
    assert ledger.spent(1e-5) == pytest.approx(0.584, abs=0.002)


def test_three_releases_compose_sublinearly(tmp_path):
    ledger = PrivacyLedger(tmp_path / "ledger.json")
    for r in ("r1", "r2", "r3"):
        ledger.record(r, 6.1, 1e-5)
    one, three = gaussian_epsilon(6.1), ledger.spent(1e-5)
    assert one < three < 3 * one
    assert three == pytest.approx(gaussian_epsilon(6.1, releases=3), rel=1e-6)
    # Mixed sigmas: more noise costs less.
    assert composed_epsilon([6.1, 6.1, 12.0], 1e-5) < three


def test_budget_exceeded_raises_with_the_numbers(tmp_path):
    ledger = PrivacyLedger(tmp_path / "ledger.json")
    ledger.record("r1", 6.1, 1e-5)
    with pytest.raises(PrivacyBudgetExceeded, match=r"from 0\.58\d to 0\.8\d\d .*over the budget 0\.700"):
        ledger.check("r2", 6.1, 1e-5, budget=0.7)
    assert [e.round_id for e in ledger.entries()] == ["r1"]  # check never records


def test_duplicate_round_refused(tmp_path):
    ledger = PrivacyLedger(tmp_path / "ledger.json")
    ledger.record("r1", 6.1, 1e-5)
    with pytest.raises(DuplicateRound, match="'r1' was already answered"):
        ledger.check("r1", 6.1, 1e-5, budget=100.0)
    with pytest.raises(DuplicateRound, match="'r1'"):
        ledger.record("r1", 6.1, 1e-5)


def test_ledger_persists_across_instances(tmp_path):
    path = tmp_path / "nested" / "dir" / "ledger.json"
    PrivacyLedger(path).record("r1", 6.1, 1e-5)
    PrivacyLedger(path).record("r2", 4.0, 1e-5)
    again = PrivacyLedger(path)
    assert [(e.round_id, e.sigma) for e in again.entries()] == [("r1", 6.1), ("r2", 4.0)]
    assert again.spent(1e-5) == pytest.approx(composed_epsilon([6.1, 4.0], 1e-5))
    assert [p.name for p in path.parent.iterdir()] == ["ledger.json"]  # no temporary files left


@pytest.mark.parametrize("content", [b"", b"{not json", b'{"version": 1, "entries": [{"round_id": "r1"}]}', b"[]"])
def test_corrupted_ledger_is_an_error_not_an_empty_ledger(tmp_path, content):
    path = tmp_path / "ledger.json"
    path.write_bytes(content)
    ledger = PrivacyLedger(path)
    d = 1e-5
    calls = (lambda: ledger.spent(d), lambda: ledger.check("r9", 6.1, d, 3.0), lambda: ledger.record("r9", 6.1, d))
    for call in calls:
        with pytest.raises(ValueError, match=f"privacy ledger {re.escape(str(path))}: unreadable"):
            call()
    assert path.read_bytes() == content  # never silently reset
