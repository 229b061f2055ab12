"""Results people compare: a table (pandas → markdown/CSV) and a plot (PNG bytes)."""

from __future__ import annotations

import io

import pandas as pd

METHOD_ORDER = ("ecos", "oracle", "random", "kcenter", "full", "local")
METHODS = {  # what each row of a round's report is
    "ecos": "ECOS: the client's noisy coverage scores (K scalars, ε-DP) choose the clusters, k-center picks inside them",
    "oracle": "Oracle: the same rule on the client's exact counts, which needs its raw features "
              "(d floats per sample uploaded, no privacy: ε = ∞); an upper bound only a simulation can compute",
    "random": "Random: a uniform sample of the pool, blind to the client (ε = 0)",
    "kcenter": "K-Center: the most diverse samples of the pool, blind to the client (ε = 0)",
    "full": "Full: the whole pool",
    "local": "Local: the client's own training data only (never leaves the device in reality)",
}


def summary(results: pd.DataFrame, epsilon: float) -> str:
    """Two lines a person reads first: ECOS against Random and against the Oracle, mean
    accuracy over the clients."""
    acc = results.groupby("method")["accuracy"].mean() * 100
    if "ecos" not in acc or pd.isna(acc["ecos"]):
        return "Accuracy not measured here (real devices evaluate the model on their own test data)."
    line = f"ECOS {acc['ecos']:.1f} %"
    if "random" in acc:
        line += f" vs Random {acc['random']:.1f} % ({acc['ecos'] - acc['random']:+.1f})"
    line += f" at ε = {epsilon:.3f}"
    if "oracle" in acc:
        gap = acc["oracle"] - acc["ecos"]
        line += f"; {abs(gap):.1f} {'below' if gap >= 0 else 'above'} the non-private Oracle"
    return line + "."


def markdown_table(frame: pd.DataFrame, floatfmt: str = ".3f") -> str:
    return frame.to_markdown(index=False, floatfmt=floatfmt)


def domain_mix(domains_by_method: dict[str, list[str]]) -> pd.DataFrame:
    """Rows: method; columns: domain; values: share of the proxy set from that domain."""
    rows = {m: pd.Series(d).value_counts(normalize=True) for m, d in domains_by_method.items() if len(d)}
    return pd.DataFrame(rows).T.fillna(0.0).sort_index(axis=1)


def results_plot(results: pd.DataFrame, mix: pd.DataFrame, title: str) -> bytes:
    """Left: client test accuracy by method. Right: domain mix of each proxy set."""
    import matplotlib  # here: a second of imports only when a plot is drawn

    matplotlib.use("Agg")  # headless: the report is written to the store, never shown
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_mix) = plt.subplots(1, 2, figsize=(11, 4.2))
    # one bar per client within each method (several clients per round)
    table = results.pivot_table(index="method", columns="client_id", values="accuracy") * 100
    table = table.reindex([m for m in METHOD_ORDER if m in table.index])
    if not table.empty and table.notna().any().any():  # every selection empty: no bars to draw
        table.plot.bar(ax=ax_acc, rot=0, width=0.75, legend=table.shape[1] > 1)
    for bars in ax_acc.containers:
        ax_acc.bar_label(bars, fmt="%.1f", fontsize=8)
    ax_acc.set_xlabel("")
    ax_acc.set_ylabel("client test accuracy (%)")
    ax_acc.set_ylim(0, 105)
    ax_acc.set_title("accuracy by method")
    if not mix.empty:
        mix = mix.reindex([m for m in METHOD_ORDER if m in mix.index])
        (mix * 100).plot.bar(stacked=True, ax=ax_mix, colormap="tab10", rot=0, width=0.7)
        ax_mix.set_ylabel("share of proxy set (%)")
        ax_mix.legend(title="domain", fontsize=8, bbox_to_anchor=(1.0, 1.0), loc="upper left")
    ax_mix.set_title("domain mix of each proxy set")
    fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
