"""The sharded pool: shard integrity, per-row ingest errors, and the ingest flow on a real
local Dask cluster (idempotent, incremental, resumable after a kill, nothing published on
failure)."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ecos_core.pool import layout
from ecos_core.pool.catalog import UNLABELLED, PoolCatalog
from ecos_core.pool.ingest import IngestError, chunk_bounds, decode_chunk, load_image, parse_label
from ecos_core.pool.shards import ShardIntegrityError, decode_shard, encode_shard
from ecos_core.pool.sources import source_rows
from tests.conftest import make_imageset

ROOT = Path(__file__).resolve().parents[1]


def write_pngs(folder: Path, n: int, seed: int = 0, domain: str = "photos", start: int = 0) -> pd.DataFrame:
    """n PNGs of learnable bars plus their manifest rows (uri relative to `folder`)."""
    data = make_imageset(n + start, seed, domain)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(start, start + n):
        Image.fromarray(data.images[i]).save(folder / "img" / f"{i:05d}.png")
        rows.append({"uri": f"img/{i:05d}.png", "label": int(data.labels[i]), "domain": domain})
    return pd.DataFrame(rows)


def bomb_png(path: Path, side: int = 5000) -> None:
    """A few KB that declare side² pixels: a decompression bomb for a small pixel limit."""
    Image.new("1", (side, side)).save(path)


# --------------------------------------------------------------------------- library


def test_shard_round_trip_and_tamper_detection():
    images = make_imageset(5).images
    data, sha = encode_shard(images)
    assert np.array_equal(decode_shard(data, sha, "s"), images)
    assert encode_shard(images)[1] == sha  # content address: same images, same name
    tampered = bytearray(data)
    tampered[-1] ^= 1
    with pytest.raises(ShardIntegrityError, match="changed after ingest"):
        decode_shard(bytes(tampered), sha, "pool/shards/x.npy")
    with pytest.raises(ValueError, match="uint8"):
        encode_shard(images.astype(np.float32))


def test_labels_are_class_ids_or_empty():
    assert parse_label("3") == 3 and parse_label("3.0") == 3 and parse_label("") == UNLABELLED
    for bad in ("cat", "-1", "2.5", "nan", "1e400"):
        with pytest.raises(ValueError, match="not a class id"):
            parse_label(bad)


def test_chunk_bounds_cover_every_row_once():
    for n in (0, 1, 9, 10, 11, 1000):
        bounds = chunk_bounds(n, 10)
        assert sum(b - a for a, b in bounds) == n and all(b - a <= 10 for a, b in bounds)
    with pytest.raises(ValueError):
        chunk_bounds(5, 0)


def test_each_bad_row_is_named_with_its_uri(tmp_path):
    rows = write_pngs(tmp_path, 3)
    (tmp_path / "img" / "text.png").write_text("not an image")
    bomb_png(tmp_path / "img" / "bomb.png")
    bad = pd.DataFrame([
        {"uri": "img/missing.png", "label": "1", "domain": "photos"},
        {"uri": "img/text.png", "label": "1", "domain": "photos"},
        {"uri": "img/bomb.png", "label": "1", "domain": "photos"},
        {"uri": "img/00000.png", "label": "seven", "domain": "photos"},
    ])  # fmt: skip
    manifest = tmp_path / "m.csv"
    pd.concat([rows, bad], ignore_index=True).to_csv(manifest, index=False)
    listed = source_rows(str(manifest))
    with pytest.raises(IngestError, match=r"row 3 \(.*missing.png\): file not found"):
        decode_chunk(listed, 28, "fail", max_pixels=1_000_000)
    images, kept, errors = decode_chunk(listed, 28, "skip", max_pixels=1_000_000)
    assert images.shape == (3, 28, 28, 3) and kept["label"].tolist() == rows["label"].tolist()
    reasons = {e.source_row: e.reason for e in errors}
    assert sorted(reasons) == [3, 4, 5, 6]
    assert "not found" in reasons[3] and "not an image" in reasons[4]
    assert "decompression bomb" in reasons[5] and "not a class id" in reasons[6]


def test_builtin_rows_decode_to_the_builtin_pixels():
    from ecos_core.data.builtin import load_domain

    rows = source_rows("builtin:optdigits:20")
    images, kept, _ = decode_chunk(rows, 28)
    ref = load_domain("optdigits", max_samples=20)
    assert np.array_equal(images, ref.images) and kept["id"].tolist() == ref.ids.tolist()
    assert load_image(rows["uri"][0], 32).shape == (32, 32, 3)


def test_catalog_locates_ids_and_refuses_unknown_ones():
    table = pd.DataFrame({"id": ["a", "b", "c"], "shard": ["s1", "s1", "s2"], "row": [0, 1, 0], "label": [1, -1, 2],
                          "domain": ["x", "x", "y"], "uri": ["u"] * 3})  # fmt: skip
    pool = PoolCatalog(table)
    assert pool.locate(np.array(["c", "a"]))["row"].tolist() == [0, 0]
    assert pool.shards() == ["s1", "s2"] and pool.domain_counts() == {"x": 2, "y": 1}
    with pytest.raises(KeyError, match="not in the pool"):
        pool.locate(np.array(["zz"]))
    assert len(PoolCatalog.from_parquet(pool.to_parquet(), "c")) == 3
    with pytest.raises(ValueError, match="duplicate ids"):
        PoolCatalog(pd.concat([table, table]))


# --------------------------------------------------------------------------- the ingest flow (real Dask cluster)


def test_ingest_is_idempotent_incremental_and_publishes_nothing_on_failure(tmp_path):
    from flows.ingest_flow import ingest_flow
    from tasks.pool import images_of, read_pool

    rows = write_pngs(tmp_path, 30)
    rows.to_csv(tmp_path / "m.csv", index=False)
    pool_url = str(tmp_path / "pool")
    first = ingest_flow(str(tmp_path / "m.csv"), pool_url, shard_size=8, workers=2)
    assert first["ingested"] == 30 and len(first["new_shards"]) == 4 and first["skipped"] == []
    meta, pool = read_pool(pool_url)
    got = images_of(pool_url, pool.ids[::-1])  # any order, read by shard and row
    expected = make_imageset(30, 0, "photos")
    assert np.array_equal(got.images, expected.images[::-1]) and np.array_equal(got.labels, expected.labels[::-1])

    again = ingest_flow(str(tmp_path / "m.csv"), pool_url, shard_size=8, workers=2)
    assert again["ingested"] == 0 and again["already_in_pool"] == 30 and read_pool(pool_url)[0] == meta

    more = pd.concat([rows, write_pngs(tmp_path, 5, start=30)], ignore_index=True)
    more.to_csv(tmp_path / "m.csv", index=False)
    grown = ingest_flow(str(tmp_path / "m.csv"), pool_url, shard_size=8, workers=2)
    assert grown["ingested"] == 5 and len(grown["new_shards"]) == 1
    meta2, pool2 = read_pool(pool_url)
    assert [s["sha256"] for s in meta2["shards"][:4]] == [s["sha256"] for s in meta["shards"]]  # old shards untouched
    assert meta2["n_images"] == 35

    bad = pd.concat([more, pd.DataFrame([{"uri": "img/gone.png", "label": 1, "domain": "photos"}])], ignore_index=True)
    bad.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(IngestError, match=r"row 35 \(.*gone.png\): file not found.*nothing was published"):
        ingest_flow(str(tmp_path / "bad.csv"), str(tmp_path / "pool-b"), shard_size=8, workers=2)
    assert read_pool(str(tmp_path / "pool-b"))[0] is None
    skipped = ingest_flow(str(tmp_path / "bad.csv"), str(tmp_path / "pool-b"), shard_size=8, on_error="skip", workers=2)
    assert skipped["ingested"] == 35 and [s["source_row"] for s in skipped["skipped"]] == [35]


def test_ingest_resumes_after_being_killed(tmp_path):
    from tasks.pool import read_pool

    write_pngs(tmp_path, 160).to_csv(tmp_path / "m.csv", index=False)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "ecos_cli", "pool", "ingest", str(tmp_path / "m.csv"), "--to", str(tmp_path / "pool"),
           "--shard-size", "2", "--workers", "1"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    ingest = tmp_path / "pool" / "ingest"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(ingest.glob("*/chunk-*.json")):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the CLI, its Dask scheduler and workers
    proc.wait()
    done = {p: p.stat().st_mtime_ns for p in ingest.glob("*/chunk-*.json")}
    assert 0 < len(done) < 80, "the kill should land mid-ingest"
    assert read_pool(str(tmp_path / "pool"))[0] is None  # nothing published yet
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, timeout=300)
    meta, pool = read_pool(str(tmp_path / "pool"))
    assert meta["n_images"] == 160 and len(pool.shards()) == 80
    assert all(p.stat().st_mtime_ns == t for p, t in done.items())  # finished chunks were not redone


def test_relative_manifest_paths_resolve_on_the_driver(tmp_path, monkeypatch):
    """Listing makes every local uri absolute, whatever folder the manifest was named from."""
    write_pngs(tmp_path, 2).to_csv(tmp_path / "m.csv", index=False)
    monkeypatch.chdir(tmp_path)
    uris = source_rows("m.csv")["uri"].tolist()
    assert uris == [str(tmp_path / "img" / f"{i:05d}.png") for i in range(2)]


def _dask_cli(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([str(Path(sys.executable).parent / "dask"), *args], cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip


def test_a_relative_manifest_ingests_on_an_external_dask_cluster_in_another_folder(tmp_path):
    """`ecos pool ingest manifest.csv --dask-address …` from the manifest's folder: the cluster's
    workers run elsewhere, so a path left relative would be looked up in their folder."""
    import socket

    from tasks.pool import read_pool

    data, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    elsewhere.mkdir()
    write_pngs(data, 12).to_csv(data / "manifest.csv", index=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    procs = [_dask_cli("scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard", cwd=elsewhere)]
    try:
        time.sleep(2)
        procs.append(_dask_cli("worker", address, "--nworkers", "1", "--nthreads", "1", "--no-dashboard", cwd=elsewhere))
        out = subprocess.run([sys.executable, "-m", "ecos_cli", "pool", "ingest", "manifest.csv", "--to",
                              str(tmp_path / "pool"), "--shard-size", "6", "--dask-address", address],
                             cwd=data, capture_output=True, text=True, timeout=300)  # fmt: skip
        assert out.returncode == 0, out.stderr[-2000:]
        assert read_pool(str(tmp_path / "pool"))[0]["n_images"] == 12
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=30)
