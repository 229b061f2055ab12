"""Objects at real sizes through the REAL S3 server (rclone serve s3): s3fs reads and
writes objects over ~50 MiB in parts/ranges, and rclone answers a ranged GET with the
whole object's checksum, which botocore would check each range against (issue 16,
item 1). Also empty and malformed objects, whose errors must say what is wrong."""

from __future__ import annotations

import io
import os
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from infra import services  # noqa: E402
from infra.processes import free_port as _free_port  # noqa: E402

from ecos_core.settings import Settings  # noqa: E402
from ecos_core.storage.store import Store, StoreError  # noqa: E402

LARGE = 64 * 1024 * 1024 + 12345  # over s3fs's 50 MiB part size, not a multiple of it



@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """rclone's S3 server started by infra.services on a free port in a temporary run dir,
    stopped by PID at the end (also when a test fails)."""
    run_dir = tmp_path_factory.mktemp("s3-large-infra")
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("ECOS_", "PREFECT_API_", "AWS_"))}
    environ.update(ECOS_INFRA_DIR=str(run_dir), ECOS_S3_PORT=str(_free_port()), ECOS_S3_BUCKET="ecos")
    cfg = services.Config.load(environ, dotenv=run_dir / "no.env")  # the repo's .env must not leak in
    try:
        try:
            services.start("s3", cfg)
        except services.ServiceError as err:
            pytest.fail(f"could not start the S3 server: {err}", pytrace=False)
        yield cfg
    finally:
        services.stop("s3", cfg, quiet=True)


def _bare_options(cfg) -> dict:
    """Only what a caller must say (credentials, endpoint): the Store adds the rest."""
    key, secret = cfg.credentials(create=False)
    return {"key": key, "secret": secret, "client_kwargs": {"endpoint_url": cfg.s3_url, "region_name": "us-east-1"},
            "config_kwargs": {"s3": {"addressing_style": "path"}}}  # fmt: skip


@pytest.fixture(params=["bare", "settings"])
def store(request, s3) -> Store:
    """A Store built from bare options (as a Dask worker or device might) and one built
    from Settings (as the CLI, worker and watcher do)."""
    url = f"s3://{s3.s3_bucket}/large-{uuid.uuid4().hex[:8]}"
    if request.param == "bare":
        return Store(url, _bare_options(s3))
    key, secret = s3.credentials(create=False)
    return Store(url, Settings(s3_endpoint=s3.s3_url, s3_key=key, s3_secret=secret).storage_options(url))


def test_large_bytes_round_trip_and_ranged_reads(store):
    data = os.urandom(LARGE)
    store.write_bytes("big/blob.bin", data)
    assert store.read_bytes("big/blob.bin") == data
    assert store.read_bytes("big/blob.bin", max_bytes=LARGE) == data  # a ranged GET of the whole object
    path = store.path("big/blob.bin")
    start = 50 * 1024 * 1024 - 7
    assert store.fs.cat_file(path, start=start, end=start + 1000) == data[start : start + 1000]
    with store.fs.open(path, "rb", block_size=8 * 1024 * 1024) as f:  # buffered reads: many ranged GETs
        f.seek(LARGE - 4096)
        assert f.read() == data[-4096:]


def test_large_npy_round_trip(store):
    array = np.random.default_rng(0).standard_normal((16 * 1024 * 1024 // 64 + 3, 64), dtype=np.float32)
    assert array.nbytes >= 64 * 1024 * 1024
    store.write_npy("features/big.npy", array)
    back = store.read_npy("features/big.npy")
    assert back.dtype == np.float32 and np.array_equal(back, array)


def test_empty_object_reads_as_empty(store):
    store.write_bytes("empty/zero.bin", b"")
    assert store.read_bytes("empty/zero.bin") == b""
    assert store.read_bytes("empty/zero.bin", max_bytes=1024) == b""  # the ranged read of 0 bytes
    with pytest.raises(StoreError, match=r"zero\.bin: empty object, not valid JSON"):
        store.read_json("empty/zero.bin")


def test_malformed_objects_say_what_is_wrong(store):
    buf = io.BytesIO()
    np.save(buf, np.arange(1000, dtype=np.float32))
    store.write_bytes("bad/truncated.npy", buf.getvalue()[:200])
    store.write_bytes("bad/garbage.npy", b"\x00not an array at all")
    store.write_bytes("bad/empty.npy", b"")
    store.write_bytes("bad/nested.json", b"[" * 100_000)
    for key in ("bad/truncated.npy", "bad/garbage.npy", "bad/empty.npy"):
        with pytest.raises(StoreError, match=rf"{key}: not a plain \.npy array") as err:
            store.read_npy(key)
        assert "store unavailable" not in str(err.value)
    with pytest.raises(StoreError, match=r"nested\.json: not valid JSON") as err:
        store.read_json("bad/nested.json")
    assert "store unavailable" not in str(err.value)


def test_presigned_urls_carry_no_checksum_demand(store):
    """A device PUTs its answer with a plain HTTP client: the URL must not require a
    checksum header it does not send."""
    from datetime import datetime, timedelta, timezone
    from urllib.request import Request, urlopen

    until = datetime.now(timezone.utc) + timedelta(minutes=5)
    put = store.presign("signed/answer.json", "put", until)
    assert "checksum" not in put.lower()
    with urlopen(Request(put, data=b'{"ok": 1}', method="PUT"), timeout=10) as resp:
        assert resp.status == 200
    with urlopen(store.presign("signed/answer.json", "get", until), timeout=10) as resp:
        assert resp.read() == b'{"ok": 1}'
