"""Throughput of each backbone on this machine, and what each costs on the wire.

    .venv/bin/python benchmarks/backbone_speed.py [--images 2048] [--repeats 5] [--threads 2] [--size 64]
        [--onnx] [--out benchmarks/results/backbones/speed.md]

Embeds the same seeded batch of 28×28 built-in images (mnistm) through `ecos_core.embedding.features.embed`,
exactly as the index and the devices do (preprocessing included), once to warm up and then
`--repeats` times, the backbones' passes interleaved; reports the median images per second (and min/max), the probe's bytes at
K=100 (probe.json + centroids.npy), and MACs per image. `--onnx` also exports the MobileNetV2
trunk to ONNX (torch.onnx.export, needs the `onnx` package) and runs it as a user model
(`--backbone onnx`), reporting how far its features are from torch's.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import typer

from ecos_core.embedding.backbones import load_backbone, resolve_spec
from ecos_core.embedding.backbones.common import file_sha256
from ecos_core.benchmark.grid import BACKBONE_MACS_224
from ecos_core.data.builtin import load_domain
from ecos_core.embedding.feature_space import BackboneSpec, Preprocessing
from ecos_core.embedding.features import embed
from ecos_core.exchange.protocol import encode_probe

K = 100


def probe_bytes(spec: BackboneSpec, k: int = K) -> int:
    _, probe_json, npy = encode_probe("bench-round", np.zeros((k, spec.feature_dim), np.float32), spec, 6.1, 1e-5,
                                      datetime(2030, 1, 1, tzinfo=UTC), np.zeros(k))  # fmt: skip
    return len(probe_json) + len(npy)


def time_embed(models: dict[str, tuple[torch.nn.Module, BackboneSpec]], images: np.ndarray, repeats: int,
               batch: int) -> dict[str, list[float]]:  # fmt: skip
    """Images per second of each model, its passes interleaved with the others' so that a
    change in the machine's load hits every backbone alike."""
    for model, spec in models.values():
        embed(images[:batch], model, spec.preprocessing, batch, show_bar=False)  # warm-up (oneDNN picks its kernels)
    rates: dict[str, list[float]] = {label: [] for label in models}
    for _ in range(repeats):
        for label, (model, spec) in models.items():
            start = time.perf_counter()
            embed(images, model, spec.preprocessing, batch, show_bar=False)
            rates[label].append(len(images) / (time.perf_counter() - start))
    return rates


def export_mobilenet_onnx(folder: Path, size: int) -> Path:
    from ecos_core.embedding.backbones.mobilenet_v2 import load_mobilenet_v2

    net, _ = load_mobilenet_v2()
    trunk = torch.nn.Sequential(net.features, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    path = folder / "mobilenet_v2.onnx"
    torch.onnx.export(trunk, (torch.zeros(2, 3, size, size),), str(path), dynamo=False, input_names=["images"],
                      output_names=["features"], dynamic_axes={"images": {0: "n"}, "features": {0: "n"}})  # fmt: skip
    return path


def main(
    images: int = typer.Option(2048, help="Images per timed pass."),
    repeats: int = typer.Option(5, help="Timed passes per backbone (the median is reported)."),
    threads: int = typer.Option(2, help="torch (and onnxruntime) threads."),
    size: int = typer.Option(64, help="Input side in pixels (preprocessing.size)."),
    batch: int = typer.Option(128, help="Batch size (index.batch_size)."),
    onnx: bool = typer.Option(False, "--onnx", help="Also time MobileNetV2 exported to ONNX, as a user model."),
    out: Optional[Path] = typer.Option(None, help="Also write the table (markdown) here."),
) -> None:
    torch.set_num_threads(threads)
    data = load_domain("mnistm", max_samples=images, seed=0).images
    pre = Preprocessing(size=size)
    specs = {name: resolve_spec(name, pre) for name in ("mobilenet_v2", "efficientnet_lite0")}
    reference = None
    with tempfile.TemporaryDirectory(prefix="ecos-onnx-") as tmp:
        if onnx:
            path = export_mobilenet_onnx(Path(tmp), size)
            specs["onnx (mobilenet_v2 export)"] = resolve_spec("onnx", pre, str(path), file_sha256(path))
        models = {label: (load_backbone(spec)[0], spec) for label, spec in specs.items()}
        timed, rows = time_embed(models, data, repeats, batch), []
        for label, (model, spec) in models.items():
            rates = timed[label]
            feats = embed(data[:256], model, spec.preprocessing, batch, show_bar=False)
            if label == "mobilenet_v2":
                reference = feats
            gap = float(np.abs(feats - reference).max()) if label.startswith("onnx") and reference is not None else None
            macs = BACKBONE_MACS_224.get(spec.name, float("nan")) * (size / 224) ** 2
            rows.append((label, statistics.median(rates), min(rates), max(rates), spec.feature_dim, probe_bytes(spec),
                         macs / 1e6, gap))  # fmt: skip
    lines = [f"Backbone throughput: {images} mnistm images (28×28 → {size} px), batch {batch}, {threads} threads, "
             f"median of {repeats} passes (interleaved) after a warm-up; probe at K={K} (probe.json + centroids.npy).", "",
             "| backbone | img/s (median) | min–max | dim | probe bytes | MMAC/img | max |Δ| vs torch |",
             "|:--|--:|--:|--:|--:|--:|--:|"]  # fmt: skip
    for label, med, lo, hi, dim, nbytes, mmacs, gap in rows:
        lines.append(f"| {label} | {med:.0f} | {lo:.0f}–{hi:.0f} | {dim} | {nbytes:,} | {mmacs:.1f} | "
                     f"{'' if gap is None else f'{gap:.1e}'} |")  # fmt: skip
    text = "\n".join(lines)
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")


if __name__ == "__main__":
    typer.run(main)
