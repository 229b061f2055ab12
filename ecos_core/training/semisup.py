"""FixMatch-style semi-supervised training: a few labelled proxy images plus an unlabelled pool.

Per step (Sohn et al., 2020): supervised cross-entropy on weakly augmented labelled
images, plus lambda_u x cross-entropy of the strongly augmented unlabelled images
against the model's own confident (max prob >= threshold) predictions on their weak
views. The fraction of unlabelled images above the threshold (the mask rate) is
recorded every step: it is the first thing to look at when FixMatch does not help.

Augmentations are plain torch on the batch (no torchvision in the client env). Like
ecos_core.training.train, this knows nothing of Prefect or the store.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from ecos_core.training.train import Classifier, TrainConfig, TrainResult, make_trainer, random_shift, seeded_loader, to_tensor
from ecos_core.types import ImageSet


class FixMatchConfig(BaseModel):
    """FixMatch knobs; optimiser, steps, model size and the weak shift come from `train`.

    Weak augmentation = random_shift(train.max_shift). Strong augmentation =
    random_shift(strong_shift) + per-sample brightness/contrast jitter + one cutout square.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    train: TrainConfig = TrainConfig()
    threshold: float = Field(0.95, ge=0, le=1)  # confidence a pseudo label needs to count
    lambda_u: float = Field(1.0, ge=0)  # weight of the unlabelled loss
    mu: int = Field(3, ge=1)  # unlabelled images per labelled image in a step
    strong_shift: float = Field(0.2, ge=0, le=0.5)  # fraction of the side, like train.max_shift
    brightness: float = Field(0.4, ge=0, le=1)  # intensity factor drawn from 1 ± brightness
    contrast: float = Field(0.4, ge=0, le=1)  # contrast factor drawn from 1 ± contrast
    cutout: float = Field(0.4, ge=0, le=1)  # side of the erased square, fraction of the image side


def strong_augment(x: torch.Tensor, cfg: FixMatchConfig) -> torch.Tensor:
    """Shift + brightness/contrast jitter + cutout, per sample, on a [-1, 1] NCHW batch.

    Draws from torch's global RNG (seeded by train_fixmatch), like random_shift.
    """
    n, _, h, w = x.shape
    x = random_shift(x, cfg.strong_shift)
    p = (x + 1) / 2  # jitter in [0, 1] intensity space, where the factors have their usual meaning

    def factor(amount: float) -> torch.Tensor:
        return 1 + (torch.rand(n, 1, 1, 1, device=x.device) * 2 - 1) * amount

    p = p * factor(cfg.brightness)
    mean = p.mean(dim=(1, 2, 3), keepdim=True)
    p = ((p - mean) * factor(cfg.contrast) + mean).clamp(0, 1)
    if cfg.cutout > 0:
        # one square per sample, centre anywhere (may be clipped at the border), filled with mid-grey
        side_h, side_w = max(1, round(cfg.cutout * h)), max(1, round(cfg.cutout * w))
        cy = torch.randint(0, h, (n, 1, 1), device=x.device)
        cx = torch.randint(0, w, (n, 1, 1), device=x.device)
        ys = torch.arange(h, device=x.device).view(1, h, 1)
        xs = torch.arange(w, device=x.device).view(1, 1, w)
        y0, x0 = cy - side_h // 2, cx - side_w // 2
        hole = (ys >= y0) & (ys < y0 + side_h) & (xs >= x0) & (xs < x0 + side_w)
        p = torch.where(hole.unsqueeze(1), torch.full_like(p, 0.5), p)
    return p * 2 - 1


