"""`ecos`: the command line. Heavy imports happen inside each command, so the edge
client (`ecos client respond`) never loads Prefect."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

# Before Prefect is imported anywhere: no telemetry from the embedded (serverless) mode.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

app = typer.Typer(help="ECOS: train edge models on a proxy set picked from a public pool, without the client's data.",
                  no_args_is_help=True, add_completion=False)  # fmt: skip
client_app = typer.Typer(help="Edge-client commands: run on the device; need no Prefect and no cloud credentials.",
                         no_args_is_help=True)  # fmt: skip
data_app = typer.Typer(help="The built-in multi-domain digits pool and user datasets.", no_args_is_help=True)
app.add_typer(client_app, name="client")
app.add_typer(data_app, name="data")
clients_app = typer.Typer(help="Cloud side: enroll devices (a per-client signing key and privacy budget).", no_args_is_help=True)
app.add_typer(clients_app, name="clients")
from ecos_cli.infra import infra_app  # noqa: E402 (light: imports infra lazily)

app.add_typer(infra_app, name="infra")
from ecos_cli.bench import bench_app  # noqa: E402
from ecos_cli.privacy import privacy_app  # noqa: E402

app.add_typer(bench_app, name="bench")
app.add_typer(privacy_app, name="privacy")
from ecos_cli.pool import DaskAddressOpt, WorkersOpt, pool_app  # noqa: E402
from ecos_cli.backbone import (BACKBONE_FLAGS, BackboneOpt, FeatureDimOpt, FeatureSpaceOpt, ModelShaOpt,  # noqa: E402
                               ModelUrlOpt, ClassBalanceOpt, backbone_overrides, name_user_model_flags)

app.add_typer(pool_app, name="pool")
PoolOpt = typer.Option(None, "--pool", help="Your pool: an ingested pool's URL, a manifest or an image folder "
                                            "(default: the built-in pool).")  # fmt: skip
labels_app = typer.Typer(help="Selective manual labeling: export a round's proxy set to annotators, import and train.",
                         no_args_is_help=True)  # fmt: skip
app.add_typer(labels_app, name="labels")

StoreOpt = typer.Option(None, "--store", help="Artifact store URL (folder or s3://bucket/prefix). Default: $ECOS_STORE or ./ecos-store.")

FLAGS = {"data.client_domain": "--client-domain", "data.regime": "--regime", "sampling.budget": "--budget", "index.k": "--k",
         "sigma": "--sigma", "seed": "--seed", "clients": "--clients", "data.pool": "--pool", "data.client": "--client-data",
         "dask.address": "--dask-address", "dask.workers": "--workers", "sampling.class_balance": "--class-balance",
         **BACKBONE_FLAGS}  # fmt: skip


def _round_config(config: Optional[Path], overrides: dict):  # noqa: ANN202
    """The file's settings, then the flags given; errors name the flag or the file and key."""
    from ecos_cli.config_errors import read_config_file, validate
    from ecos_core.config import RoundConfig

    base = read_config_file(config) if config else {}
    given = {}
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = base
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
        given[dotted] = FLAGS.get(dotted, dotted)
    name_user_model_flags(given)
    return validate(RoundConfig, base, given, f"--config {config}" if config else "the flags")


def _store_url(store: Optional[str]) -> str:
    from ecos_core.settings import Settings

    return store or Settings().store


def _open_store(store: Optional[str], check: bool = False):  # noqa: ANN202
    """The store, without the pipeline's heavy imports; check=True fails at once, in one
    line, when it cannot be written (before Prefect and the data load start)."""
    from ecos_core.settings import Settings
    from ecos_core.storage.store import Store

    url = _store_url(store)
    opened = Store(url, Settings().storage_options(url))
    if check:
        opened.check()
    return opened


