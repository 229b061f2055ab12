"""Property-based fuzzing of the judge (issue 16, item 2): no byte string at a response URL
may make judging raise. Whatever is uploaded, `open_signed_response` + `decode_response`
end in a response or a ProtocolError, and `judge` in a verdict with a one-line reason;
only a validly signed, valid response is accepted.

Bounded and deterministic for CI: derandomized, a few hundred examples per property."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecos_core.exchange.auth import (
    Enrollment,
    canonical_json,
    open_signed_response,
    registry_key,
    sign,
    signed_response_bytes,
)
from ecos_core.exchange.protocol import MAX_RESPONSE_BYTES, ProtocolError, decode_response, response_json_bytes
from ecos_core.storage import layout
from ecos_core.storage.store import Store
from tasks.uploads import MAX_REASON_CHARS, RoundTerms, judge

K, SIGMA, ROUND = 8, 6.1, "r1"
KEYS = {c: base64.b64encode(bytes([i]) * 32).decode() for i, c in enumerate(("c1", "c2"), start=1)}
FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip


def valid_response(client: str = "c1", value: float = 3.0) -> dict:
    return json.loads(response_json_bytes(ROUND, client, np.full(K, value)))


def signed(response: dict, client: str = "c1") -> bytes:
    """A response object signed with the client's key, whatever it holds."""
    return canonical_json({"response": response, "hmac_sha256": sign(KEYS[client], canonical_json(response))})


VALID = signed_response_bytes(response_json_bytes(ROUND, "c1", np.full(K, 3.0)), KEYS["c1"])
VALID_PAYLOAD = canonical_json(valid_response())

# ------------------------------------------------------------------ strategies: what may land at a URL

json_leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                        st.text(max_size=20))  # fmt: skip
json_values = st.recursive(json_leaves, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                               st.dictionaries(st.text(max_size=8), kids, max_size=4)),
                           max_leaves=12)  # fmt: skip


@st.composite
def truncations(draw) -> bytes:
    return VALID[: draw(st.integers(0, len(VALID) - 1))]


@st.composite
def deep_nesting(draw) -> bytes:
    depth = draw(st.integers(1, 40_000))
    opener = draw(st.sampled_from([b"[", b'{"a":', b'{"response":', b'{"response":{"client_id":']))
    closer = {b"[": b"]", b'{"a":': b"}", b'{"response":': b"}", b'{"response":{"client_id":': b"}"}[opener]
    body = opener * depth + b"1" + (closer * depth if draw(st.booleans()) else b"")
    return body[: MAX_RESPONSE_BYTES + draw(st.integers(-10, 10))]


HUGE = [b"1e999999", b"-1e999999", b"9" * 5000, b"9" * 4300, b"1" + b"0" * 400 + b".5", b"1E+308", b"2e308",
        b"-0", b"0.000000000000000000000000000001e-400", b"123456789012345678901234567890"]  # fmt: skip


@st.composite
def huge_numbers(draw) -> bytes:
    """A huge number or exponent in place of one value of a valid signed response."""
    number = draw(st.sampled_from(HUGE))
    field = draw(st.sampled_from(["k", "schema_version", "client_id", "round_id", "scores_f32_b64", "hmac_sha256"]))
    doc = json.loads(VALID)
    (doc["response"] if field in doc["response"] else doc)[field] = "__HUGE__"
    return json.dumps(doc).encode().replace(b'"__HUGE__"', number)


@st.composite
def invalid_utf8(draw) -> bytes:
    bad = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80", b"\xfe\xff"]))
    at = draw(st.integers(0, len(VALID)))
    return VALID[:at] + bad + VALID[at:]


@st.composite
def byte_mutations(draw) -> bytes:
    data = bytearray(VALID)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "delete", "insert"]))
        if op == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "delete":
            del data[at]
        else:
            data.insert(at, draw(st.integers(0, 255)))
    return bytes(data)


