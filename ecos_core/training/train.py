"""Training the client's model on a proxy set with Lightning (CPU-friendly, accelerator="auto").

The training code knows nothing of Prefect or the store: ImageSets in, model and
figures out.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ecos_core.config import TrainConfig  # noqa: F401 (re-exported)
from ecos_core.types import ImageSet

warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # harmless Lightning/torch 2.13 notice
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
for _name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda", "lightning.fabric"):
    logging.getLogger(_name).setLevel(logging.WARNING)  # no "GPU available"/tips banners per fit


class SmallCNN(nn.Module):
    """Three conv-BN-ReLU-pool blocks (width w, 2w, 4w) for 28×28 RGB inputs.

    One conv per block: on 2 CPU cores a second conv per block costs ~3× the time.
    """

    def __init__(self, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            )  # fmt: skip

        self.features = nn.Sequential(block(3, width), block(width, 2 * width), block(2 * width, 4 * width))
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.3), nn.Linear(4 * width * 3 * 3, 128), nn.ReLU(inplace=True),
            nn.Linear(128, num_classes),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC → float NCHW in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def random_shift(x: torch.Tensor, max_shift: float) -> torch.Tensor:
    """Per-sample random translation: cheap augmentation that small proxy sets need."""
    if max_shift <= 0:
        return x
    n = x.shape[0]
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, :, 2] = (torch.rand(n, 2, device=x.device) * 2 - 1) * 2 * max_shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


class Classifier(L.LightningModule):
    def __init__(self, cfg: TrainConfig, total_steps: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.total_steps = total_steps
        self.net = SmallCNN(cfg.num_classes, cfg.width)
        self.last_loss = float("nan")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(random_shift(x, self.cfg.max_shift)), y)
        self.last_loss = float(loss.detach())
        return loss

    def configure_optimizers(self):  # noqa: ANN201 (Lightning's own union type)
        return adamw_one_cycle(self.parameters(), self.cfg, self.total_steps)


def adamw_one_cycle(params, cfg: TrainConfig, total_steps: int) -> dict:  # noqa: ANN001 (parameter iterator)
    """The optimizer of every model here: AdamW with a one-cycle learning rate per step."""
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total_steps)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def seeded_loader(tensors: tuple[torch.Tensor, ...], cfg: TrainConfig, seed: int) -> tuple[DataLoader, int]:
    """A shuffling loader fixed by `seed`, and the number of optimizer steps to run."""
    data = TensorDataset(*tensors)
    loader = DataLoader(
        data, batch_size=cfg.batch_size, shuffle=True, drop_last=len(data) > cfg.batch_size,
        generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
    return loader, min(cfg.max_steps, cfg.max_epochs * len(loader))


def make_trainer(cfg: TrainConfig, steps: int) -> L.Trainer:
    """A deterministic Lightning Trainer with no logger or checkpoints (the store keeps models).

    On CUDA a few kernels (grid_sample's backward, scatter-adds) have no deterministic
    version: there it warns instead of failing; CPU runs stay bit-for-bit repeatable."""
    on_gpu = cfg.accelerator not in ("cpu",) and torch.cuda.is_available()
    return L.Trainer(
        max_epochs=cfg.max_epochs, max_steps=steps, accelerator=cfg.accelerator, devices=cfg.devices,
        strategy=cfg.strategy, deterministic="warn" if on_gpu else True, logger=False, enable_checkpointing=False,
        enable_model_summary=False, enable_progress_bar=cfg.progress_bar,
    )  # fmt: skip


@dataclass(frozen=True)
class TrainResult:
    model: Classifier
    epochs: int
    steps: int
    final_loss: float
    seconds: float


def train_classifier(train: ImageSet, cfg: TrainConfig = TrainConfig(), seed: int = 0) -> TrainResult:
    """Fit the small CNN on `train` (images + labels); seeded and deterministic."""
    if len(train) == 0:
        raise ValueError("cannot train on an empty proxy set")
    if train.labels.min() < 0 or train.labels.max() >= cfg.num_classes:
        raise ValueError(f"labels must lie in 0..{cfg.num_classes - 1}, got {train.labels.min()}..{train.labels.max()}")
    L.seed_everything(seed, workers=True, verbose=False)
    loader, steps = seeded_loader((to_tensor(train.images), torch.from_numpy(train.labels.astype(np.int64))), cfg, seed)
    model = Classifier(cfg, steps)
    trainer = make_trainer(cfg, steps)
    start = time.perf_counter()
    trainer.fit(model, loader)
    return TrainResult(model, trainer.current_epoch, int(trainer.global_step), model.last_loss, time.perf_counter() - start)


@torch.inference_mode()
def predict(model: nn.Module, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
    model.eval()
    device = next(model.parameters()).device
    out = [
        model(to_tensor(images[i : i + batch_size]).to(device)).argmax(1).cpu().numpy()
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def accuracy(model: nn.Module, test: ImageSet) -> float:
    if len(test) == 0:
        raise ValueError("cannot evaluate on an empty test set")
    return float((predict(model, test.images) == test.labels).mean())
