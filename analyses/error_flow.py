"""Error flow through time: mean ‖dℓ_t/dh_(t−q)‖ and ‖dℓ_t/dc_(t−q)‖ against q for every
variant (the vanishing-gradient argument of Hochreiter 1991/97 and Pascanu13), drawn by
study.probes.figures.error_flow_plot (the figure each run's probes draw), a row per variant,
and its decay rate per variant over seeds."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from analyses.common import COLUMN_WIDTH, Section, save, variant_order
from analyses.runs import Runs
from analyses.seeds import losses_by_seed
from study.probes.figures import error_flow_plot
from study.probes.flow import Q1, Q2, decay


def decay_rate(curve: pd.DataFrame, q1: int = Q1, q2: int = Q2) -> float:
    """Mean change of log ‖·‖ per step between q1 and q2, or the largest q measured if that
    is smaller (negative: vanishing); NaN where it cannot be computed (study.probes.flow
    .decay says why)."""
    return decay(curve, q1, q2)[0]


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
        rate, q_to, why = decay(g[g.layer == g.layer.max()])
        rates.append({"dataset": dataset, "variant": variant, "state": state, "when": when,
                      "rate": rate, "q to": q_to, "why": why})
    sec.tables["decay"] = decay_table(pd.DataFrame(rates))
    sec.captions["decay"] = (
        f"Decay of the error flow: change of log ‖dℓ_t/dstate_(t−q)‖ per step back, q = "
        f"{Q1} → 'q to' (at most {Q2}), top layer, ℓ in nats/char on validation text; mean "
        "and sd over seeds")
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
    q_max = int(sec.tables["decay"]["q to"].max())
    short = (f" These runs measured q only up to {q_max} (probes.error_flow_q), below "
             f"{Q2}: their rate is over q = {Q1} … {q_max}, comparable between rows with the "
             f"same 'q to' but not with rates over q = {Q1} … {Q2}." if q_max < Q2 else "")
    sec.text = (f"The mean change of log ‖·‖ per step between q = {Q1} and q = {Q2}, or the "
                "largest q measured if smaller ('q to'), through the top layer (negative: "
                "the error vanishes; 0: it is carried unchanged), per run, then the mean and "
                "sd over seeds." + short + " A '–' is explained in the row's 'why –' column: "
                "sd needs two or more seeds; a rate needs a non-zero gradient at both ends.")
    return sec


def decay_table(rates: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, variant, state, when, q to): the mean and sd over seeds of the decay
    rate, n seeds, and 'why –': why a cell of the row is empty (one seed: no sd; a rate
    that could not be computed, with decay's reason)."""
    rows = []
    for key, g in rates.groupby(["dataset", "variant", "state", "when", "q to"]):
        ok = g.rate.dropna()
        why = list(dict.fromkeys(w for w in g.why if w))
        if len(ok) < 2:
            why.append("one seed: no sd" if len(g) == 1 else
                       f"{len(ok)} of {len(g)} seeds with a rate: no sd")
        rows.append(dict(zip(["dataset", "variant", "state", "when", "q to"], key,
                             strict=True)) | {
            f"log-decay per step (q {Q1}→q to), mean": ok.mean() if len(ok) else
            float("nan"),
            "sd": ok.std(ddof=1) if len(ok) > 1 else float("nan"),
            "n seeds": len(g), "why –": "; ".join(why)})
    table = pd.DataFrame(rows)
    if not table["why –"].astype(bool).any():
        table = table.drop(columns="why –")
    order = {v: i for i, v in enumerate(variant_order(table.variant))}
    return table.sort_values(
        ["dataset", "state", "when", "variant"],
        key=lambda c: c.map(order) if c.name == "variant" else c).reset_index(drop=True)
