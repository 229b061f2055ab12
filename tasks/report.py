"""The round's report: results table, step times, per-domain check, plot; in the store
and as Prefect artifacts."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from ecos_core.storage import layout
from ecos_core.config import RoundConfig
from ecos_core.data.builtin import DISTRACTOR_DOMAINS
from ecos_core.report import METHODS, domain_mix, markdown_table, results_plot, summary
from tasks import catalog
from tasks.common import STORAGE_RETRIES
from tasks.simulation import client_shard
from tasks.uploads import watcher_silence

# the results table stays readable at a laptop's width: what people compare first, then the costs
COLUMNS = ["client_id", "method", "accuracy", "epsilon", "proxy_size", "client_domain_share", "distractor_share"]
COST_COLUMNS = ["client_id", "method", "unspent", "bytes_down", "bytes_up", "select_s", "train_s", "epochs", "final_loss"]


def results_frame(cfg: RoundConfig, runs: list[dict], selections: list[dict], probe: dict, responses: dict) -> pd.DataFrame:
    """One row per (client, method), with the privacy and communication cost of each."""
    from ecos_core.privacy.accounting import gaussian_epsilon  # here: dp-accounting (scipy) only when a report is written

    eps = gaussian_epsilon(cfg.sigma, cfg.delta)
    select_s = {(s["client_id"], s["method"]): s["seconds"] for s in selections}
    unspent = {(s["client_id"], s["method"]): s["unspent"] for s in selections}
    rows = []
    for run in runs:
        domains = pd.Series(run["domains"])
        client, method = run["client_id"], run["method"]
        up = responses["accepted"].get(client, {}).get("bytes", 0)
        cost = {  # (ε, bytes down, bytes up) of what the method needs from the client
            "ecos": (eps, probe["bytes"], up),
            # the oracle needs the client's true features: every local sample's d floats, no privacy
            "oracle": (float("inf"), 0, 4 * probe["dim"] * len(client_shard(cfg, client))),
            "local": (0.0, 0, 0),
        }.get(method, (0.0, 0, 0))
        rows.append({**run, "epsilon": cost[0], "bytes_down": cost[1], "bytes_up": cost[2],
                     "client_domain_share": float((domains == cfg.data.client_domain).mean()),
                     "distractor_share": float(domains.isin(DISTRACTOR_DOMAINS).mean()),
                     "select_s": select_s.get((client, method), 0.0), "unspent": unspent.get((client, method), 0)})  # fmt: skip
    return pd.DataFrame(rows)[list(dict.fromkeys(COLUMNS + COST_COLUMNS))]


def artifact_key(round_id: str, what: str) -> str:
    """Artifacts keyed by round (Prefect keys: lowercase letters, digits, dashes)."""
    return re.sub(r"[^a-z0-9-]+", "-", f"ecos-{round_id}-{what}".lower())


# Prefect's UI wraps no table cell: measured at 1440 px, a 4-column table's last cell holds
# ≈ 55 characters before it runs off the screen, a 3-column one's first cell ≈ 75
DETAIL_CHARS, REASON_CHARS = 52, 72


def short_reason(reason: str, limit: int = REASON_CHARS) -> str:
    """A refusal without the object's URL in front (the client column names it), cut to fit a table cell."""
    text = re.sub(r"^[a-z0-9]+://\S+?: ", "", reason.strip().splitlines()[0] if reason.strip() else "")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def uploaders_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """A table of what uploaders sent (their ids and bytes can be quoted in it) with Markdown's
    table, link, image and HTML characters escaped: the report and Prefect's UI (which renders
    table cells as Markdown) show them as text, and a '|' cannot split a cell."""
    return frame.map(lambda v: re.sub(r"([|\[\]<>`!])", r"\\\1", v) if isinstance(v, str) else v)


def _uploader(key: str) -> str:
    return key.rsplit("/", 1)[-1].removesuffix(".json")


