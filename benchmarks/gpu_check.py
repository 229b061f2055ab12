"""Check the GPU training path: one training run of the round's model on CUDA and the
same run on CPU, with throughput (training samples per second) and the speed-up.

    .venv/bin/python benchmarks/gpu_check.py [--samples 4000] [--epochs 5]

Run it on a machine of the GPU work pool (or a lent GPU machine). Without CUDA it says
so, runs the CPU part and exits 3, so a misrouted job is visible.
"""

from __future__ import annotations

import time

import torch
import typer

from ecos_core.data.builtin import load_domain
from ecos_core.training.train import TrainConfig, accuracy, train_classifier


def run(accelerator: str, samples: int, epochs: int) -> dict:
    data = load_domain("mnistm", max_samples=samples + 1000, seed=0)
    train, test = data.subset(range(samples)), data.subset(range(samples, samples + 1000))
    cfg = TrainConfig(max_epochs=epochs, max_steps=10**6, batch_size=256, accelerator=accelerator, devices=1)
    start = time.perf_counter()
    result = train_classifier(train, cfg, seed=0)
    seconds = time.perf_counter() - start
    return {"accelerator": accelerator, "seconds": seconds, "samples_per_s": samples * result.epochs / seconds,
            "accuracy": accuracy(result.model.cpu(), test), "final_loss": result.final_loss}  # fmt: skip


def main(samples: int = typer.Option(4000), epochs: int = typer.Option(5)) -> None:
    rows = [run("cpu", samples, epochs)]
    if torch.cuda.is_available():
        print(f"CUDA device: {torch.cuda.get_device_name(0)}")
        rows.insert(0, run("gpu", samples, epochs))
    for r in rows:
        print(f"{r['accelerator']:4s} {r['seconds']:7.1f} s  {r['samples_per_s']:9.0f} samples/s  "
              f"accuracy {r['accuracy']:.3f}  final loss {r['final_loss']:.3f}")  # fmt: skip
    if len(rows) == 2:
        print(f"GPU speed-up: {rows[0]['samples_per_s'] / rows[1]['samples_per_s']:.1f}x")
    else:
        print("no CUDA device here: only the CPU path was checked")
        raise typer.Exit(3)


if __name__ == "__main__":
    typer.run(main)
