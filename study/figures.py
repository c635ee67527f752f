"""Per-run figures drawn by the probes (plain matplotlib, no display needed). The report's
paper-style figures live in analyses/ (seaborn); these are what each MLflow run shows."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from study.traces import trace_rows  # noqa: E402

LAYER_COLOURS = ["#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#ff7f0e", "#8c564b"]


def saturation_scatter(table: pd.DataFrame, title: str, left: float, right: float,
                       note: str = ""):
    """Karpathy15 Fig. 3: one point per gate unit, x = fraction of time right-saturated
    (> right), y = fraction left-saturated (< left), a panel per gate, colour = layer."""
    gates = list(dict.fromkeys(table["gate"]))
    fig, axes = plt.subplots(1, max(1, len(gates)), figsize=(3.2 * max(1, len(gates)), 3.4),
                             squeeze=False)
    for ax, gate in zip(axes[0], gates, strict=False):
        sub = table[table["gate"] == gate]
        for layer in sorted(sub["layer"].unique()):
            pts = sub[sub["layer"] == layer]
            ax.scatter(pts["frac_right"], pts["frac_left"], s=9, alpha=0.7,
                       color=LAYER_COLOURS[(layer - 1) % len(LAYER_COLOURS)],
                       label=f"layer {layer}")
        ax.plot([0, 1], [1, 0], color="0.8", lw=0.8, zorder=0)
        ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), title=f"{gate} gate",
               xlabel=f"fraction right-saturated (> {right:g})")
        ax.set_aspect("equal")
    axes[0][0].set_ylabel(f"fraction left-saturated (< {left:g})")
    axes[0][0].legend(fontsize=7, loc="upper right")
    fig.suptitle(title + (f"\n{note}" if note else ""), fontsize=9)
    fig.tight_layout()
    return fig


def _rgb(v: float) -> tuple[float, float, float]:
    """−1 red, 0 white, +1 blue (Karpathy15's cell figures); grey for not a number."""
    if not np.isfinite(v):
        return (0.85, 0.85, 0.85)
    v = float(np.clip(v, -1, 1))
    return (1.0, 1 + v, 1 + v) if v < 0 else (1 - v, 1 - v, 1.0)


def trace_png(text: str, values: np.ndarray, title: str, width: int = 80):
    r"""The text as a grid of `width` columns, a character on each cell coloured by the
    unit's value, laid out by study.traces.trace_rows (long lines wrap, '\n' is '↵')."""
    rows = trace_rows(text, values, width)
    n_rows = max(1, len(rows))
    fig = plt.figure(figsize=(width * 0.11 + 0.4, n_rows * 0.2 + 0.7))
    ax = fig.add_axes((0.01, 0.01, 0.98, 1 - 0.5 / (n_rows * 0.2 + 0.7)))
    img = np.ones((n_rows, width, 3))  # (row, column, RGB)
    for r, row in enumerate(rows):
        for c, (ch, v) in enumerate(row):
            img[r, c] = _rgb(v)
            if not ch.isspace():
                ax.text(c + 0.5, r + 0.5, ch, ha="center", va="center", fontsize=7,
                        family="monospace", parse_math=False)
    ax.imshow(img, aspect="auto", interpolation="nearest", extent=(0, width, n_rows, 0))
    ax.set_axis_off()
    fig.suptitle(title, fontsize=8, y=0.995)
    return fig


def error_flow_plot(curves: pd.DataFrame, title: str):
    """Mean ‖dℓ_t/dh_(t−q)‖ and ‖dℓ_t/dc_(t−q)‖ against q, log scale, per layer; dashed at
    initialisation, solid after training."""
    kinds = [k for k in ("h", "c") if k in set(curves["state"])]
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.2 * len(kinds), 3.3), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        sub = curves[curves["state"] == kind]
        for (layer, when), pts in sub.groupby(["layer", "when"]):
            ax.semilogy(pts["q"], pts["grad_norm"], ls="--" if when == "init" else "-",
                        color=LAYER_COLOURS[(layer - 1) % len(LAYER_COLOURS)],
                        label=f"layer {layer}, {when}")
        ax.set(xlabel="distance q (steps back)",
               ylabel=f"mean ‖dℓ_t / d{kind}_(t−q)‖", title=f"error flow through {kind}")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


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
