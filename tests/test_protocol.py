import base64
import io
import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from ecos_core.embedding.feature_space import BackboneSpec
from ecos_core.exchange.protocol import (
    MAX_PROBE_JSON_BYTES,
    ProtocolError,
    Response,
    decode_probe,
    decode_response,
    encode_probe,
    response_json_bytes,
)

K, D = 100, 1280


def probe_bytes(centroids=None, round_id="r1", radii=None):
    centroids = np.random.default_rng(0).normal(size=(K, D)).astype(np.float32) if centroids is None else centroids
    deadline = datetime.now(timezone.utc) + timedelta(minutes=5)
    return encode_probe(round_id, centroids, BackboneSpec(), 6.1, 1e-5, deadline, radii)


def npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def test_probe_round_trip_and_size_bound():
    probe, pj, cn = probe_bytes()
    got, centroids = decode_probe(pj, cn, "mem", "r1")
    assert got == probe and centroids.shape == (K, D)
    assert len(pj) + len(cn) <= 4 * K * D + 4096  # the bound on bytes to the client


def test_probe_carries_the_cluster_radii():
    radii = np.linspace(0.1, 1.2, K).astype(np.float32)
    probe, pj, cn = probe_bytes(radii=radii)
    got, _ = decode_probe(pj, cn, "mem", "r1")
    np.testing.assert_array_equal(got.radii(), radii)
    assert probe_bytes()[0].radii() is None  # the nearest-centroid rule: no radii sent
    assert len(pj) + len(cn) <= 4 * K * D + 6 * K + 4096


@pytest.mark.parametrize(
    "radii, message",
    [(np.ones(K - 1), "radii must be 100"), (np.full(K, -0.5), "non-negative"), (np.full(K, np.nan), "finite"),
     ("!!not base64!!", "not base64")],
)  # fmt: skip
def test_probe_with_bad_radii_is_refused(radii, message):
    _, pj, cn = probe_bytes()
    meta = json.loads(pj)
    meta["radii_f32_b64"] = radii if isinstance(radii, str) else base64.b64encode(np.asarray(radii, "<f4").tobytes()).decode()
    with pytest.raises(ProtocolError, match=message):
        decode_probe(json.dumps(meta).encode(), cn, "mem")


def test_probe_of_another_schema_version_is_refused():
    _, pj, cn = probe_bytes()
    meta = json.loads(pj)
    meta["schema_version"] = 1  # a v1 probe has no radii field
    with pytest.raises(ProtocolError, match="schema_version"):
        decode_probe(json.dumps(meta).encode(), cn, "mem")


def test_probe_wrong_round_is_refused():
    _, pj, cn = probe_bytes()
    with pytest.raises(ProtocolError, match="expected 'r2'"):
        decode_probe(pj, cn, "mem", "r2")


def replace_centroids(pj: bytes, array) -> tuple[bytes, bytes]:
    """A probe whose hash matches altered centroids: only the shape/dtype checks can stop it."""
    import hashlib

    raw = npy(array)
    meta = json.loads(pj)
    meta["centroids_sha256"] = hashlib.sha256(raw).hexdigest()
    return json.dumps(meta).encode(), raw


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((K, D), np.float64), "dtype float64"),
        (np.zeros((K - 1, D), np.float32), "shape"),
        (np.full((K, D), np.nan, np.float32), "NaN"),
    ],
)
def test_probe_bad_centroids(array, message):
    _, pj, _ = probe_bytes()
    with pytest.raises(ProtocolError, match=message):
        decode_probe(*replace_centroids(pj, array), "mem")


def test_probe_tampered_centroids_fail_the_hash():
    _, pj, cn = probe_bytes()
    tampered = cn[:-4] + b"\x00\x00\x80\x7f"
    with pytest.raises(ProtocolError, match="sha256"):
        decode_probe(pj, tampered, "mem")


def test_probe_pickled_array_refused():
    _, pj, _ = probe_bytes()
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object))  # np.save pickles object arrays
    with pytest.raises(ProtocolError):
        decode_probe(*replace_centroids(pj, np.zeros(1)), "mem")  # wrong dtype/shape
    import hashlib

    meta = json.loads(pj)
    meta["centroids_sha256"] = hashlib.sha256(buf.getvalue()).hexdigest()
    with pytest.raises(ProtocolError, match="plain .npy"):
        decode_probe(json.dumps(meta).encode(), buf.getvalue(), "mem")


def test_probe_malformed_json_and_oversize():
    _, _, cn = probe_bytes()
    with pytest.raises(ProtocolError, match="mem/probe.json"):
        decode_probe(b"{not json", cn, "mem")
    with pytest.raises(ProtocolError, match="limit"):
        decode_probe(b" " * (MAX_PROBE_JSON_BYTES + 1), cn, "mem")


