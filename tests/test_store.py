import numpy as np
import pytest

from ecos_core.storage.store import Store, StoreError


@pytest.fixture(params=["local", "memory"])
def store(request, tmp_path):
    if request.param == "local":
        return Store(str(tmp_path / "store"))
    import uuid

    return Store(f"memory://ecos-{uuid.uuid4().hex}")


def test_round_trip_json_npy_bytes(store):
    store.write_json("a/meta.json", {"x": 1})
    store.write_npy("a/arr.npy", np.arange(5))
    store.write_bytes("a/raw.bin", b"abc")
    assert store.read_json("a/meta.json") == {"x": 1}
    assert store.read_npy("a/arr.npy").tolist() == [0, 1, 2, 3, 4]
    assert store.list("a") == ["a/arr.npy", "a/meta.json", "a/raw.bin"]
    assert store.list("nothing/here") == []


def test_no_overwrite_keeps_the_first_object(store):
    store.write_bytes("r/resp.json", b"first", overwrite=False)
    with pytest.raises(FileExistsError, match="not overwritten"):
        store.write_bytes("r/resp.json", b"second", overwrite=False)
    assert store.read_bytes("r/resp.json") == b"first"


def test_missing_and_oversized_objects_name_the_key(store):
    with pytest.raises(FileNotFoundError, match="no/such.json"):
        store.read_bytes("no/such.json")
    store.write_bytes("big.bin", b"x" * 100)
    with pytest.raises(StoreError, match="big.bin.*limit"):
        store.read_bytes("big.bin", max_bytes=10)


def test_pickled_npy_is_refused(store):
    import io

    buf = io.BytesIO()
    np.save(buf, np.array([object()], dtype=object))  # np.save pickles object arrays
    store.write_bytes("evil.npy", buf.getvalue())
    with pytest.raises(StoreError, match="not a plain .npy"):
        store.read_npy("evil.npy")


def test_bad_json_and_keys(store):
    store.write_bytes("bad.json", b"{oops")
    with pytest.raises(StoreError, match="bad.json: not valid JSON"):
        store.read_json("bad.json")
    with pytest.raises(ValueError, match="relative"):
        store.path("../escape")


def test_unreachable_store_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreError, match="not reachable"):
        Store(str(blocker / "store")).check()
    with pytest.raises(StoreError):
        Store("nosuchproto://bucket/x")


def test_unreachable_s3_endpoint_fails_fast_with_the_url():
    import time

    opts = {"key": "k", "secret": "s", "client_kwargs": {"endpoint_url": "http://127.0.0.1:9"},
            "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 2}}  # fmt: skip
    start = time.monotonic()
    with pytest.raises(StoreError, match="s3://ecos-bucket/x is not reachable"):
        Store("s3://ecos-bucket/x", opts).check()
    assert time.monotonic() - start < 30


def test_empty_and_malformed_objects_say_what_is_wrong(store):
    """A 0-byte object is an empty object (not an unavailable store); a bad array or JSON
    document names the key and the problem (the same on the real S3 server: test_s3_large)."""
    import io

    store.write_bytes("e/zero.bin", b"")
    assert store.read_bytes("e/zero.bin") == b""
    assert store.read_bytes("e/zero.bin", max_bytes=64) == b""
    buf = io.BytesIO()
    np.save(buf, np.arange(1000, dtype=np.float32))
    for name, data in (("truncated", buf.getvalue()[:200]), ("empty", b""), ("garbage", b"\x00 not an array")):
        store.write_bytes(f"e/{name}.npy", data)
        with pytest.raises(StoreError, match=rf"e/{name}\.npy: not a plain \.npy array"):
            store.read_npy(f"e/{name}.npy")
    for name, data in (("empty", b""), ("nested", b"[" * 100_000), ("latin1", b'{"a": "\xe9"}'), ("huge", b"1" * 5000)):
        store.write_bytes(f"e/{name}.json", data)
        with pytest.raises(StoreError, match=rf"e/{name}\.json: .*not valid JSON") as err:
            store.read_json(f"e/{name}.json")
        assert "store unavailable" not in str(err.value)


def test_s3_stores_get_the_checksum_switches_whatever_options_they_are_given():
    """Large objects read through rclone only with botocore's checksums "when_required": a
    Store built anywhere (CLI, worker, Dask worker, device) gets them; an explicit choice wins."""
    from ecos_core.settings import Settings
    from ecos_core.storage.store import S3_CHECKSUM_CONFIG

    given = {"key": "k", "secret": "s", "config_kwargs": {"s3": {"addressing_style": "path"}}}
    store = Store("s3://ecos-bucket/x", given)
    assert store.options["config_kwargs"] == {"s3": {"addressing_style": "path"}, **S3_CHECKSUM_CONFIG}
    assert given["config_kwargs"] == {"s3": {"addressing_style": "path"}}  # the caller's dict is not changed
    assert Store("s3://ecos-bucket/x").options["config_kwargs"] == S3_CHECKSUM_CONFIG
    explicit = Store("s3://ecos-bucket/x", {"config_kwargs": {"response_checksum_validation": "when_supported"}})
    assert explicit.options["config_kwargs"]["response_checksum_validation"] == "when_supported"
    signer = store._signer()
    assert signer.meta.config.response_checksum_validation == "when_required"
    assert signer.meta.config.request_checksum_calculation == "when_required"
    settings = Settings(s3_endpoint="http://127.0.0.1:9", s3_key="k", s3_secret="s").storage_options("s3://b/x")
    assert S3_CHECKSUM_CONFIG.items() <= settings["config_kwargs"].items()
    assert Settings().storage_options("./folder") == {}


def test_the_s3_secret_is_never_printed_with_the_settings():
    from ecos_core.settings import Settings

    settings = Settings(s3_key="k", s3_secret="the-secret", s3_endpoint="http://127.0.0.1:9")
    assert "the-secret" not in repr(settings) and "the-secret" not in str(settings.model_dump())
    assert settings.storage_options("s3://b/x")["secret"] == "the-secret"
