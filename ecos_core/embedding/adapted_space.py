"""A feature space adapted to the pool: a small CNN the cloud trains on its own annotated
pool images, used beside the ImageNet backbone.

ImageNet features at 64 px barely encode what makes a digit a digit: a kNN on them
agreed with the true label 36-75% of the time on this pool, and a linear projection
learned on 3,000 labelled pool features (LDA, or a trained 1280→64 map) lifted that
only to 40-75%. A width-16 SmallCNN trained on the same 3,000 pool images (the
annotators' labels, "none of these classes" for off-task images) gives 128-d embeddings
whose kNN agrees 87-91% of the time. It is trained on pool data only (no client data),
its weights are 99k float32 (403 KB) and travel hash-pinned as a numpy archive
(loaded with allow_pickle=False, never unpickled).

`combined` concatenates the two unit-normalised spaces with equal weight: cosine in it is
the mean of the two cosines. The backbone half keeps the client's own domain apart from
other domains (ID+OoD), the adapted half keeps on-task images apart from off-task ones
(OoD): on the built-in pool, seed 0, ECOS's distractor share in OoD fell from 0.51-0.52 to
0.00 for MNIST and MNIST-M, and synth's own-domain share in ID+OoD rose from 0.34 to 0.80.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np

from ecos_core.data.builtin import IMAGE_SIZE as IMAGE_SIDE  # SmallCNN's input: the pipeline's images
from ecos_core.exchange.protocol import ADAPTED_DIM as EMBED_DIM  # SmallCNN's penultimate layer
from ecos_core.sampling.index import l2_normalize
from ecos_core.types import ImageSet

MAX_WIDTH, MAX_CLASSES = 128, 10_000  # checked before a network is built from untrusted bytes (128: 8.3 MB)
MIN_ANNOTATED = 50  # fewer annotated pool images cannot train a space worth shipping


@dataclass(frozen=True)
class AdaptedSpace:
    """A trained SmallCNN trunk (state dict as float32 arrays) and its shape."""

    weights: dict[str, np.ndarray]
    width: int
    classes: int  # the annotators' classes, "none" included

    def to_bytes(self) -> bytes:
        """An .npz archive, byte-identical for identical weights (np.savez stamps the time
        into the zip): its sha256 names the space in the probe and in the store."""
        arrays = {"width": np.int64(self.width), "classes": np.int64(self.classes),
                  **{f"w:{k}": v for k, v in self.weights.items()}}  # fmt: skip
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as archive:
            for name, value in arrays.items():
                with archive.open(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), "w") as out:
                    np.lib.format.write_array(out, np.asarray(value), allow_pickle=False)
        return buf.getvalue()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()

    @classmethod
    def from_bytes(cls, data: bytes, sha256: str | None = None) -> "AdaptedSpace":
        """Hash first, then parse with allow_pickle=False and build the network (its exact
        layers and shapes): bytes from the store or the network never run code, and any
        malformed archive is one ValueError."""
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            raise ValueError(f"adapted feature space: sha256 mismatch (expected {sha256[:12]}…); refusing to load it")
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                weights = {k.removeprefix("w:"): z[k] for k in z.files if k.startswith("w:")}
                width, classes = int(z["width"]), int(z["classes"])
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, EOFError) as err:
            raise ValueError(f"adapted feature space: not a weights archive ({type(err).__name__}: {err})") from None
        if not (1 <= width <= MAX_WIDTH and 2 <= classes <= MAX_CLASSES):
            raise ValueError(f"adapted feature space: width {width} / classes {classes} out of range")
        space = cls(weights, width, classes)
        try:
            space.net()
        except (RuntimeError, TypeError, ValueError) as err:
            why = " ".join(str(err).split())[:300]  # torch's message spans lines; ours is one
            raise ValueError(f"adapted feature space: weights do not fit a width-{width} SmallCNN ({why})") from None
        if not all(np.isfinite(v).all() for v in weights.values() if v.dtype.kind == "f"):
            raise ValueError("adapted feature space: weights contain NaN or inf")
        return space

    def net(self):  # noqa: ANN201 (torch only where used)
        import torch

        from ecos_core.training.train import SmallCNN

        net = SmallCNN(self.classes, self.width)
        net.load_state_dict({k: torch.from_numpy(v) for k, v in self.weights.items()}, strict=True)
        return net.eval()

    def embed(self, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
        """(N, 128) float32 embeddings of uint8 NHWC images (the classifier head's input)."""
        import torch

        from ecos_core.training.train import to_tensor

        if images.ndim != 4 or images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE, 3):
            raise ValueError(f"the adapted feature space takes {IMAGE_SIDE}×{IMAGE_SIDE} RGB images, got shape {images.shape}")
        net, out = self.net(), []
        with torch.inference_mode():
            for i in range(0, len(images), batch_size):
                out.append(net.head[:-1](net.features(to_tensor(images[i : i + batch_size]))).numpy())
        emb = np.concatenate(out) if out else np.zeros((0, EMBED_DIM), np.float32)
        if not np.isfinite(emb).all():
            raise ValueError("adapted feature space produced NaN or inf")
        return emb.astype(np.float32)


