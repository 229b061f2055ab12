"""Reports of the benchmark grid (ecos_core.benchmark.run rows): Table 4 in markdown, and plots
(matplotlib Agg, PNG bytes): accuracy vs budget, accuracy vs ε, domain mix per proxy set."""

from __future__ import annotations

import io
import json
import math

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # headless
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ecos_core.report import METHOD_ORDER


def method_label(sampler: str, sigma: float | None, many_sigmas: bool) -> str:
    """Row name of a sampler; ECOS carries its σ when the grid sweeps several."""
    if sigma is None or (isinstance(sigma, float) and math.isnan(sigma)) or not many_sigmas:
        return sampler
    return f"{sampler} (σ={sigma:g})"


def with_method(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    if "sigma" not in df:
        df["sigma"] = np.nan
    df["sigma"] = pd.to_numeric(df["sigma"], errors="coerce")
    many = df["sigma"].dropna().nunique() > 1
    df["method"] = [method_label(s, g, many) for s, g in zip(df["sampler"], df["sigma"])]
    return df


def _method_order(methods: list[str]) -> list[str]:
    def key(m: str) -> tuple:
        base = m.split(" ", 1)[0]
        rank = METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER)
        sigma = float(m.split("=")[1].rstrip(")")) if "σ=" in m else 0.0
        return (rank, base, sigma)

    return sorted(methods, key=key)


def _fmt_eps(values: pd.Series) -> str:
    values = values.dropna()
    if values.empty:
        return "–"
    eps = float(values.mean())
    if math.isinf(eps):
        return "∞"
    return "0" if eps == 0 else f"{eps:.2f}"


def table4_frame(df: pd.DataFrame, application: str, budget: int, regime: str) -> pd.DataFrame:
    """Rows: method; columns: each client domain ("mean ± std" in %, over seeds), ε, Average."""
    df = with_method(df)
    part = df[(df["application"] == application) & (df["budget"] == budget) & (df["regime"] == regime)]
    domains = list(dict.fromkeys(part["client_domain"]))
    rows = []
    for method in _method_order(list(dict.fromkeys(part["method"]))):
        m = part[part["method"] == method]
        row: dict[str, str] = {"sampler": method}
        means = []
        for domain in domains:
            acc = m.loc[m["client_domain"] == domain, "accuracy"] * 100
            empty = int(acc.isna().sum())  # seeds where the sampler selected nothing (nothing to train)
            acc = acc.dropna()
            if acc.empty:
                row[domain] = f"– ({empty} empty)" if empty else "–"
                continue
            std = acc.std(ddof=1) if len(acc) > 1 else 0.0
            row[domain] = f"{acc.mean():.1f} ± {std:.1f}" + (f" ({empty} empty)" if empty else "")
            means.append(acc.mean())
        row["ε"] = _fmt_eps(m["epsilon"])
        row["Average"] = f"{np.mean(means):.1f}" if means else "–"
        rows.append(row)
    return pd.DataFrame(rows, columns=["sampler", *domains, "ε", "Average"])


def table4_markdown(df: pd.DataFrame) -> str:
    """One Table-4-style markdown table per (application, budget, regime)."""
    df = with_method(df)
    parts = []
    keys = df[["application", "budget", "regime"]].drop_duplicates().itertuples(index=False)
    for application, budget, regime in keys:
        frame = table4_frame(df, application, int(budget), regime)
        seeds = sorted(df.loc[(df["application"] == application) & (df["budget"] == budget), "seed"].unique())
        parts.append(f"### {application} · budget {int(budget)} · {regime}\n\n"
                     f"Client test accuracy (%), mean ± std over seeds {list(map(int, seeds))}.\n\n"
                     + frame.to_markdown(index=False))  # fmt: skip
    return "\n\n".join(parts) + "\n"


def proxy_mix_markdown(df: pd.DataFrame) -> str:
    """Per (application, budget, regime): each method's mean distractor share, client-domain
    share and unspent budget per client domain: where the proxy sets came from."""
    df = with_method(df)
    parts = []
    for (application, budget, regime), part in df.groupby(["application", "budget", "regime"], sort=False):
        table = part.groupby(["method", "client_domain"], sort=False)[["distractor_share", "client_domain_share", "unspent"]].mean()
        wide = table.unstack("client_domain")
        wide.columns = [f"{domain}: {what.replace('_share', '').replace('client_domain', 'own')}" for what, domain in wide.columns]
        wide = wide.reindex(_method_order(list(wide.index)))
        parts.append(f"### {application} · budget {budget} · {regime}\n\n"
                     "Mean share of each proxy set from the off-task distractor domains and from the client's own "
                     "domain, and the budget left unspent.\n\n" + wide.reset_index().to_markdown(index=False, floatfmt=".3g"))  # fmt: skip
    return "\n\n".join(parts) + "\n"


