"""Scale benchmark: ingest → index → one round's sampling on synthetic pools of growing
size, with wall time, peak RSS of the driver and of every Dask worker, and store bytes.

    .venv/bin/python benchmarks/scale.py --sizes 10000,30000,100000,300000 --out benchmarks/results/scale

Pools are deterministic augmentations of the built-in domains ("augment:<n>", see
ecos_core/pool/synthetic.py). Writes results.csv, scale.md (table + fitted exponents)
and scale.png (log-log). --extraction adds the extraction-vs-bare-forward measurement and
--dask-compare the 1-worker vs 2-worker comparison, at the smallest size.
"""

from __future__ import annotations

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import json  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import psutil  # noqa: E402
import typer  # noqa: E402

from ecos_core.config import IndexConfig, RoundConfig  # noqa: E402
from ecos_core.report import markdown_table  # noqa: E402

STAGES = ("ingest", "index", "sampling")


class PeakRSS:
    """Peak resident memory of this process and of each of its descendants (the Dask
    nannies and workers; Prefect's temporary API server is left out), sampled every
    `interval` seconds."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval, self.peaks, self.server, self._stop = interval, {}, set(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            for proc in [me, *me.children(recursive=True)]:
                try:
                    if proc.pid not in self.peaks and "uvicorn" in " ".join(proc.cmdline()):
                        self.server.add(proc.pid)
                    self.peaks[proc.pid] = max(self.peaks.get(proc.pid, 0), proc.memory_info().rss)
                except psutil.Error:
                    pass
            time.sleep(self.interval)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def driver(self) -> int:
        return self.peaks.get(os.getpid(), 0)

    def worker(self) -> int:
        return max((v for pid, v in self.peaks.items() if pid != os.getpid() and pid not in self.server), default=0)


def folder_bytes(*folders: Path) -> int:
    return sum(p.stat().st_size for f in folders if f.exists() for p in f.rglob("*") if p.is_file())


def client_scores(store_url: str, index_key: str, k: int, sigma: float = 6.1, n_client: int = 1000) -> np.ndarray:
    """Noisy scores of a simulated mnistm client: the pool's mnistm share of each cluster."""
    from tasks.pool_index import read_members

    members = read_members(store_url, index_key)
    counts = np.bincount(members["cluster"][members["domain"] == "mnistm"], minlength=k).astype(float)
    return counts * n_client / max(counts.sum(), 1) + np.random.default_rng(0).normal(0, sigma, k)


def stage(name: str, n: int, work: Path, workers: int | None, shard_size: int, k: int, budget: int) -> dict:
    """One stage at one size, with its own peak RSS: each stage runs in a fresh process, as
    it does when deployed (`ecos pool ingest`, the nightly `ecos index`, the rounds)."""
    pool, store = work / f"pool-{n}", work / f"store-{n}"
    index = IndexConfig(k=k, device="cpu")
    row: dict = {}
    with PeakRSS() as rss:
        start = time.perf_counter()
        if name == "ingest":
            from flows.ingest_flow import ingest_flow

            ingest_flow(f"augment:{n}", str(pool), shard_size=shard_size, workers=workers)
            row.update(ingest_s=time.perf_counter() - start)
        elif name == "index":
            from flows.pool_index_flow import pool_index_flow

            out = pool_index_flow(str(pool), str(store), index, seed=0, workers=workers)
            row.update(index_s=time.perf_counter() - start, features_s=out["features"]["seconds"], index_key=out["index"]["key"],
                       kmeans_s=out["index"]["kmeans_seconds"], assign_s=out["index"]["seconds"] - out["index"]["kmeans_seconds"])  # fmt: skip
        else:
            from tasks.pool_sampling import select_from_pool

            key = json.loads((work / f"row-{n}-{workers}-index.json").read_text())["index_key"]
            cfg = RoundConfig.model_validate({"data": {"pool": str(pool)}, "index": index.model_dump(),
                                              "sampling": {"budget": budget}})  # fmt: skip
            scores = client_scores(str(store), key, k)
            for method in ("ecos", "random", "kcenter"):
                t = time.perf_counter()
                picked = select_from_pool(str(store), key, cfg, method, scores)
                row[f"select_{method}_s"], row[f"select_{method}_n"] = time.perf_counter() - t, len(picked)
            row.update(sampling_s=time.perf_counter() - start, store_bytes=folder_bytes(pool, store))
    return {**row, f"{name}_driver_rss": rss.driver(), f"{name}_worker_rss": rss.worker()}