@app.command()
def run(
    client_domain: Optional[str] = typer.Option(None, help="The client's domain (default mnistm)."),
    regime: Optional[str] = typer.Option(None, help="id+ood (rest of the client's domain in the pool) or ood."),
    budget: Optional[int] = typer.Option(None, help="Proxy-set size B (default 1000)."),
    k: Optional[int] = typer.Option(None, "--k", help="Number of centroids K (default 100)."),
    sigma: Optional[float] = typer.Option(None, help="Noise std of each coverage score (default 6.1 → ε≈0.58)."),
    seed: Optional[int] = typer.Option(None, help="Seed of every random step (default 0)."),
    clients: Optional[int] = typer.Option(None, help="Number of simulated clients (default 1)."),
    config: Optional[Path] = typer.Option(None, help="RoundConfig as JSON; flags override it."),
    store: Optional[str] = StoreOpt,
    round_id: Optional[str] = typer.Option(None, help="Round id (default: time-based)."),
    pool: Optional[str] = PoolOpt,
    client_data: Optional[str] = typer.Option(None, help="The simulated client's own dataset (builtin:<d>, folder, "
                                                         "manifest), split into its train and test."),  # fmt: skip
    dask_address: Optional[str] = DaskAddressOpt,
    workers: Optional[int] = WorkersOpt,
    backbone: Optional[str] = BackboneOpt, model_url: Optional[str] = ModelUrlOpt,
    model_sha256: Optional[str] = ModelShaOpt, feature_dim: Optional[int] = FeatureDimOpt,
    feature_space: Optional[str] = FeatureSpaceOpt,
    class_balance: Optional[bool] = ClassBalanceOpt,
) -> None:
    """The main job: one full ECOS round on the built-in pool with a simulated client process;
    prints ECOS vs Random, K-Center, Oracle and Local, and writes the report to the store."""
    cfg = _round_config(config, {"data.client_domain": client_domain, "data.regime": regime, "sampling.budget": budget,
                                 "index.k": k, "sigma": sigma, "seed": seed,
                                 "clients": [f"client-{i}" for i in range(clients)] if clients is not None else None,
                                 "data.pool": pool, "data.client": client_data, "dask.address": dask_address,
                                 "dask.workers": workers, "sampling.class_balance": class_balance,
                                 **backbone_overrides(backbone, model_url, model_sha256, feature_dim, feature_space)})  # fmt: skip
    opened = _open_store(store, check=True)  # before the heavy imports: a bad store fails at once
    from ecos_cli.interrupt import stop_cleanly
    from ecos_core.storage import layout
    from ecos_core.settings import Settings
    from flows.round_flow import new_round_id, round_flow

    round_id = round_id or new_round_id()
    marker = layout.round_key(round_id, "INTERRUPTED.json")
    args = sys.argv[1:]
    kept = [a for i, a in enumerate(args) if not a.startswith("--round-id") and (i == 0 or args[i - 1] != "--round-id")]
    again = " ".join([*kept, "--round-id", round_id])

    def interrupted() -> str:
        from datetime import datetime, timezone

        opened.write_json(marker, {"interrupted_at": datetime.now(timezone.utc).isoformat(), "resume": f"ecos {again}"})
        return f"interrupted: round {round_id} stopped; its finished steps are kept. Resume it with: ecos {again}"

    with stop_cleanly(interrupted):
        out = round_flow(cfg, opened.url, round_id, True, Settings().device_dir)
    opened.delete(marker)  # a resumed round that finished is no longer interrupted
    _print_report(out)


def _print_report(out: dict) -> None:
    import pandas as pd

    from ecos_core.report import markdown_table, summary

    columns = ["client_id", "method", "accuracy", "client_domain_share", "distractor_share", "epsilon", "bytes_down", "bytes_up"]
    results = pd.DataFrame(out["results"])[columns]  # the report has every column (times, epochs, loss)
    eps = results.loc[results["method"] == "ecos", "epsilon"]
    typer.echo("\n" + summary(results, float(eps.iloc[0]) if len(eps) else float("nan")))
    typer.echo("\nResults (client test accuracy, privacy ε, bytes to/from the client):\n")
    typer.echo(markdown_table(results))
    if out["domains"]:
        typer.echo("\nEvery domain alone (Local accuracy):\n")
        typer.echo(markdown_table(pd.DataFrame(out["domains"])[["domain", "accuracy", "epochs", "final_loss", "train_s"]]))
    typer.echo("\nTime per step (s):\n")
    typer.echo(markdown_table(pd.DataFrame({"step": list(out["steps"]), "seconds": list(out["steps"].values())}), ".1f"))
    typer.echo(f"\nReport: {out['report_uri']}")