def annotator_labels(labels: np.ndarray, domains: np.ndarray, off_task: tuple[str, ...], classes: int) -> np.ndarray:
    """What annotators answer: the label on task, `classes` ("none of these classes") off task."""
    out = np.asarray(labels, dtype=np.int64).copy()
    out[np.isin(np.asarray(domains).astype(str), list(off_task))] = classes
    return out


def annotated_rows(labels: np.ndarray, domains: np.ndarray, size: int, off_task: tuple[str, ...], seed: int) -> np.ndarray:
    """The pool rows annotators label to train the space (in pool order): a seeded sample
    of `size` rows among those with a label or in an off-task domain. On a fully labelled
    pool this is exactly data.split.subsample's choice, so the benchmark's caches hold."""
    eligible = np.flatnonzero((np.asarray(labels) >= 0) | np.isin(np.asarray(domains).astype(str), list(off_task)))
    if size >= len(eligible):
        return eligible
    rng = np.random.default_rng(seed)
    return eligible[np.sort(rng.choice(len(eligible), size=size, replace=False))]


def check_annotations(labels: np.ndarray, domains: np.ndarray, off_task: tuple[str, ...], classes: int,
                      where: str = "the pool") -> None:  # fmt: skip
    """One line when these annotated rows cannot train the space: too few, or a label that
    is not one of the classes."""
    on_task = ~np.isin(np.asarray(domains).astype(str), list(off_task))
    bad = np.asarray(labels)[on_task]
    bad = bad[(bad < 0) | (bad >= classes)]
    if len(bad):
        raise ValueError(f"{where}: label {int(bad[0])} is not a class id in 0..{classes - 1} (train.num_classes={classes})")
    if len(labels) < MIN_ANNOTATED:
        raise ValueError(f"the combined feature space needs at least {MIN_ANNOTATED} annotated images of {where} "
                         f"(labelled, or in off-task domains {list(off_task)}); it has {len(labels)}. Label more, or "
                         "use --feature-space backbone")  # fmt: skip


def annotated_set(images: np.ndarray, labels: np.ndarray, domains: np.ndarray, ids: np.ndarray,
                  off_task: tuple[str, ...], classes: int, where: str = "the pool") -> ImageSet:  # fmt: skip
    """The annotated images as a training set: labels 0..classes-1, `classes` for "none"."""
    check_annotations(labels, domains, off_task, classes, where)
    return ImageSet(images, annotator_labels(labels, domains, off_task, classes), domains, ids)


def space_features(images: np.ndarray, model: Any, pre: Any, adapted: "AdaptedSpace | None", batch_size: int = 256,
                   show_bar: bool = False, desc: str = "features") -> np.ndarray:  # fmt: skip
    """Features in a round's space: the backbone's, or combined with the adapted space's
    when the probe ships one. The one way cloud (Oracle) and device embed alike."""
    from ecos_core.embedding.features import embed

    feats = embed(images, model, pre, batch_size, show_bar=show_bar, desc=desc)
    return feats if adapted is None else combined(feats, adapted.embed(images))


def train_adapted_space(labelled: ImageSet, classes: int, width: int = 16, seed: int = 0, train=None) -> AdaptedSpace:  # noqa: ANN001
    """Train the SmallCNN on annotated pool images (labels 0..classes, `classes` = none)."""
    from ecos_core.training.train import TrainConfig, train_classifier

    cfg = (train or TrainConfig()).model_copy(update={"num_classes": classes + 1, "width": width})
    net = train_classifier(labelled, cfg, seed).model.net
    weights = {k: v.detach().cpu().numpy() for k, v in net.state_dict().items()}
    return AdaptedSpace(weights, width, classes + 1)


def combined(backbone_features: np.ndarray, adapted_features: np.ndarray) -> np.ndarray:
    """Unit rows of [l2n(backbone) · √½, l2n(adapted) · √½]: cosine = mean of the two cosines."""
    b, a = np.asarray(backbone_features, np.float32), np.asarray(adapted_features, np.float32)
    if len(b) != len(a):
        raise ValueError(f"backbone and adapted features must have the same rows, got {len(b)} and {len(a)}")
    half = np.float32(np.sqrt(0.5))
    return np.hstack([l2_normalize(b) * half, l2_normalize(a) * half]).astype(np.float32)
