"""Every figure of the probes (plain matplotlib, no display needed): the gate-saturation
scatter, a unit's trace as a PNG grid and the error flow. One home per figure: a run's
probes draw them as PNGs of their own (ax=None: a new figure), and the report (analyses/)
draws the same figures into axes of its own (ax given)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402

from study.probes.layout import (  # noqa: E402
    LEGEND_CAPTION,
    LEGEND_VALUES,
    trace_colours,
    trace_rows,
)

# One colour per layer, the same in every probe figure: Okabe & Ito's colour-blind-safe
# palette without its pale entries (yellow, sky blue), which vanish on a white background;
# each has a contrast ratio of at least 3:1 against white (tests/test_report.py checks it).
LAYER_COLOURS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#000000", "#8C564B"]


def _panels(ax: Axes | Sequence[Axes] | None, n: int, what: str,
            size: tuple[float, float]) -> tuple:
    """(figure, axes) to draw `n` panels into: a new row of n panels of `size` inches each
    when ax is None, else the Axes given (one, or a sequence of them)."""
    if ax is None:
        fig, grid = plt.subplots(1, max(1, n), figsize=(size[0] * max(1, n), size[1]),
                                 squeeze=False)
        return fig, list(grid[0])
    axes = [ax] if isinstance(ax, Axes) else list(np.ravel(np.asarray(ax, dtype=object)))
    if len(axes) < n:
        raise ValueError(f"{n} {what} need {n} axes to draw into, got {len(axes)}")
    return axes[0].figure, axes


def _layer_colour(layer: int) -> str:
    return LAYER_COLOURS[(layer - 1) % len(LAYER_COLOURS)]


def saturation_scatter(table: pd.DataFrame, title: str, left: float, right: float,
                       note: str = "", ax: Axes | Sequence[Axes] | None = None):
    """Karpathy15 Fig. 3: one point per gate unit, x = fraction of time right-saturated
    (> right), y = fraction left-saturated (< left), a panel per gate, colour = layer.
    `table`: study.probes.saturation.saturation_table's columns. ax=None: a new figure,
    titled `title` (and `note` below it). Otherwise draws into `ax` (an Axes, or one per
    gate), each panel titled "`title`: <gate> gate" (and `note`), and leaves the layout
    to the caller. Returns the figure."""
    gates = list(dict.fromkeys(table["gate"]))
    fig, axes = _panels(ax, len(gates), "gates", (3.2, 3.4))
    for panel, gate in zip(axes, gates, strict=False):
        sub = table[table["gate"] == gate]
        for layer in sorted(sub["layer"].unique()):
            pts = sub[sub["layer"] == layer]
            panel.scatter(pts["frac_right"], pts["frac_left"], s=9, alpha=0.7,
                          color=_layer_colour(layer), label=f"layer {layer}")
        panel.plot([0, 1], [1, 0], color="0.8", lw=0.8, zorder=0)
        name = f"{gate} gate" if ax is None or not title else f"{title}: {gate} gate"
        panel.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02),
                  title=name + (f"\n{note}" if note and ax is not None else ""),
                  xlabel=f"fraction right-saturated (> {right:g})")
        panel.set_aspect("equal")
    axes[0].set_ylabel(f"fraction left-saturated (< {left:g})")
    axes[0].legend(fontsize=7, loc="upper right")
    if ax is None:
        fig.suptitle(title + (f"\n{note}" if note else ""), fontsize=9)
        fig.tight_layout()
    return fig


def _unit(rgb) -> tuple[float, float, float]:
    """An sRGB 0–255 triple of study.probes.layout as matplotlib's 0–1 floats."""
    return tuple(c / 255 for c in rgb)