@app.command()
def index(
    config: Optional[Path] = typer.Option(None, help="RoundConfig as JSON (its data and index parts are used)."),
    store: Optional[str] = StoreOpt,
    pool: Optional[str] = PoolOpt,
    k: Optional[int] = typer.Option(None, "--k", help="Number of centroids K (default 100)."),
    dask_address: Optional[str] = DaskAddressOpt,
    workers: Optional[int] = WorkersOpt,
    backbone: Optional[str] = BackboneOpt, model_url: Optional[str] = ModelUrlOpt,
    model_sha256: Optional[str] = ModelShaOpt, feature_dim: Optional[int] = FeatureDimOpt,
    feature_space: Optional[str] = FeatureSpaceOpt,
) -> None:
    """Run only the index flow: pool features (cached by content, per backbone) and faiss KMeans."""
    cfg = _round_config(config, {"data.pool": pool, "index.k": k, "dask.address": dask_address, "dask.workers": workers,
                                 **backbone_overrides(backbone, model_url, model_sha256, feature_dim, feature_space)})  # fmt: skip
    url = _open_store(store, check=True).url  # before the heavy imports: a bad store fails at once
    from flows.index_flow import index_flow

    out = index_flow(cfg, url)
    typer.echo(json.dumps({**out["index"], "adapted_space": out["features"].get("adapted")}, indent=1))


from ecos_cli.client import client_respond, load_local as _load_local  # noqa: E402 (light: typer only)

client_app.command("respond")(client_respond)


@app.command()
def watch(
    interval: float = typer.Option(2.0, help="Seconds between sweeps."),
    once: bool = typer.Option(False, help="One sweep, then exit."),
    heartbeat: Optional[Path] = typer.Option(None, help="A file rewritten after every sweep (pid, sweeps, errors)."),
) -> None:
    """Judge the uploads of suspended rounds as they land; resume a round once its clients
    have all answered (or its deadline passed). Needs PREFECT_API_URL and the store's settings."""
    from flows.watcher import watch as run_watcher

    run_watcher(interval, once, heartbeat)


@clients_app.command("invitation")
def clients_invitation(
    client_id: str = typer.Argument(..., help="The invited client."),
    round_id: str = typer.Option(..., "--round", help="The round."),
    out: Path = typer.Option(..., help="Where to write the invitation for delivery to the device."),
    wait: float = typer.Option(0.0, help="Seconds to wait for the round to publish it."),
    store: Optional[str] = StoreOpt,
) -> None:
    """Fetch a client's invitation (pre-signed URLs, probe MAC) from the store, for delivery."""
    import time

    from ecos_core.storage import layout

    st, key, end = _open_store(store), layout.invitation(round_id, client_id), time.monotonic() + wait
    while not st.exists(key):
        if time.monotonic() >= end:
            raise FileNotFoundError(f"{st.uri(key)}: no invitation (is the round published, the client invited?)")
        time.sleep(1.0)
        st.invalidate()
    from ecos_core.storage.private_file import write_private

    write_private(out, st.read_bytes(key, 1 << 16))  # 0600: its pre-signed URL lets the holder answer for the client
    typer.echo(f"invitation for {client_id}, round {round_id}: {out}")


@clients_app.command("enroll")
def clients_enroll(
    client_id: str = typer.Argument(..., help="The device's client id."),
    out: Path = typer.Option(..., help="Where to write the device's enrollment file (hand it to the device securely)."),
    budget: float = typer.Option(3.0, help="The device's lifetime ε budget at δ=1e-5."),
    rotate: bool = typer.Option(False, help="Issue a new key for an already enrolled client."),
    store: Optional[str] = StoreOpt,
) -> None:
    """Register a client: its key goes to the cloud registry and to the device's file (mode 600)."""
    from ecos_core.exchange.auth import enroll, save_enrollment

    save_enrollment(enroll(_open_store(store), client_id, budget, rotate), out)
    typer.echo(f"enrolled {client_id} (ε budget {budget}); device file: {out}")


@clients_app.command("list")
def clients_list(store: Optional[str] = StoreOpt) -> None:
    """The enrolled clients."""
    from ecos_core.exchange.auth import enrolled_clients

    for client_id in enrolled_clients(_open_store(store)):
        typer.echo(client_id)