def in_fresh_process(n: int, work: Path, workers: int | None, shard_size: int, k: int, budget: int) -> dict:
    """Every stage at one size, each in a new Python process, so each peak RSS is its own."""
    import subprocess
    import sys

    work.mkdir(parents=True, exist_ok=True)
    row: dict = {"n": n, "workers": workers}
    for name in STAGES:
        out = work / f"row-{n}-{workers}-{name}.json"
        code = ("import json, sys; from pathlib import Path; sys.path.insert(0, 'benchmarks'); import scale; "
                f"json.dump(scale.stage({name!r}, {n}, Path({str(work)!r}), {workers!r}, {shard_size}, {k}, {budget}), "
                f"open({str(out)!r}, 'w'))")  # fmt: skip
        subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
        row.update(json.loads(out.read_text()))
    return row


def extraction_vs_forward(work: Path, n: int, shards: int = 8) -> dict:
    """Throughput of the extraction path (shard read from the store with its hash check,
    preprocessing, forward) against a bare forward pass over the same, already
    preprocessed batches, in this process, same model, same batch size."""
    import torch

    from ecos_core.embedding.backbones import load_backbone
    from ecos_core.embedding.features import embed, preprocess
    from tasks.pool import read_pool, read_shard

    pool = str(work / f"pool-{n}")
    model, spec = load_backbone()
    names = read_pool(pool)[1].shards()[:shards]
    batch = IndexConfig().batch_size
    read_shard.cache_clear()
    start = time.perf_counter()
    total = sum(len(embed(read_shard(pool, s), model, spec.preprocessing, batch, show_bar=False)) for s in names)
    extract_s = time.perf_counter() - start
    batches = [preprocess(img[i:i + batch], spec.preprocessing) for img in (read_shard(pool, s) for s in names)
               for i in range(0, len(img), batch)]  # fmt: skip
    start = time.perf_counter()
    with torch.inference_mode():
        for x in batches:
            model(x)
    forward_s = time.perf_counter() - start
    return {"images": total, "extract_img_s": total / extract_s, "forward_img_s": total / forward_s,
            "ratio": forward_s / extract_s, "torch_threads": torch.get_num_threads()}  # fmt: skip


def exponents(frame: pd.DataFrame, columns: list[str]) -> dict[str, float]:
    logn = np.log(frame["n"].to_numpy(float))
    return {c: float(np.polyfit(logn, np.log(frame[c].to_numpy(float)), 1)[0]) for c in columns if len(frame) > 1}


