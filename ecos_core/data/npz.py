"""ImageSet ↔ .npz (no pickles): how a simulated device keeps its private data on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ecos_core.types import ImageSet


def save_imageset(data: ImageSet, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, images=data.images, labels=data.labels, domains=data.domains.astype(str), ids=data.ids.astype(str))
    tmp.replace(path)


def load_imageset(path: str | Path) -> ImageSet:
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = {"images", "labels", "domains", "ids"} - set(z.files)
            if missing:
                raise ValueError(f"{path}: missing arrays {sorted(missing)}")
            return ImageSet(z["images"], z["labels"].astype(np.int64), z["domains"], z["ids"])
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not an ImageSet .npz ({err})") from None
