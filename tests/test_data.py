"""Tests for ecos_core.data: built-in pool, restricted unpickler, user loaders, split."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ecos_core.data import (
    BUILTIN_DOMAINS,
    DISTRACTOR_DOMAINS,
    domain_counts,
    image_folder_classes,
    load_dataset,
    load_domain,
    load_domains,
    load_image_folder,
    load_manifest,
    render_synth_digits,
    split_client_pool,
    subsample,
)
from ecos_core.data import builtin, synth
from ecos_core.types import ImageSet


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ecos-cache")


def _toy(name: str, n: int, size: int = 4) -> ImageSet:
    rng = np.random.default_rng(len(name))
    return ImageSet(
        images=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
        labels=(np.arange(n) % 10).astype(np.int64),
        domains=np.full(n, name),
        ids=np.array([f"{name}/{i:06d}" for i in range(n)]),
    )


def _png(color: tuple[int, int, int], size: tuple[int, int] = (10, 12), mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).convert(mode).save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- built-in domains


def test_constants() -> None:
    assert BUILTIN_DOMAINS == ("mnist", "optdigits", "mnistm", "synth", "animal", "letters")
    assert DISTRACTOR_DOMAINS == ("animal", "letters")
    assert set(DISTRACTOR_DOMAINS) <= set(BUILTIN_DOMAINS)


def test_unknown_domain_lists_known_names(cache_dir: Path) -> None:
    with pytest.raises(ValueError, match="svhn.*mnist.*animal"):
        load_domain("svhn", cache_dir=cache_dir)
    with pytest.raises(ValueError, match="nope"):
        load_domains(["mnist", "nope"], cache_dir=cache_dir)


def _check_domain(data: ImageSet, name: str, n: int) -> None:
    assert len(data) == n
    assert data.images.shape == (n, 28, 28, 3) and data.images.dtype == np.uint8
    assert data.labels.dtype == np.int64 and data.labels.min() >= 0 and data.labels.max() <= 9
    assert set(data.domains.tolist()) == {name}
    assert data.ids[0].startswith(f"{name}/") and len(set(data.ids.tolist())) == n


def test_optdigits_full_and_cache_round_trip(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = load_domain("optdigits", cache_dir=cache_dir)
    _check_domain(first, "optdigits", 1797)
    assert first.ids[5] == "optdigits/000005"
    assert (cache_dir / "optdigits-v1-n1797.npz").is_file()
    assert not list(cache_dir.glob("*.tmp"))  # atomic write left no temp file behind
    # MNIST layout: a 4-pixel black border around the 20x20 digit box.
    assert first.images[:, :4].max() == 0 and first.images[:, 24:].max() == 0

    # Second load must come from the cache, not the builder.
    spec = builtin._SPECS["optdigits"]
    monkeypatch.setitem(builtin._SPECS, "optdigits", (spec[0], spec[1], lambda: pytest.fail("rebuilt")))
    again = load_domain("optdigits", cache_dir=cache_dir)
    np.testing.assert_array_equal(again.images, first.images)
    np.testing.assert_array_equal(again.labels, first.labels)
    np.testing.assert_array_equal(again.ids, first.ids)


def test_max_samples_is_seeded_sorted_subset(cache_dir: Path) -> None:
    a = load_domain("optdigits", cache_dir=cache_dir, max_samples=50, seed=3)
    b = load_domain("optdigits", cache_dir=cache_dir, max_samples=50, seed=3)
    c = load_domain("optdigits", cache_dir=cache_dir, max_samples=50, seed=4)
    _check_domain(a, "optdigits", 50)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.ids, b.ids)
    assert list(a.ids) == sorted(a.ids) and list(a.ids) != list(c.ids)
    full = load_domain("optdigits", cache_dir=cache_dir)
    index = np.array([int(i.split("/")[1]) for i in a.ids])
    np.testing.assert_array_equal(full.images[index], a.images)  # ids index the full domain
    assert len(load_domain("optdigits", cache_dir=cache_dir, max_samples=10**6)) == 1797


def test_corrupt_cache_is_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "optdigits-v1-n1797.npz"
    path.write_bytes(b"not a zip")
    with pytest.warns(UserWarning, match="unreadable cache"):
        data = load_domain("optdigits", cache_dir=tmp_path, max_samples=5)
    assert len(data) == 5
    assert np.load(path, allow_pickle=False)["labels"].shape == (1797,)


def test_cache_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECOS_CACHE_DIR", str(tmp_path))
    load_domain("animal", max_samples=3)
    assert (tmp_path / "animal-v1-n10000.npz").is_file()


def test_animal_distractor(cache_dir: Path) -> None:
    data = load_domain("animal", cache_dir=cache_dir)
    _check_domain(data, "animal", 10_000)
    assert np.bincount(data.labels).tolist() == [1000] * 10
    # Grey silhouettes: the three channels are identical.
    assert (data.images[..., 0] == data.images[..., 2]).all()


def test_mnist_and_mnistm(cache_dir: Path) -> None:
    domains = load_domains(["mnist", "mnistm"], cache_dir=cache_dir, max_per_domain=300, seed=1)
    assert list(domains) == ["mnist", "mnistm"]
    _check_domain(domains["mnist"], "mnist", 300)
    _check_domain(domains["mnistm"], "mnistm", 300)
    full_mnist = np.load(cache_dir / "mnist-v1-n35000.npz", allow_pickle=False)
    full_mnistm = np.load(cache_dir / "mnistm-v1-n35000.npz", allow_pickle=False)
    assert len(full_mnist["labels"]) == 35_000 and len(full_mnistm["labels"]) == 35_000
    all_images, all_labels = builtin._mnist_all()
    # mnistm is cut from MNIST indices 35000.. (no digit instance shared with mnist).
    np.testing.assert_array_equal(full_mnistm["labels"], all_labels[35_000:])
    np.testing.assert_array_equal(full_mnist["images"][..., 0], all_images[:35_000])
    # MNIST-M is coloured; MNIST is grey.
    m = domains["mnistm"].images.astype(int)
    assert np.abs(m[..., 0] - m[..., 1]).mean() > 5
    assert (domains["mnist"].images[..., 0] == domains["mnist"].images[..., 1]).all()


def test_synth_renderer_is_balanced_deterministic_and_contrasty() -> None:
    images, labels = render_synth_digits(60, seed=7)
    again, labels2 = render_synth_digits(60, seed=7)
    other, _ = render_synth_digits(60, seed=8)
    assert images.shape == (60, 28, 28, 3) and images.dtype == np.uint8 and labels.dtype == np.int64
    assert np.bincount(labels).tolist() == [6] * 10
    np.testing.assert_array_equal(images, again)
    np.testing.assert_array_equal(labels, labels2)
    assert not np.array_equal(images, other)
    # Every render has a visible digit: a wide luminance range inside the frame.
    luma = images.astype(float) @ [0.299, 0.587, 0.114]
    spread = np.percentile(luma.reshape(60, -1), 95, axis=1) - np.percentile(luma.reshape(60, -1), 5, axis=1)
    assert spread.min() > 40


def test_synth_fonts_draw_digits() -> None:
    fonts = synth._digit_fonts()
    assert len(fonts) >= 10
    assert not any(Path(p).name.startswith(("cmsy", "cmex", "STIXSiz", "DejaVuSansDisplay")) for p, _ in fonts)


# --------------------------------------------------------------------------- split


def test_split_disjoint_deterministic_id_ood() -> None:
    domains = {"b": _toy("b", 30), "a": _toy("a", 100), "c": _toy("c", 20)}
    train, test, pool = split_client_pool(domains, "a", 10, 15, seed=5)
    assert len(train) == 10 and len(test) == 15 and len(pool) == 75 + 30 + 20
    assert set(train.domains) == {"a"} and set(test.domains) == {"a"}
    ids = [set(train.ids.tolist()), set(test.ids.tolist()), set(pool.ids.tolist())]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert ids[0] | ids[1] | {i for i in ids[2] if i.startswith("a/")} == set(domains["a"].ids.tolist())
    assert domain_counts(pool) == {"a": 75, "b": 30, "c": 20}
    again = split_client_pool(dict(reversed(list(domains.items()))), "a", 10, 15, seed=5)
    for x, y in zip((train, test, pool), again):
        np.testing.assert_array_equal(x.ids, y.ids)
        np.testing.assert_array_equal(x.images, y.images)
    other = split_client_pool(domains, "a", 10, 15, seed=6)
    assert list(other[0].ids) != list(train.ids)


def test_split_ood_regime_excludes_client_domain() -> None:
    domains = {"a": _toy("a", 40), "b": _toy("b", 30)}
    train, test, pool = split_client_pool(domains, "a", 5, 5, regime="ood")
    assert domain_counts(pool) == {"b": 30}
    assert len(train) == 5 and len(test) == 5
    # A lone domain in "ood" leaves an empty (but well-shaped) pool.
    _, _, empty = split_client_pool({"a": domains["a"]}, "a", 5, 5, regime="ood")
    assert len(empty) == 0 and empty.images.shape == (0, 4, 4, 3)


def test_split_errors() -> None:
    domains = {"a": _toy("a", 20), "b": _toy("b", 10)}
    with pytest.raises(ValueError, match="unknown client domain 'zz'.*'a', 'b'"):
        split_client_pool(domains, "zz", 5, 5)
    with pytest.raises(ValueError, match="not enough"):
        split_client_pool(domains, "a", 15, 6)
    with pytest.raises(ValueError, match="unknown regime"):
        split_client_pool(domains, "a", 5, 5, regime="iid")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="also occur in the pool"):
        split_client_pool({"a": _toy("a", 20), "copy": _toy("a", 20)}, "a", 5, 5, regime="ood")
    with pytest.raises(ValueError, match="different image shapes"):
        split_client_pool({"a": _toy("a", 20), "b": _toy("b", 20, size=5)}, "a", 5, 5)


def test_split_on_builtin_domains(cache_dir: Path) -> None:
    domains = load_domains(["optdigits", "animal"], cache_dir=cache_dir, max_per_domain=200)
    train, test, pool = split_client_pool(domains, "optdigits", 50, 30)
    assert domain_counts(pool) == {"animal": 200, "optdigits": 120}
    assert pool.images.shape[1:] == (28, 28, 3)


def test_subsample() -> None:
    data = _toy("a", 50)
    sub = subsample(data, 10, seed=2)
    assert len(sub) == 10 and list(sub.ids) == sorted(sub.ids)
    np.testing.assert_array_equal(sub.ids, subsample(data, 10, seed=2).ids)
    assert subsample(data, None) is data and subsample(data, 99) is data


# --------------------------------------------------------------------------- user data


@pytest.fixture()
def image_folder(tmp_path: Path) -> Path:
    root = tmp_path / "pets"
    for cls, color in (("dog", (200, 10, 10)), ("cat", (10, 200, 10))):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            (root / cls / f"{i}.png").write_bytes(_png(color, size=(10 + i, 12), mode="RGBA" if i else "L"))
    (root / "cat" / ".DS_Store").write_bytes(b"junk")  # hidden: ignored
    (root / "README.txt").write_text("loose files in root are ignored")
    return root


def test_image_folder_happy_path(image_folder: Path) -> None:
    data = load_image_folder(str(image_folder), size=16)
    assert image_folder_classes(str(image_folder)) == ["cat", "dog"]
    assert data.images.shape == (6, 16, 16, 3) and data.images.dtype == np.uint8
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert set(data.domains) == {"pets"} and data.ids[0] == "pets/cat/0.png"
    # RGB content survives: dog images are red, cat images green (the "L" one is grey).
    assert data.images[4, ..., 0].mean() > 150 and data.images[4, ..., 1].mean() < 50
    assert load_image_folder(str(image_folder), domain="mine").domains[0] == "mine"


def test_image_folder_over_fsspec_memory() -> None:
    fs = fsspec.filesystem("memory")
    fs.pipe({"/imgs/one/a.png": _png((1, 2, 3)), "/imgs/two/b.png": _png((4, 5, 6))})
    data = load_image_folder("memory://imgs")
    assert data.labels.tolist() == [0, 1] and data.images.shape == (2, 28, 28, 3)
    assert data.ids.tolist() == ["imgs/one/a.png", "imgs/two/b.png"]
    fs.rm("/imgs", recursive=True)


def test_image_folder_errors(image_folder: Path, tmp_path: Path) -> None:
    (image_folder / "dog" / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"row \d+ \(.*dog/notes\.txt\): not an image"):
        load_image_folder(str(image_folder))
    (image_folder / "dog" / "notes.txt").unlink()
    with pytest.raises(ValueError, match=r"0\.png: file too large"):
        load_image_folder(str(image_folder), max_bytes_per_file=10)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty image folder"):
        load_image_folder(str(empty))
    (empty / "cls").mkdir()
    with pytest.raises(ValueError, match="empty image folder"):
        load_image_folder(str(empty))

    missing = tmp_path / "does-not-exist"
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        load_image_folder(str(missing))
    with pytest.raises(FileNotFoundError, match="not found"):
        load_dataset(f"file://{missing}")
    with pytest.raises(ValueError, match="nosuchproto://bucket"):
        load_image_folder("nosuchproto://bucket/data")


def test_storage_backend_errors_name_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    class Unreachable(Exception):  # stands in for botocore/aiohttp connection errors
        pass

    def boom(*args: object, **kwargs: object) -> None:
        raise Unreachable("connection refused")

    fs = fsspec.filesystem("memory")
    fs.pipe({"/down/c/a.png": _png((1, 1, 1))})
    monkeypatch.setattr(type(fs), "isdir", boom)
    with pytest.raises(ValueError, match=r"memory://down: cannot list image folder \(Unreachable: connection refused"):
        load_image_folder("memory://down")
    monkeypatch.setattr(type(fs), "exists", boom)
    with pytest.raises(ValueError, match=r"memory://down/m.csv: cannot access manifest"):
        load_manifest("memory://down/m.csv")
    monkeypatch.undo()
    fs.rm("/down", recursive=True)


def _write_manifest_images(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(4):
        (folder / f"img{i}.png").write_bytes(_png((i * 60, 0, 0)))


def test_manifest_csv_happy_path(tmp_path: Path) -> None:
    _write_manifest_images(tmp_path / "imgs")
    rows = pd.DataFrame(
        {"uri": [f"imgs/img{i}.png" for i in range(3)] + [str(tmp_path / "imgs" / "img3.png")],
         "label": [3, 1, 4, 1], "domain": ["x", "x", "y", "y"]}
    )
    rows.to_csv(tmp_path / "m.csv", index=False)
    data = load_manifest(str(tmp_path / "m.csv"), size=8)
    assert data.images.shape == (4, 8, 8, 3)
    assert data.labels.tolist() == [3, 1, 4, 1] and data.labels.dtype == np.int64
    assert data.domains.tolist() == ["x", "x", "y", "y"]
    assert data.ids.tolist() == ["m/000000", "m/000001", "m/000002", "m/000003"]
    assert data.images[2, ..., 0].mean() == pytest.approx(120, abs=2)
    same = load_dataset(str(tmp_path / "m.csv"), size=8)
    np.testing.assert_array_equal(same.images, data.images)


def test_manifest_parquet_over_fsspec_with_ids() -> None:
    fs = fsspec.filesystem("memory")
    fs.pipe({"/man/a.png": _png((9, 9, 9)), "/man/sub/b.png": _png((99, 9, 9))})
    table = pd.DataFrame({"uri": ["a.png", "sub/b.png"], "label": [0, 7], "domain": ["d", "d"], "id": ["p", "q"]})
    with fs.open("/man/list.parquet", "wb") as fh:
        table.to_parquet(fh)
    data = load_dataset("memory://man/list.parquet")
    assert data.ids.tolist() == ["p", "q"] and data.labels.tolist() == [0, 7]
    assert data.images.shape == (2, 28, 28, 3)
    fs.rm("/man", recursive=True)


def test_manifest_errors(tmp_path: Path) -> None:
    _write_manifest_images(tmp_path)
    pd.DataFrame({"uri": ["img0.png"], "lbl": [1]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match=r"bad\.csv.*missing columns \['label', 'domain'\]"):
        load_manifest(str(tmp_path / "bad.csv"))

    pd.DataFrame({"uri": ["img0.png", "gone.png"], "label": [1, 2], "domain": "d"}).to_csv(tmp_path / "m1.csv", index=False)
    with pytest.raises(ValueError, match=r"m1\.csv: row 1 \(.*gone\.png\): file not found"):
        load_manifest(str(tmp_path / "m1.csv"))

    (tmp_path / "text.png").write_text("not really a png")
    pd.DataFrame({"uri": ["text.png"], "label": [1], "domain": "d"}).to_csv(tmp_path / "m2.csv", index=False)
    with pytest.raises(ValueError, match=r"row 0 \(.*text\.png\): not an image"):
        load_manifest(str(tmp_path / "m2.csv"))

    pd.DataFrame({"uri": ["img0.png"], "label": ["cat"], "domain": "d"}).to_csv(tmp_path / "m3.csv", index=False)
    with pytest.raises(ValueError, match=r"row 0 \(.*img0\.png\): label 'cat' is not a class id"):
        load_manifest(str(tmp_path / "m3.csv"))

    with pytest.raises(FileNotFoundError, match=r"absent\.csv"):
        load_manifest(str(tmp_path / "absent.csv"))


def test_load_dataset_dispatch(image_folder: Path, cache_dir: Path) -> None:
    data = load_dataset("builtin:optdigits", cache_dir=str(cache_dir), max_samples=7)
    assert len(data) == 7 and data.domains[0] == "optdigits"
    with pytest.raises(ValueError, match="unknown built-in domain 'svhn'"):
        load_dataset("builtin:svhn", cache_dir=str(cache_dir))
    with pytest.raises(ValueError, match="28x28"):
        load_dataset("builtin:optdigits", size=32, cache_dir=str(cache_dir))
    folder = load_dataset(str(image_folder), max_samples=4, seed=1)
    assert len(folder) == 4 and folder.domains[0] == "pets"


def test_ecos_core_data_does_not_import_prefect() -> None:
    code = "import sys, ecos_core.data; assert 'prefect' not in sys.modules"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)