def costs_frame(df: pd.DataFrame, references: dict[tuple[str, str], dict]) -> pd.DataFrame:
    """Per (client domain, regime): the median ECOS round's cost to the client beside the
    alternatives in `references` (ecos_core.benchmark.run.BenchContext.reference_costs)."""
    ecos = df[(df["sampler"] == "ecos") & (df["application"] == "labeling")]
    rows = []
    for (domain, regime), grp in ecos.groupby(["client_domain", "regime"], sort=False):
        ref = references[(domain, regime)]
        down, up = grp["bytes_down"].median(), grp["bytes_up"].median()
        rows.append({"client": domain, "regime": regime, "ECOS down (KB)": down / 1e3, "ECOS up (B)": up,
                     "ECOS client GMAC": grp["client_macs"].median() / 1e9, "ECOS client s": grp["client_s"].median(),
                     "upload client data (KB)": ref["upload_client_bytes"] / 1e3,
                     "download pool (KB)": ref["download_pool_bytes"] / 1e3,
                     "embed pool on device GMAC": ref["embed_pool_macs"] / 1e9,
                     "pool / ECOS bytes": ref["download_pool_bytes"] / (down + up)})  # fmt: skip
    return pd.DataFrame(rows)


def costs_markdown(df: pd.DataFrame, references: dict[tuple[str, str], dict]) -> str:
    frame = costs_frame(df, references)
    if frame.empty:
        return "(no ECOS labeling cells: nothing to cost)\n"
    return ("Client cost of one ECOS round (median over cells) against uploading its data or downloading the "
            "pool (uint8 images; embedding the pool on the device to choose locally).\n\n"
            + frame.to_markdown(index=False, floatfmt=".4g") + "\n")  # fmt: skip


def _png(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def accuracy_vs_budget_png(df: pd.DataFrame) -> bytes:
    """One panel per (application, regime); a line per method: accuracy (mean over domains and seeds) vs budget."""
    df = with_method(df)
    panels = list(df[["application", "regime"]].drop_duplicates().itertuples(index=False))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (application, regime) in zip(axes[0], panels):
        part = df[(df["application"] == application) & (df["regime"] == regime)]
        table = part.groupby(["budget", "method"])["accuracy"].mean().unstack() * 100
        for method in _method_order(list(table.columns)):
            ax.plot(table.index, table[method], marker="o", label=method)
        ax.set_xlabel("budget (proxy samples)")
        ax.set_ylabel("client test accuracy (%)")
        ax.set_title(f"{application} · {regime}")
        ax.legend(fontsize=8)
    return _png(fig)


def accuracy_vs_epsilon_png(df: pd.DataFrame) -> bytes:
    """Privacy sweep: ECOS accuracy vs ε (one point per σ), Oracle/Random/... as horizontal lines."""
    df = with_method(df)
    apps = list(dict.fromkeys(df["application"]))
    fig, axes = plt.subplots(1, len(apps), figsize=(5 * len(apps), 4), squeeze=False)
    for ax, application in zip(axes[0], apps):
        part = df[df["application"] == application]
        noisy = part[part["sigma"].notna() & np.isfinite(part["epsilon"].astype(float))]
        for budget, grp in noisy.groupby("budget"):
            curve = grp.groupby("epsilon")["accuracy"].mean().sort_index() * 100
            ax.plot(curve.index, curve.values, marker="o", label=f"ecos, budget {int(budget)}")
        for i, (sampler, grp) in enumerate(part[part["sigma"].isna()].groupby("sampler")):
            ax.axhline(grp["accuracy"].mean() * 100, linestyle="--", color=f"C{i + 3}", label=f"{sampler} (all budgets)")
        if not noisy.empty and (noisy["epsilon"] > 0).all():
            ax.set_xscale("log")
            ticks = sorted(noisy["epsilon"].unique())
            ax.set_xticks(ticks, [f"{t:.2g}" for t in ticks])  # the sweep's own ε values, not 3×10⁻¹ clutter
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("ε (δ=1e-5, PLD)")
        ax.set_ylabel("client test accuracy (%)")
        ax.set_title(application)
        ax.legend(fontsize=8)
    return _png(fig)


def domain_mix_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Rows: (client domain, method); columns: pool domains; values: mean share of the proxy set."""
    df = with_method(df)
    rows = []
    for (domain, method), grp in df.groupby(["client_domain", "method"], sort=False):
        shares = [pd.Series(json.loads(p), dtype=float) for p in grp["proxy_domains"] if isinstance(p, str)]
        shares = [s / s.sum() for s in shares if s.sum() > 0]
        if shares:
            rows.append(pd.concat(shares, axis=1).fillna(0.0).mean(axis=1).rename((domain, method)))
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).fillna(0.0).sort_index(axis=1)


def domain_mix_png(df: pd.DataFrame) -> bytes:
    """Stacked bars per method (one panel per client domain): where each proxy set came from."""
    mix = domain_mix_frame(df)
    domains = list(dict.fromkeys(mix.index.get_level_values(0))) if not mix.empty else ["(none)"]
    fig, axes = plt.subplots(1, len(domains), figsize=(5 * len(domains), 4), squeeze=False)
    for ax, domain in zip(axes[0], domains):
        if not mix.empty:
            part = mix.loc[domain]
            part = part.reindex(_method_order(list(part.index)))
            (part * 100).plot.bar(stacked=True, ax=ax, colormap="tab10", rot=30, width=0.7)
            ax.legend(title="pool domain", fontsize=8)
        ax.set_ylabel("share of proxy set (%)")
        ax.set_title(f"client {domain}")
    return _png(fig)


def all_plots(df: pd.DataFrame) -> dict[str, bytes]:
    """File name -> PNG bytes."""
    return {
        "accuracy_vs_budget.png": accuracy_vs_budget_png(df),
        "accuracy_vs_epsilon.png": accuracy_vs_epsilon_png(df),
        "domain_mix.png": domain_mix_png(df),
    }
