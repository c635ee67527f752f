"""A study's figures (plain matplotlib): its optimisation history, the BPTT × clipping
heatmap and the parameter importances. Logged to the study's parent run by
study.sweep.summary and drawn again, from the same table, by the report."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

STATE_STYLE = {"COMPLETE": ("o", "#1f77b4"), "PRUNED": ("v", "#ff7f0e"),
               "FAIL": ("x", "#d62728")}


def history_plot(table: pd.DataFrame):
    """Each trial's validation loss (pruned ones: their last report) and the best so far."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    t = table.sort_values("trial")
    for state, (marker, colour) in STATE_STYLE.items():
        sub = t[t.state == state]
        y = sub.val_nats_per_char if state == "COMPLETE" else sub.last_reported_val
        ax.scatter(sub.trial, y, marker=marker, color=colour, s=22,
                   label=f"{state.lower()} ({len(sub)})")
    done = t[t.state == "COMPLETE"]
    if len(done):
        ax.step(done.trial, done.val_nats_per_char.cummin(), where="post", color="0.3",
                lw=1, label="best so far")
    ax.set(xlabel="trial", ylabel="validation loss (nats/char)",
           title="optimisation history")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _k2_bins(values: pd.Series) -> pd.Series:
    uniq = sorted(values.dropna().unique())
    if len(uniq) <= 8:
        return values.astype("Int64").astype(str)
    edges = np.unique(np.geomspace(min(uniq), max(uniq) + 1, 7).round().astype(int))
    return pd.cut(values, edges, right=False).astype(str)


def _clip_bins(table: pd.DataFrame) -> pd.Series:
    if table["clip"].nunique() <= 10:
        return table["clip"]
    out = []
    for c in table["clip"]:
        if c == "none" or c is None:
            out.append("none")
        else:
            mode, v = c.split(":")
            out.append(f"{mode}:~{float(f'{float(v):.0e}'):g}")
    return pd.Series(out, index=table.index)


def bptt_clip_heatmap(table: pd.DataFrame):
    """Validation loss (nats/char) of the complete trials by k2 (BPTT length) and clipping;
    cells with only pruned (p) or diverged (×) trials are marked."""
    if table.empty or table.k2.isna().all():
        return None
    t = table.copy()
    t["k2 bin"], t["clipping"] = _k2_bins(t.k2), _clip_bins(t)
    done = t[t.state == "COMPLETE"]
    rows = sorted(t["clipping"].dropna().unique(), key=lambda c: (c != "none", c))
    cols = sorted(t["k2 bin"].unique(), key=lambda c: float(c.strip("[(").split(",")[0]))
    grid = done.pivot_table(index="clipping", columns="k2 bin", values="val_nats_per_char",
                            aggfunc="min").reindex(index=rows, columns=cols)
    fig, ax = plt.subplots(figsize=(1.0 * len(cols) + 2.4, 0.45 * len(rows) + 1.6))
    im = ax.imshow(grid.values.astype(float), cmap="viridis_r", aspect="auto")
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            v = grid.values[i, j]
            cell = t[(t["clipping"] == r) & (t["k2 bin"] == c)]
            if v == v:
                ax.text(j, i, f"{v:.3f}", ha="center", va="center", fontsize=7, color="w")
            elif (cell.state == "FAIL").any():
                ax.text(j, i, "×", ha="center", va="center", fontsize=10, color="#d62728")
            elif (cell.state == "PRUNED").any():
                ax.text(j, i, "p", ha="center", va="center", fontsize=8, color="0.4")
    ax.set_xticks(range(len(cols)), cols, fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.set(xlabel="k2: steps back-propagated", ylabel="clipping (mode:threshold)",
           title="validation loss after the budget (nats/char)")
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    return fig


def importance_bars(imp: pd.DataFrame):
    methods = list(dict.fromkeys(imp.method))
    fig, axes = plt.subplots(1, len(methods), figsize=(3.6 * len(methods), 2.8), squeeze=False)
    for ax, m in zip(axes[0], methods, strict=True):
        sub = imp[imp.method == m].sort_values("importance")
        ax.barh(sub.param, sub.importance, color="#1f77b4")
        ax.set(title=f"{m} importance", xlabel="share of variance")
    fig.tight_layout()
    return fig
