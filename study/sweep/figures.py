"""A study's figures (plain matplotlib): its optimisation history, the BPTT × clipping
heatmap and the parameter importances. Logged to the study's parent run by
study.sweep.summary and drawn again, from the same table, by the report."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

OUTCOME_STYLE = {"complete": ("o", "#1f77b4"), "pruned": ("v", "#ff7f0e"),
                 "diverged": ("x", "#d62728"), "fail": ("+", "0.5")}


def history_plot(table: pd.DataFrame):
    """Each trial's validation loss (pruned ones: their last report; diverged ones: the
    stated penalty) and the best converged one so far."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    t = table.sort_values("trial").copy()
    if "outcome" not in t:  # a table written before divergence was an outcome
        t["outcome"] = t.state.str.lower()
    for outcome, (marker, colour) in OUTCOME_STYLE.items():
        sub = t[t.outcome == outcome]
        if sub.empty:
            continue
        y = sub.last_reported_val if outcome in ("pruned", "fail") else sub.val_nats_per_char
        ax.scatter(sub.trial, y, marker=marker, color=colour, s=22,
                   label=f"{outcome} ({len(sub)})")
    done = t[t.outcome == "complete"]
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


def swept_axis(table: pd.DataFrame) -> str:
    """The axis the heatmap's columns show beside clipping: k2 when it varies (or nothing
    else does), else the learning rate."""
    if "lr" in table and table.lr.notna().any() and table.k2.nunique() <= 1:
        return "lr"
    return "k2"


def _lr_bins(values: pd.Series) -> pd.Series:
    if values.nunique() <= 8:
        return values.map(lambda v: f"{v:.3g}")
    edges = np.geomspace(values.min(), values.max() * 1.0001, 7)
    return pd.cut(values, edges, include_lowest=True).map(
        lambda iv: f"[{iv.left:.2g}, {iv.right:.2g})").astype(str)


def _start(label: str) -> float:
    return float(label.strip("[(").split(",")[0])


def bptt_clip_heatmap(table: pd.DataFrame):
    """Validation loss (nats/char) of the converged trials by clipping and the swept axis
    (k2, the BPTT length, or else the learning rate); cells whose trials all diverged (×)
    or were pruned (p) are marked."""
    if table.empty or table.k2.isna().all():
        return None
    t = table.copy()
    axis = swept_axis(t)
    if "outcome" not in t:  # a table written before divergence was an outcome
        t["outcome"] = t.state.str.lower()
    t["col"] = _k2_bins(t.k2) if axis == "k2" else _lr_bins(t.lr)
    t["clipping"] = _clip_bins(t)
    done = t[(t.state == "COMPLETE") & (t.outcome != "diverged")]
    rows = sorted(t["clipping"].dropna().unique(), key=lambda c: (c != "none", c))
    cols = sorted(t["col"].unique(), key=_start)
    grid = done.pivot_table(index="clipping", columns="col", values="val_nats_per_char",
                            aggfunc="min").reindex(index=rows, columns=cols)
    fig, ax = plt.subplots(figsize=(1.0 * len(cols) + 2.4, 0.45 * len(rows) + 1.6))
    values = grid.values.astype(float)
    im = ax.imshow(values, cmap="viridis_r", aspect="auto")
    lo, hi = np.nanmin(values, initial=np.inf), np.nanmax(values, initial=-np.inf)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            v = grid.values[i, j]
            cell = t[(t["clipping"] == r) & (t["col"] == c)]
            if v == v:  # viridis_r is light at the low end: dark text there
                dark = hi > lo and (v - lo) / (hi - lo) < 0.6
                ax.text(j, i, f"{v:.3f}", ha="center", va="center", fontsize=7,
                        color="k" if dark or hi == lo else "w")
            elif (cell.outcome == "diverged").any():
                ax.text(j, i, "×", ha="center", va="center", fontsize=10, color="#d62728")
            elif (cell.state == "PRUNED").any():
                ax.text(j, i, "p", ha="center", va="center", fontsize=8, color="0.4")
    ax.set_xticks(range(len(cols)), cols, fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.set(xlabel="k2: steps back-propagated" if axis == "k2" else "learning rate",
           ylabel="clipping (mode:threshold)",
           title="validation loss after the budget (nats/char); × diverged")
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
