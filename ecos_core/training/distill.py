"""Adaptive model compression: distil a large cloud teacher into a small client student.

The cloud trains a wide SmallCNN (the teacher) on labelled pool data, then trains a
narrow SmallCNN (the student) to match the teacher's temperature-softened outputs on
the unlabelled proxy set only: no client labels are needed, and the student is small
enough for the edge device. Loss: KL(softmax(t/T) || softmax(s/T)) · T² (Hinton et al.
2015; the T² keeps gradient scale independent of T).
"""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from ecos_core.training.train import (
    SmallCNN,
    TrainConfig,
    TrainResult,
    adamw_one_cycle,
    make_trainer,
    random_shift,
    seeded_loader,
    to_tensor,
    train_classifier,
)
from ecos_core.types import ImageSet

TEACHER_WIDTH = 64


class DistillConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    temperature: float = Field(4.0, gt=0)
    student_width: int = Field(16, ge=4)
    # optimiser/loop settings for the student; train.width is ignored (student_width wins)
    train: TrainConfig = TrainConfig()


TEACHER_CONFIG = TrainConfig(width=TEACHER_WIDTH)
DEFAULT_DISTILL = DistillConfig()


def train_teacher(pool: ImageSet, cfg: TrainConfig = TEACHER_CONFIG, seed: int = 0) -> TrainResult:
    """The cloud's teacher: ecos_core.training.train's SmallCNN at `cfg.width` (64 by default) on labelled pool data."""
    return train_classifier(pool, cfg, seed)


def model_size(module: nn.Module) -> dict[str, int]:
    """Parameter count and their float32 size in bytes (what shipping the weights costs)."""
    params = sum(p.numel() for p in module.parameters())
    return {"params": int(params), "bytes": int(params) * 4}


class Student(L.LightningModule):
    """A SmallCNN trained on teacher soft targets; the teacher is frozen and kept in eval mode."""

    def __init__(self, teacher: nn.Module, cfg: DistillConfig, total_steps: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.total_steps = total_steps
        self.net = SmallCNN(cfg.train.num_classes, cfg.student_width)
        self.teacher = teacher  # a submodule so Lightning moves it to the student's device
        self.teacher.requires_grad_(False)
        self.last_loss = float("nan")

    def train(self, mode: bool = True) -> Student:
        # Lightning calls .train() on the whole module; the teacher's BatchNorm statistics
        # and dropout must stay frozen or its targets drift and turn noisy.
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor], _: int) -> torch.Tensor:
        # the same shifted batch goes to both nets, so teacher targets are computed on the fly
        x = random_shift(batch[0], self.cfg.train.max_shift)
        t = self.cfg.temperature
        with torch.no_grad():
            target = F.log_softmax(self.teacher(x) / t, dim=1)
        student = F.log_softmax(self.net(x) / t, dim=1)
        loss = F.kl_div(student, target, log_target=True, reduction="batchmean") * (t * t)
        self.last_loss = float(loss.detach())
        return loss

    def configure_optimizers(self):  # returns Lightning's own optimizer/scheduler dict
        return adamw_one_cycle(self.net.parameters(), self.cfg.train, self.total_steps)


@dataclass(frozen=True)
class DistillResult:
    # the bare SmallCNN (no teacher inside, so its state_dict is what the client downloads);
    # ecos_core.training.train.accuracy/predict work on it
    student: SmallCNN
    epochs: int
    steps: int
    final_loss: float
    seconds: float
    teacher_size: dict[str, int]
    student_size: dict[str, int]


@torch.no_grad()
def _teacher_classes(teacher: nn.Module, probe: torch.Tensor) -> int:
    teacher.eval()
    out = teacher(probe)
    if out.ndim != 2:
        raise ValueError(f"teacher must return (N, classes) logits, got shape {tuple(out.shape)}")
    return int(out.shape[1])


def distill(
    teacher: nn.Module, images: np.ndarray, cfg: DistillConfig = DEFAULT_DISTILL, seed: int = 0
) -> DistillResult:
    """Train a student on unlabelled uint8 (N, H, W, 3) `images` to mimic `teacher`; seeded, deterministic.

    The caller's teacher is not modified: a frozen copy is used.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    if len(images) == 0:
        raise ValueError("cannot distil on an empty proxy set")
    # a copy: moving, freezing and eval() must not leak into the caller's model
    teacher = copy.deepcopy(teacher).cpu()
    classes = _teacher_classes(teacher, to_tensor(images[:2]))
    if classes != cfg.train.num_classes:
        raise ValueError(f"teacher outputs {classes} classes, cfg.train.num_classes is {cfg.train.num_classes}")
    tc = cfg.train
    L.seed_everything(seed, workers=True, verbose=False)
    loader, steps = seeded_loader((to_tensor(images),), tc, seed)
    student = Student(teacher, cfg, steps)
    trainer = make_trainer(tc, steps)
    start = time.perf_counter()
    with warnings.catch_warnings():
        # the frozen teacher is in eval mode on purpose (see Student.train)
        warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
        trainer.fit(student, loader)
    seconds = time.perf_counter() - start
    return DistillResult(
        student=student.net.eval(), epochs=trainer.current_epoch, steps=int(trainer.global_step), final_loss=student.last_loss,
        seconds=seconds, teacher_size=model_size(teacher), student_size=model_size(student.net),
    )  # fmt: skip