@data_app.command("list")
def data_list() -> None:
    """The built-in domains and their sizes (builds their cache the first time)."""
    from ecos_core.data.builtin import BUILTIN_DOMAINS, DISTRACTOR_DOMAINS, load_domain

    for name in BUILTIN_DOMAINS:
        part = load_domain(name)
        kind = "distractor" if name in DISTRACTOR_DOMAINS else "digits"
        typer.echo(f"{name:10s} {len(part):6d} samples  {kind}")


@data_app.command("check")
def data_check(spec: str = typer.Argument(..., help="An image folder, a manifest, or builtin:<domain>.")) -> None:
    """Load a dataset the way the pipeline would and print its size, classes and domains."""
    from ecos_core.data.split import domain_counts

    part = _load_local(spec)
    typer.echo(f"{spec}: {len(part)} images {part.images.shape[1:]}, labels {sorted(set(part.labels.tolist()))}, "
               f"domains {domain_counts(part)}")  # fmt: skip


@data_app.command("export")
def data_export(
    spec: str = typer.Argument(..., help="What to export: builtin:<domain>, a manifest or a folder."),
    out: Path = typer.Option(..., help="Image folder to write (root/<label>/<n>.png)."),
    max_samples: Optional[int] = typer.Option(None, help="A seeded subset of this size."),
    seed: int = typer.Option(0, help="Seed of the subset."),
) -> None:
    """Write a dataset as an image folder, e.g. the private data of a simulated device."""
    from ecos_core.data.user import load_dataset, save_image_folder

    n = save_image_folder(load_dataset(spec, max_samples=max_samples, seed=seed), out)
    typer.echo(f"{n} images written under {out}")


RoundOpt = typer.Option(..., "--round", help="The round.")
ClientOpt = typer.Option("client-0", "--client", help="The client whose proxy set it is.")
MethodOpt = typer.Option("ecos", "--method", help="The sampler that picked it (ecos, random, ...).")


@labels_app.command("export")
def labels_export(
    out: str = typer.Argument(..., help="Annotation file to write (.csv or .json, any fsspec URL)."),
    round_id: str = RoundOpt, client_id: str = ClientOpt, method: str = MethodOpt,
    images: Optional[str] = typer.Option(None, help="Also write each image as <id>.png here; the file gets their URIs."),
    store: Optional[str] = StoreOpt,
) -> None:
    """One row per selected sample: sample_id, image_uri, label (empty, for the annotators)."""
    from tasks.annotation import export_selection

    n = export_selection(_store_url(store), round_id, client_id, method, out, images)
    typer.echo(f"{n} samples of {client_id}/{method} (round {round_id}) exported to {out}")


@labels_app.command("import")
def labels_import(
    path: str = typer.Argument(..., help="The annotators' file (.csv or .json) with sample_id and label."),
    round_id: str = RoundOpt, client_id: str = ClientOpt, method: str = MethodOpt,
    store: Optional[str] = StoreOpt,
) -> None:
    """Validate the labels against the exported selection and store them; nothing is stored if any row is wrong."""
    import numpy as np

    from tasks.annotation import import_selection_labels

    labels = import_selection_labels(_store_url(store), round_id, client_id, method, path)
    typer.echo(f"{len(labels)} labels imported for {client_id}/{method} (round {round_id}); "
               f"classes {dict(sorted(zip(*(v.tolist() for v in np.unique(labels, return_counts=True)))))}")  # fmt: skip


@labels_app.command("train")
def labels_train(
    round_id: str = RoundOpt, client_id: str = ClientOpt, method: str = MethodOpt, store: Optional[str] = StoreOpt,
) -> None:
    """Train on the selection with the imported labels; prints the accuracy on the client's test split."""
    from tasks.annotation import train_on_annotations

    row = train_on_annotations(_store_url(store), round_id, client_id, method)
    typer.echo(f"{row['method']}: accuracy {row['accuracy']:.3f} on {row['proxy_size']} annotated samples "
               f"(agreement with the pool's ground truth {row['label_agreement']:.3f}); model {row['model_key']}")


def main() -> None:
    try:
        app()
    except (ValueError, OSError, TimeoutError, RuntimeError, KeyError) as err:  # user errors: one clear line, no traceback
        typer.echo(f"error: {str(err).strip(chr(34) + chr(39)) if isinstance(err, KeyError) else err}", err=True)
        sys.exit(2)