@st.composite
def signed_field_changes(draw) -> tuple[bytes, bool]:
    """A response with one field changed (or added), signed with the right key: (bytes,
    whether the change must be refused: another JSON type than the field's, or a new field)."""
    response = valid_response()
    field = draw(st.sampled_from([*response, "extra"]))
    value = draw(st.one_of(json_values, st.sampled_from([8.0, "8", True, 1.0, "1", None, [], {}])))
    must_refuse = field == "extra" or type(value) is not type(response[field])
    response[field] = value
    return signed(response), must_refuse


any_upload = st.one_of(st.binary(max_size=2048), truncations(), deep_nesting(), huge_numbers(), invalid_utf8(),
                       byte_mutations(), signed_field_changes().map(lambda t: t[0]),
                       json_values.map(lambda v: json.dumps(v).encode()))  # fmt: skip


# ------------------------------------------------------------------ the judge's core, in memory


def decide(data: bytes) -> bytes | None:
    """The verified payload of an accepted upload, or None for a refusal (ProtocolError);
    any other exception escapes and fails the property."""
    try:
        inner = open_signed_response(data, "fuzz/c1.json", KEYS.get)
        decode_response(inner, "fuzz/c1.json", expected_round=ROUND, expected_k=K, sigma=SIGMA, known_clients=set(KEYS))
        return inner
    except ProtocolError as err:
        assert "\n" not in str(err) and str(err).startswith("fuzz/c1.json"), str(err)
        return None


def test_the_valid_upload_is_accepted():
    assert decide(VALID) == VALID_PAYLOAD


@FUZZ
@given(any_upload)
def test_any_upload_ends_in_a_verdict_and_only_the_valid_one_is_accepted(data):
    accepted = decide(data)
    assert accepted is None or accepted == VALID_PAYLOAD  # the one valid response object, whatever its spelling


@FUZZ
@given(signed_field_changes())
def test_a_signed_response_with_a_field_of_another_type_is_refused(case):
    data, must_refuse = case
    accepted = decide(data)
    if must_refuse:
        assert accepted is None, data


@pytest.mark.parametrize("data", [b"", b"[" * 10_000, b"{" * 10_000, b'{"response":' * 8000, b"\xff" * 100,
                                  b"9" * 5000, b"1e999999"])  # fmt: skip
def test_the_reported_bodies_are_refusals(data):
    assert decide(data) is None


# ------------------------------------------------------------------ judge() on a local store


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    store = Store(str(tmp_path_factory.mktemp("fuzz-store")))
    for client, key in KEYS.items():
        doc = Enrollment(client_id=client, key_b64=key, issued_at=datetime.now(timezone.utc))
        store.write_bytes(registry_key(client), doc.model_dump_json().encode())
    terms = RoundTerms.load(store, ROUND, list(KEYS), K, SIGMA, datetime.now(timezone.utc) + timedelta(hours=1))
    return store, terms


def judged(local, data: bytes) -> dict:
    store, terms = local
    key = layout.response(ROUND, "c1")
    store.write_bytes(key, data)
    try:
        return judge(store, key, store.version(key), terms)
    finally:
        store.delete(layout.accepted(ROUND, "c1"))  # each example is the client's first upload


@FUZZ
@given(data=any_upload)
def test_judge_on_a_store_always_returns_a_verdict(local, data):
    verdict = judged(local, data)
    assert verdict["verdict"] in ("accepted", "refused"), verdict
    if verdict["verdict"] == "refused":
        reason = verdict["reason"]
        assert reason and "\n" not in reason and len(reason) <= MAX_REASON_CHARS, reason
    else:
        assert verdict["client_id"] == "c1" and decide(data) == VALID_PAYLOAD


def test_judge_accepts_the_valid_upload_and_refuses_an_empty_one(local):
    assert judged(local, VALID)["verdict"] == "accepted"
    empty = judged(local, b"")
    assert empty["verdict"] == "refused" and "empty upload (0 bytes)" in empty["reason"]
