"""Error flow through time: mean ‖dℓ_t/dh_(t−q)‖ and ‖dℓ_t/dc_(t−q)‖ against q for every
variant (the vanishing-gradient argument of Hochreiter 1991/97 and Pascanu13), drawn by
study.probes.figures.error_flow_plot (the figure each run's probes draw), a row per variant,
and its decay rate per variant over seeds."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from analyses.common import COLUMN_WIDTH, Section, save, variant_order
from analyses.runs import Runs
from analyses.seeds import losses_by_seed
from study.probes.figures import error_flow_plot


def decay_rate(curve: pd.DataFrame, q1: int = 1, q2: int = 50) -> float:
    """Mean change of log ‖·‖ per step between q1 and q2, or the largest q measured if that
    is smaller (negative: vanishing); NaN where the norm is 0 at either end."""
    c = curve.set_index("q").grad_norm
    q2 = min(q2, int(c.index.max())) if len(c) else q2
    if q1 not in c or q2 not in c or q2 <= q1 or c[q1] <= 0 or c[q2] <= 0:
        return float("nan")
    return math.log(c[q2] / c[q1]) / (q2 - q1)


def build(runs: Runs, out: Path) -> Section:
    sec = Section("Error flow through time")
    losses, _ = losses_by_seed(runs.train)  # the runs the variants and claims compare
    frames = []
    for r in losses.itertuples():
        f = runs.csv(r.run_id, "probes/error_flow.csv")
        if f is None or f.empty:
            continue
        frames.append(f.assign(variant=r.variant, dataset=r.dataset, seed=r.seed,
                               run_id=r.run_id))
        sec.sources.append(r.run_id)
    if not frames:
        sec.missing = ("no run with probes/error_flow.csv: run the ablation (probes on) or "
                       "`python -m study.inspect RUN_ID --probe`")
        return sec
    flow = pd.concat(frames, ignore_index=True)
    flow.to_csv(out / "error_flow.csv", index=False)
    # the decay through the top layer, per run, then over seeds
    rates = []
    for (dataset, variant, _run, state, when), g in flow.groupby(
            ["dataset", "variant", "run_id", "state", "when"]):
        top = g[g.layer == g.layer.max()]
        rates.append({"dataset": dataset, "variant": variant, "state": state, "when": when,
                      "rate": decay_rate(top), "q to": min(50, int(top.q.max()))})
    rates = pd.DataFrame(rates)
    table = rates.groupby(["dataset", "variant", "state", "when", "q to"]).rate.agg(
        ["mean", "std", "size"]).reset_index().rename(columns={
            "mean": "log-decay per step (q 1→q to), mean", "std": "sd", "size": "n seeds"})
    order = {v: i for i, v in enumerate(variant_order(table.variant))}
    sec.tables["decay"] = table.sort_values(
        ["dataset", "state", "when", "variant"],
        key=lambda c: c.map(order) if c.name == "variant" else c).reset_index(drop=True)
    for dataset in sorted(flow.dataset.unique()):
        d = flow[flow.dataset == dataset]
        names = variant_order(d.variant.unique())
        fig, axes = plt.subplots(len(names), 2, squeeze=False,
                                 figsize=(2 * COLUMN_WIDTH, 0.65 * COLUMN_WIDTH * len(names)))
        for ax_row, variant in zip(axes, names, strict=True):
            v = d[d.variant == variant]
            first = v[v.run_id == v.run_id.iloc[0]]  # one seed per variant: the figure
            # the run's own figure (study.probes.figures), drawn into this row
            error_flow_plot(first, f"{variant} seed {first.seed.iloc[0]}", ax=list(ax_row))
            if set(first.state) <= {"h"}:
                ax_row[1].set_axis_off()
        fig.tight_layout()
        sec.figures.append(save(fig, out, f"error_flow_{dataset}", (
            f"{dataset}: gradient of the loss at one step with respect to the state q steps "
            "earlier (h, and c for cells that carry one), log scale, colour = layer, after "
            "training (solid) and at initialisation (dashed), one run per variant (the "
            "figure of each run's probes/error_flow.png).")))
    sec.text = ("The mean change of log ‖·‖ per step between q = 1 and q = 50 (or the largest "
                "q measured, 'q to') through the top layer (negative: the error vanishes; 0: "
                "it is carried unchanged), per run, then the mean and sd over seeds; – where "
                "the gradient is 0 at either end.")
    return sec