class FixMatch(Classifier):
    """The SmallCNN classifier of ecos_core.training.train, trained with the FixMatch loss.

    Batches from the DataLoader are labelled; each step draws mu x batch unlabelled images
    with its own seeded generator. The unlabelled pool stays uint8 on the CPU and only
    the drawn batch is converted and moved to the model's device.
    """

    def __init__(self, cfg: FixMatchConfig, total_steps: int, unlabeled: np.ndarray, seed: int = 0) -> None:
        super().__init__(cfg.train, total_steps)
        self.fm = cfg
        self.unlabeled = unlabeled
        self.generator = torch.Generator().manual_seed(seed)
        self.last_mask_rate = float("nan")
        self.mask_rates: list[float] = []  # one per step, for plots and diagnosis

    def _unlabeled_batch(self, size: int) -> torch.Tensor:
        idx = torch.randint(len(self.unlabeled), (size,), generator=self.generator).numpy()
        return to_tensor(self.unlabeled[idx]).to(self.device)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
        x, y = batch
        u = self._unlabeled_batch(self.fm.mu * len(x))
        with torch.no_grad():
            probs = F.softmax(self(random_shift(u, self.cfg.max_shift)), dim=1)
            confidence, pseudo = probs.max(dim=1)
            mask = (confidence >= self.fm.threshold).float()
        # labelled and strong views in one forward pass, so BatchNorm sees one mixed batch
        logits = self(torch.cat([random_shift(x, self.cfg.max_shift), strong_augment(u, self.fm)]))
        loss_x = F.cross_entropy(logits[: len(x)], y)
        loss_u = (F.cross_entropy(logits[len(x) :], pseudo, reduction="none") * mask).mean()
        loss = loss_x + self.fm.lambda_u * loss_u
        self.last_loss, self.last_mask_rate = float(loss.detach()), float(mask.mean())
        self.mask_rates.append(self.last_mask_rate)
        self.log_dict({"loss_x": loss_x.detach(), "loss_u": loss_u.detach(), "mask_rate": mask.mean()}, prog_bar=True)
        return loss


@dataclass(frozen=True)
class FixMatchResult(TrainResult):
    mask_rate: float  # fraction of the last step's unlabelled batch above the threshold


def _check_inputs(labeled: ImageSet, unlabeled_images: np.ndarray, cfg: FixMatchConfig) -> None:
    if len(labeled) == 0:
        raise ValueError("labeled: cannot train FixMatch on an empty labelled set")
    k = cfg.train.num_classes
    if labeled.labels.min() < 0 or labeled.labels.max() >= k:
        raise ValueError(f"labeled: labels must lie in 0..{k - 1}, got {labeled.labels.min()}..{labeled.labels.max()}")
    u = unlabeled_images
    if not isinstance(u, np.ndarray) or u.dtype != np.uint8 or u.ndim != 4 or u.shape[-1] != 3:
        got = f"{u.dtype} {u.shape}" if isinstance(u, np.ndarray) else type(u).__name__
        raise ValueError(f"unlabeled_images: must be a uint8 (N, H, W, 3) array, got {got}")
    if len(u) == 0:
        raise ValueError("unlabeled_images: empty; use ecos_core.training.train.train_classifier for labelled-only training")
    if u.shape[1:] != labeled.images.shape[1:]:
        raise ValueError(f"unlabeled_images: shape {u.shape[1:]} differs from the labelled {labeled.images.shape[1:]}")


def train_fixmatch(
    labeled: ImageSet, unlabeled_images: np.ndarray, cfg: FixMatchConfig | None = None, seed: int = 0
) -> FixMatchResult:
    """Fit the small CNN with FixMatch; seeded and deterministic (single device).

    Steps follow train_classifier: min(train.max_steps, train.max_epochs x labelled
    batches per epoch), so a tiny labelled set needs a large max_epochs.
    """
    cfg = cfg if cfg is not None else FixMatchConfig()
    _check_inputs(labeled, unlabeled_images, cfg)
    tc = cfg.train
    L.seed_everything(seed, workers=True, verbose=False)
    labels = torch.from_numpy(labeled.labels.astype(np.int64))
    loader, steps = seeded_loader((to_tensor(labeled.images), labels), tc, seed)
    # a different stream from the loader's shuffle, still fixed by the seed
    model = FixMatch(cfg, steps, unlabeled_images, seed=seed + 1)
    trainer = make_trainer(tc, steps)
    start = time.perf_counter()
    trainer.fit(model, loader)
    return FixMatchResult(
        model, trainer.current_epoch, int(trainer.global_step), model.last_loss, time.perf_counter() - start,
        model.last_mask_rate,
    )  # fmt: skip