def answers_frame(clients: list[str], responses: dict) -> pd.DataFrame:
    """client → accepted / refused (reason) / late / missing, and uploads that named no client."""
    refused: dict[str, list[str]] = {}
    for r in responses["rejected"]:
        refused.setdefault(_uploader(r["key"]), []).append(r["reason"])
    rows = []
    for c in clients:
        if c in responses["accepted"]:
            status, detail = "accepted", f"{responses['accepted'][c].get('bytes', 0)} bytes"
        elif c in refused:
            late = all("after the deadline" in r for r in refused[c])
            status, detail = ("late" if late else "refused"), short_reason(refused[c][-1], DETAIL_CHARS)
        else:
            status, detail = "missing", "no upload by the deadline"
        rows.append({"client_id": c, "status": status, "refused_uploads": len(refused.get(c, [])), "detail": detail})
    rows += [{"client_id": f"(not a client: {name})", "status": "refused", "refused_uploads": len(reasons),
              "detail": short_reason(reasons[-1], DETAIL_CHARS)} for name, reasons in refused.items() if name not in clients]  # fmt: skip
    return pd.DataFrame(rows, columns=["client_id", "status", "refused_uploads", "detail"])


def refusals_frame(responses: dict) -> pd.DataFrame:
    """One row per refusal reason: how many uploads got it and from whom (the full texts are in ledger.json)."""
    rows = pd.DataFrame([{"reason": short_reason(r["reason"]), "uploader": _uploader(r["key"])}
                         for r in responses["rejected"]], columns=["reason", "uploader"])  # fmt: skip
    table = rows.groupby("reason", sort=False).agg(uploads=("uploader", "size"), uploaders=("uploader", "unique"))
    table["uploaders"] = [short_reason(", ".join(sorted(u)), 40) for u in table["uploaders"]]
    return table.sort_values("uploads", ascending=False, kind="stable").reset_index()


@task(name="write-answers", **STORAGE_RETRIES)
def write_answers(store_url: str, round_id: str, clients: list[str], responses: dict) -> list[dict]:
    """Who answered, as a table artifact (the operator need not read ledger.json)."""
    table, refusals = uploaders_safe(answers_frame(clients, responses)), uploaders_safe(refusals_frame(responses))
    text = markdown_table(table) + ("\n\n" + markdown_table(refusals) if len(refusals) else "")
    catalog.store(store_url).write_bytes(layout.round_key(round_id, "answers.md"), text.encode())
    create_table_artifact(table.to_dict(orient="records"), key=artifact_key(round_id, "answers"),
                          description=f"ECOS round {round_id}: who answered")  # fmt: skip
    if len(refusals):  # one row per reason, however many uploads were refused for it
        create_table_artifact(refusals.to_dict(orient="records"), key=artifact_key(round_id, "refusals"),
                              description=f"ECOS round {round_id}: refused uploads by reason (full texts in ledger.json)")  # fmt: skip
    return table.to_dict(orient="records")


@task(name="check-watcher")
def warn_if_no_watcher(store_url: str, round_id: str, timeout_s: int) -> str | None:
    """Say, in the log and in the UI, when no watcher is there to resume this round. Never
    fails the round: it only informs."""
    try:
        why = watcher_silence(catalog.store(store_url))
    except Exception as err:  # noqa: BLE001
        why = f"the watcher's heartbeat could not be checked ({type(err).__name__}: {err})"
    if why:
        text = (f"Round {round_id} suspends to wait for its clients, but {why}: nothing will resume it before its "
                f"suspension times out ({timeout_s} s). Start one: `ecos infra up watcher`.")  # fmt: skip
        get_run_logger().warning(text)
        create_markdown_artifact(f"**Waiting without a watcher.** {text}", key=artifact_key(round_id, "waiting"))
    return why


def device_epsilons(cfg: RoundConfig, device_dir: str) -> pd.DataFrame:
    """Each simulated device's cumulative ε from its own privacy ledger."""
    from ecos_core.privacy.ledger import PrivacyLedger

    rows = []
    for c in cfg.clients:
        ledger = PrivacyLedger(Path(device_dir) / c / "ledger.json")
        rows.append({"client_id": c, "rounds_answered": len(ledger.entries()), "epsilon_spent": ledger.spent(cfg.delta)})
    return pd.DataFrame(rows)


