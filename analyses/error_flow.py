"""Error flow through time: mean ‖dℓ_t/dh_(t−q)‖ and ‖dℓ_t/dc_(t−q)‖ against q for every
variant, overlaid (the vanishing-gradient argument of Hochreiter 1991/97 and Pascanu13)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from analyses.common import COLUMN_WIDTH, Section, palette, save
from analyses.runs import Runs


def decay_rate(curve: pd.DataFrame, q1: int = 1, q2: int = 50) -> float:
    """Mean change of log ‖·‖ per step between q1 and q2 (negative: vanishing)."""
    c = curve.set_index("q").grad_norm
    if q1 not in c or q2 not in c or c[q1] <= 0 or c[q2] <= 0:
        return float("nan")
    return math.log(c[q2] / c[q1]) / (q2 - q1)


def build(runs: Runs, out: Path) -> Section:
    sec = Section("Error flow through time")
    frames = []
    for _, r in runs.train.iterrows():
        f = runs.csv(r.run_id, "probes/error_flow.csv")
        if f is None or f.empty:
            continue
        top = f.layer.max()
        f = f[f.layer == top].assign(variant=r["tag.variant"], dataset=r["tag.dataset"])
        frames.append(f)
        sec.sources.append(r.run_id)
    if not frames:
        sec.missing = ("no run with probes/error_flow.csv: run the ablation (probes on) or "
                       "`python -m study.inspect RUN_ID --probe`")
        return sec
    flow = pd.concat(frames, ignore_index=True)
    flow = flow[flow.grad_norm > 0]
    flow.to_csv(out / "error_flow.csv", index=False)
    rows = []
    for (dataset, variant, state, when), g in flow.groupby(["dataset", "variant", "state",
                                                            "when"]):
        rows.append({"dataset": dataset, "variant": variant, "state": state, "when": when,
                     "log-decay per step (q 1→50)": decay_rate(g)})
    table = pd.DataFrame(rows).sort_values(["dataset", "state", "when", "variant"])
    sec.tables["decay"] = table
    datasets = sorted(flow.dataset.unique())
    colours = palette(sorted(flow.variant.unique()))
    fig, axes = plt.subplots(len(datasets), 2, figsize=(2 * COLUMN_WIDTH, 2.4 * len(datasets)),
                             squeeze=False)
    for i, dataset in enumerate(datasets):
        for j, state in enumerate(("h", "c")):
            ax = axes[i][j]
            d = flow[(flow.dataset == dataset) & (flow.state == state)]
            if d.empty:
                ax.set_axis_off()
                continue
            sns.lineplot(data=d, x="q", y="grad_norm", hue="variant", style="when",
                         hue_order=sorted(colours), palette=colours,
                         style_order=["trained", "init"], ax=ax, lw=1,
                         legend=(i == 0 and j == 0))
            ax.set_yscale("log")
            ax.set_ylim(1e-12, max(2.0, d.grad_norm.max() * 2))  # below: vanished
            ax.set(xlabel="distance q (steps back)", ylabel=f"mean ‖dℓ_t/d{state}_(t−q)‖",
                   title=f"{dataset}: through {state} (top layer)")
    legend = axes[0][0].get_legend()
    if legend is not None:
        handles, labels = axes[0][0].get_legend_handles_labels()
        legend.remove()
        fig.legend(handles, labels, loc="lower center", ncol=5, fontsize=6, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    sec.figures.append(save(fig, out, "error_flow", (
        "Gradient of the loss at one step with respect to the state q steps earlier, top "
        "layer, after training (solid) and at initialisation (dashed), log scale (cut at "
        "1e-12: below it the error has vanished).")))
    sec.text = ("The mean change of log ‖·‖ per step between q = 1 and q = 50 "
                "(negative: the error vanishes; 0: it is carried unchanged).")
    return sec