def plot(frame: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    for c in ("ingest_s", "features_s", "kmeans_s", "assign_s", "sampling_s"):
        ax_t.loglog(frame["n"], frame[c], "o-", label=c.removesuffix("_s"))
    ax_t.set_xlabel("pool images")
    ax_t.set_ylabel("seconds")
    ax_t.set_title("time per stage")
    ax_t.legend(fontsize=8)
    for stage in STAGES:
        for who, style in (("driver", "o-"), ("worker", "s--")):
            col = f"{stage}_{who}_rss"
            if frame[col].gt(0).any():
                ax_m.semilogx(frame["n"], frame[col] / 2**30, style, label=f"{stage} {who}")
    ax_m.set_xlabel("pool images")
    ax_m.set_ylabel("peak RSS (GiB)")
    ax_m.set_ylim(0, None)  # from zero: flat should look flat
    ax_m.set_title("peak memory per process")
    ax_m.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(
    sizes_: str = typer.Option("10000,30000,100000,300000", "--sizes", help="Pool sizes, comma-separated."),
    out: Path = typer.Option(Path("benchmarks/results/scale"), help="Folder for results.csv, scale.md, scale.png."),
    workers: int = typer.Option(None, help="Dask worker processes (default: one per core)."),
    shard_size: int = typer.Option(1024),
    k: int = typer.Option(100),
    budget: int = typer.Option(1000),
    work: Path = typer.Option(None, help="Where pools and stores go (default: a temporary folder)."),
    keep: bool = typer.Option(False, help="Keep each size's pool and store."),
    extraction: bool = typer.Option(True, help="Measure extraction vs bare forward at the smallest size."),
    dask_compare: bool = typer.Option(True, help="1 worker × 2 torch threads vs 2 workers × 1, at the smallest size."),
    report_only: bool = typer.Option(False, help="Only rewrite scale.md and scale.png from --out's results.csv."),
) -> None:
    sizes = [int(s) for s in sizes_.split(",") if s.strip()]
    out.mkdir(parents=True, exist_ok=True)
    if report_only:
        frame = pd.read_csv(out / "results.csv")
        notes = [(line.split(": ", 1)[0], line.split(": ", 1)[1]) for line in (out / "notes.txt").read_text().splitlines()]
        return report(frame, notes, out, k, budget, shard_size, workers)
    work = work or Path(tempfile.mkdtemp(prefix="ecos-scale-"))
    rows, notes = [], []
    for n in sorted(sizes):
        print(f"scale: {n} images …", flush=True)
        rows.append(in_fresh_process(n, work, workers, shard_size, k, budget))
        pd.DataFrame(rows).to_csv(out / "results.csv", index=False)  # after every size: a long run keeps its rows
        if n == min(sizes) and extraction:
            notes.append(("extraction vs bare forward", extraction_vs_forward(work, n)))
        if n == min(sizes) and dask_compare:
            compare = {}
            for w in (1, 2):
                shutil.rmtree(work / f"store-{n}", ignore_errors=True)
                compare[f"{w} worker(s)"] = in_fresh_process(n, work / f"cmp{w}", w, shard_size, k, budget)["features_s"]
            notes.append(("features seconds by Dask layout", compare))
        if not keep:
            for p in work.glob(f"*-{n}"):
                shutil.rmtree(p, ignore_errors=True)
    frame = pd.DataFrame(rows)
    frame.to_csv(out / "results.csv", index=False)
    notes = [(title, ", ".join(f"{a} {b:.2f}" if isinstance(b, float) else f"{a} {b}" for a, b in data.items()))
             for title, data in notes]  # fmt: skip
    (out / "notes.txt").write_text("".join(f"{title}: {text}\n" for title, text in notes))
    report(frame, notes, out, k, budget, shard_size, workers)


def report(frame: pd.DataFrame, notes: list[tuple[str, str]], out: Path, k: int, budget: int, shard_size: int,
           workers: int | None) -> None:  # fmt: skip
    sizes = frame["n"].tolist()
    time_cols = ["ingest_s", "features_s", "kmeans_s", "assign_s", "index_s", "sampling_s"]
    rss_cols = [f"{s}_{w}_rss" for s in STAGES for w in ("driver", "worker")]
    shown = frame[["n", *time_cols]].copy()
    for c in rss_cols + ["store_bytes"]:
        shown[c.replace("_rss", "_GiB").replace("_bytes", "_GiB")] = frame[c] / 2**30
    lines = ["# Scale benchmark", "", f"Sizes {sorted(sizes)}, k={k}, budget {budget}, shard size {shard_size}, "
             f"Dask workers {workers or 'one per core'}, {os.cpu_count()} cores.", "", markdown_table(shown, ".2f"), "",
             ""]  # fmt: skip
    fits = [("10 k–300 k", frame[frame["n"] <= 300_000])] + ([("all sizes", frame)] if frame["n"].max() > 300_000 else [])
    for span, part in fits:
        lines.append(f"Exponent of time in N (log-log fit over {span}): " + ", ".join(
            f"{c} {e:.2f}" for c, e in exponents(part, time_cols).items()))  # fmt: skip
    lines.append("")
    # the targets compare each size with a tenth of it (300 k vs 30 k) and bound every process at 1 M
    for big in frame["n"]:
        small = frame[frame["n"] == big // 10]
        if len(small):
            last, base = frame[frame["n"] == big].iloc[0], small.iloc[0]
            lines.append(f"Peak RSS at {int(big)} / at {int(big // 10)}: " + ", ".join(
                f"{c} {last[c] / base[c]:.2f}" for c in rss_cols if base[c] > 0))  # fmt: skip
    top = frame.iloc[-1]
    lines += ["", f"Largest peak RSS of any process at {int(top['n'])}: {max(top[c] for c in rss_cols) / 2**30:.2f} GiB"]
    for title, text in notes:
        lines += ["", f"{title}: {text}"]
    (out / "scale.md").write_text("\n".join(lines) + "\n")
    plot(frame, out / "scale.png")
    print("\n".join(lines))


if __name__ == "__main__":
    typer.run(main)