def good_response(scores=None, round_id="r1", client="c1") -> bytes:
    return response_json_bytes(round_id, client, np.arange(K, dtype=float) if scores is None else scores)


def decode(data, **kw):
    args = dict(expected_round="r1", expected_k=K, sigma=6.1, known_clients={"c1"}) | kw
    return decode_response(data, "up/c1.json", **args)


def test_response_round_trip_and_size_bound():
    data = good_response()
    resp = decode(data)
    assert np.allclose(resp.scores(), np.arange(K))
    assert len(data) <= 4 * K + 1024  # the bound on bytes from the client


@pytest.mark.parametrize(
    "data, kw, message",
    [
        (good_response(round_id="r0"), {}, "round 'r0'"),
        (good_response(client="c9"), {}, "unknown client"),
        (good_response(np.ones(K - 1)), {}, "99 scores"),
        (good_response(np.full(K, np.nan)), {}, "NaN"),
        (good_response(np.full(K, np.inf)), {}, "NaN or inf"),
        (good_response(np.full(K, -100.0)), {}, "below -8σ"),
        (good_response(np.full(K, 1e6)), {}, "plausible"),
        (b"\x00garbage", {}, "not a valid response"),
        (b"{}" + b" " * 70_000, {}, "limit"),
        (json.dumps({"schema_version": 1, "round_id": "r1", "client_id": "c1", "k": K, "scores_f32_b64": "!!"}).encode(),
         {}, "base64"),
        (json.dumps({"schema_version": 1, "round_id": "r1", "client_id": "c1", "k": K, "scores_f32_b64": "",
                     "extra": "my data"}).encode(), {}, "extra"),
    ],
)
def test_bad_responses_are_refused_with_a_reason(data, kw, message):
    with pytest.raises(ProtocolError, match=message) as err:
        decode(data, **kw)
    assert "up/c1.json" in str(err.value)


def test_response_carries_only_scores_and_ids():
    assert set(Response.model_fields) == {"schema_version", "round_id", "client_id", "k", "scores_f32_b64"}


# ------------------------------------------------------------------ strict types on the wire (issue 16, item 10)


def with_field(data: bytes, **changes) -> bytes:
    return json.dumps({**json.loads(data), **changes}).encode()


@pytest.mark.parametrize("field, value", [("k", float(K)), ("k", str(K)), ("k", True), ("schema_version", 1.0),
                                          ("schema_version", True), ("client_id", 5), ("round_id", None)])  # fmt: skip
def test_a_response_field_of_another_json_type_is_refused(field, value):
    with pytest.raises(ProtocolError, match=f"not a valid response: {field}"):
        decode(with_field(good_response(), **{field: value}))


def test_the_existing_wire_format_still_validates_strictly():
    assert decode(good_response()).k == K  # response_json_bytes, as devices write it
    probe, pj, cn = probe_bytes(radii=np.ones(K, np.float32))
    assert decode_probe(pj, cn, "mem", "r1")[0] == probe  # datetimes as ISO strings, the backbone's tuples as arrays
    meta = json.loads(pj)
    meta["sigma"] = 6  # an integer is still a valid float
    assert decode_probe(json.dumps(meta).encode(), cn, "mem")[0].sigma == 6.0


@pytest.mark.parametrize("field, value", [("k", float(K)), ("dim", str(D)), ("schema_version", 2.0),
                                          ("sigma", "6.1")])  # fmt: skip
def test_a_probe_field_of_another_json_type_is_refused(field, value):
    _, pj, cn = probe_bytes()
    with pytest.raises(ProtocolError, match=f"not a valid probe: {field}"):
        decode_probe(with_field(pj, **{field: value}), cn, "mem")


def test_an_invitation_field_of_another_json_type_is_refused():
    from ecos_core.exchange.protocol import Invitation, decode_invitation

    deadline = datetime.now(timezone.utc) + timedelta(minutes=5)
    good = Invitation(round_id="r1", client_id="c1", probe_url="u", centroids_url="u", response_url="u",
                      probe_hmac_sha256="0" * 64, deadline=deadline).model_dump_json().encode()  # fmt: skip
    assert decode_invitation(good, "inv").deadline == deadline
    with pytest.raises(ProtocolError, match="not a valid invitation: schema_version"):
        decode_invitation(with_field(good, schema_version="1"), "inv")
    with pytest.raises(ProtocolError, match="not a valid invitation: probe_url"):
        decode_invitation(with_field(good, probe_url=["u"]), "inv")