@task(name="write-report", **STORAGE_RETRIES)
def write_report(
    store_url: str, cfg: RoundConfig, round_id: str, runs: list[dict], selections: list[dict], probe: dict,
    responses: dict, steps: dict[str, float], domain_rows: list[dict], cache_hits: list[str], simulated: bool = True,
    device_dir: str | None = None,
) -> dict:  # fmt: skip
    from ecos_core.privacy.accounting import gaussian_epsilon

    store = catalog.store(store_url)
    results = results_frame(cfg, runs, selections, probe, responses)
    if not simulated:  # the domain it was simulated with says nothing of a real device's data
        results["client_domain_share"] = float("nan")
    mix = domain_mix({r["method"]: r["domains"] for r in runs if r["client_id"] == cfg.clients[0]})
    step_table = pd.DataFrame({"step": list(steps), "seconds": list(steps.values())})
    domains = pd.DataFrame(domain_rows)
    eps = gaussian_epsilon(cfg.sigma, cfg.delta)
    mode = (f"**Simulation**: {len(cfg.clients)} simulated device(s) holding {cfg.data.client_domain} data "
            f"({cfg.data.regime}); accuracy is on their test split." if simulated else
            f"**Real devices** ({len(cfg.clients)} invited): their data never leaves them, so there is no Oracle, no "
            "Local and no accuracy here; each device evaluates the model it receives.")  # fmt: skip
    md = "\n\n".join([
        f"# ECOS round `{round_id}`",
        summary(results, eps) + f"  \n{len(responses['accepted'])} of {len(cfg.clients)} client(s) answered; budget "
        f"{cfg.sampling.budget} images, K={cfg.index.k}, σ={cfg.sigma} → ε={eps:.3f} at δ={cfg.delta:g} "
        "(dp-accounting PLD), seed " + str(cfg.seed) + ".",
        mode,
        "## Results", markdown_table(results[COLUMNS]),
        "What each method is:\n" + "\n".join(f"- {METHODS[m]}" for m in dict.fromkeys(results["method"]) if m in METHODS),
        "## Cost of each method (bytes between cloud and device, seconds)", markdown_table(results[COST_COLUMNS]),
        "## Who answered", markdown_table(uploaders_safe(answers_frame(list(cfg.clients), responses))),
        *([markdown_table(uploaders_safe(refusals_frame(responses)))] if responses["rejected"] else []),
        *(["## Privacy spent by each device (its own ledger, all rounds so far)",
           markdown_table(device_epsilons(cfg, device_dir))] if simulated and device_dir else []),
        "## Domain mix of each proxy set", markdown_table(mix.reset_index(names="method")),
        "## Every domain alone (Local: its own train part → its test part)",
        markdown_table(domains) if not domains.empty else "(not computed)",
        "## Time per step (s)", markdown_table(step_table, ".1f"),
        f"Feature space: {cfg.index.backbone}"
        + (" beside a CNN trained on annotated pool images, shipped in the probe" if cfg.index.feature_space == "combined" else "")
        + f" ({probe['dim']}-d). Feature cache: {'hit for ' + ', '.join(cache_hits) if cache_hits else 'all computed'}."
        + (" ECOS and the Oracle spent their cluster shares class by class, by the cloud's guess of each pool image's "
           "class from its annotated images (no client data, no extra ε)." if _by_class(selections) else ""),
        "![results](results.png)",
    ])  # fmt: skip
    keys = {"results_csv": "results.csv", "results_md": "results.md", "report": "report.md", "plot": "results.png"}
    store.write_bytes(layout.round_key(round_id, keys["results_csv"]), results.to_csv(index=False).encode())
    store.write_bytes(layout.round_key(round_id, keys["results_md"]), markdown_table(results).encode())
    store.write_bytes(layout.round_key(round_id, keys["report"]), md.encode())
    title = (f"round {round_id}: client {cfg.data.client_domain if simulated else '(real devices)'}, "
             f"budget {cfg.sampling.budget}, σ={cfg.sigma:g} → ε={eps:.3f}")  # fmt: skip
    store.write_bytes(layout.round_key(round_id, keys["plot"]), results_plot(results, mix, title))
    manifest = {"round_id": round_id, "config": cfg.model_dump(mode="json"), "simulated": simulated,
                "artifacts": {n: store.uri(layout.round_key(round_id, k)) for n, k in keys.items()}}  # fmt: skip
    store.write_json(layout.round_key(round_id, "manifest.json"), manifest)
    records = results[COLUMNS].round(4).replace({float("inf"): "inf"}).to_dict(orient="records")
    create_table_artifact(records, key=artifact_key(round_id, "results"), description=f"ECOS round {round_id}: results")
    create_markdown_artifact(md, key=artifact_key(round_id, "report"), description=f"ECOS round {round_id}")
    return {"results": results.to_dict(orient="records"), "steps": steps, "domains": domain_rows,
            "report_uri": store.uri(layout.round_key(round_id, keys["report"])), "manifest": manifest}  # fmt: skip


def _by_class(selections: list[dict]) -> bool:
    """What the selections did (tasks.sampling), not what the config asked for."""
    return any(s.get("by_class") for s in selections if s["method"] == "ecos")