def trace_legend(ax: Axes) -> None:
    """The traces' legend into `ax`: a swatch per study.probes.layout.LEGEND_VALUES (−1 and
    +1 included), labelled with its value, each drawn with trace_colours like the cells,
    and what the colours mean."""
    n = len(LEGEND_VALUES)
    ax.imshow(np.array([[_unit(trace_colours(v)[0]) for v in LEGEND_VALUES]]), aspect="auto",
              interpolation="nearest", extent=(0, n, 1, 0))
    for i, v in enumerate(LEGEND_VALUES):
        ax.text(i + 0.5, 0.5, f"{v:+.1f}", ha="center", va="center", fontsize=6.5,
                family="monospace", color=_unit(trace_colours(v)[1]))
    ax.text(n + 0.3, 0.5, LEGEND_CAPTION, ha="left", va="center", fontsize=7,
            transform=ax.transData, clip_on=False)
    ax.set_xticks([])
    ax.set_yticks([])


def trace_png(text: str, values: np.ndarray, title: str, width: int = 80):
    r"""The text as a grid of `width` columns, a character on each cell coloured by the
    unit's value, laid out by study.probes.layout.trace_rows (long lines wrap, '\n' is '↵')
    and coloured by its trace_colours (the HTML trace's palette: background and text), with
    the legend below (axes labelled "trace legend")."""
    rows = trace_rows(text, values, width)
    n_rows = max(1, len(rows))
    height = n_rows * 0.2 + 1.0  # title 0.5, legend strip 0.3 and margins (inches)
    fig = plt.figure(figsize=(width * 0.11 + 0.4, height))
    ax = fig.add_axes((0.01, 0.42 / height, 0.98, (n_rows * 0.2) / height), label="trace")
    img = np.ones((n_rows, width, 3))  # (row, column, RGB)
    for r, row in enumerate(rows):
        for c, (ch, v) in enumerate(row):
            background, colour = trace_colours(v)
            img[r, c] = _unit(background)
            if not ch.isspace():
                ax.text(c + 0.5, r + 0.5, ch, ha="center", va="center", fontsize=7,
                        family="monospace", parse_math=False, color=_unit(colour))
    ax.imshow(img, aspect="auto", interpolation="nearest", extent=(0, width, n_rows, 0))
    ax.set_axis_off()
    key = fig.add_axes((0.01, 0.08 / height, 5 * 0.33 / (width * 0.11 + 0.4), 0.22 / height),
                       label="trace legend")
    trace_legend(key)
    fig.suptitle(title, fontsize=8, y=0.995)
    return fig


def error_flow_plot(curves: pd.DataFrame, title: str,
                    ax: Axes | Sequence[Axes] | None = None):
    """Mean ‖dℓ_t/dh_(t−q)‖ and ‖dℓ_t/dc_(t−q)‖ against q, log scale, a panel per state,
    colour = layer; dashed at initialisation, solid after training. `curves`: the columns
    of error_flow.csv (layer, state, q, grad_norm, when). ax=None: a new figure titled
    `title`. Otherwise draws into `ax` (an Axes, or one per state), each panel titled
    "`title`: through <state>", and leaves the layout to the caller. Returns the figure."""
    kinds = [k for k in ("h", "c") if k in set(curves["state"])]
    fig, axes = _panels(ax, len(kinds), "states", (4.2, 3.3))
    for panel, kind in zip(axes, kinds, strict=False):
        sub = curves[curves["state"] == kind]
        for (layer, when), pts in sub.groupby(["layer", "when"]):
            panel.semilogy(pts["q"], pts["grad_norm"], ls="--" if when == "init" else "-",
                           color=_layer_colour(layer), label=f"layer {layer}, {when}")
        name = f"error flow through {kind}"
        panel.set(xlabel="distance q (steps back)",
                  ylabel=f"mean ‖dℓ_t / d{kind}_(t−q)‖ (ℓ in nats)",
                  title=name if ax is None or not title else f"{title}: through {kind}")
        panel.legend(fontsize=7)
    if ax is None:
        fig.suptitle(title, fontsize=9)
        fig.tight_layout()
    return fig
