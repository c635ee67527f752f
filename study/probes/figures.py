"""Per-run figures drawn by the probes (plain matplotlib, no display needed). The report's
paper-style figures live in analyses/ (seaborn); these are what each MLflow run shows."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from study.probes.traces import trace_rows  # noqa: E402

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
    unit's value, laid out by study.probes.traces.trace_rows (long lines wrap, '\n' is '↵')."""
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
