"""Training dynamics against n-grams (Karpathy15 §4): how close each kept snapshot of a run
comes to the predictions of n-gram models of order 1..9, read from the runs' errors/
dynamics.csv (study.dynamics; runs trained with train.keep_checkpoints: all, e.g.
configs/dynamics.yaml)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from analyses.common import COLUMN_WIDTH, Section, plt, save, variant_order
from analyses.runs import Runs, describe_run

KEY = "errors/dynamics_closest_order"


def frames(runs: Runs) -> list[tuple[pd.Series, pd.DataFrame]]:
    """(run row, its dynamics.csv) for every finished training run that has one."""
    train = runs.train
    if KEY not in train:
        return []
    out = []
    for _, r in train[train[KEY].notna()].iterrows():
        df = runs.csv(r.run_id, "errors/dynamics.csv")
        if df is not None and len(df):
            out.append((r, df))
    return sorted(out, key=lambda x: (x[0].get("tag.dataset", ""),
                                      variant_order([x[0].get("tag.variant", "")])[0]))


def closest_table(found) -> pd.DataFrame:
    """Per run, the snapshots where the closest order changes (and the first and last):
    updates, epochs, the closest order and its JS divergence."""
    rows = []
    for r, df in found:
        near = df.loc[df.groupby("update").js_nats.idxmin()].sort_values("update")
        change = near.order.ne(near.order.shift())
        change.iloc[-1] = True
        for s in near[change].itertuples():
            rows.append({"dataset": r.get("tag.dataset"), "variant": r.get("tag.variant"),
                         "run": str(r.run_id)[:8], "updates": int(s.update),
                         "epochs": round(float(s.epoch), 3), "closest n-gram order": int(s.order),
                         "JS to it (nats)": s.js_nats})
    return pd.DataFrame(rows)


def figure(found, out: Path):
    n = len(found)
    fig, axes = plt.subplots(1, n, figsize=(COLUMN_WIDTH * 1.3 * n, 2.8), squeeze=False,
                             sharey=True)
    cmap = plt.get_cmap("viridis")
    for ax, (r, df) in zip(axes[0], found, strict=True):
        orders = sorted(df.order.unique())
        for j, k in enumerate(orders):
            d = df[df.order == k].sort_values("update")
            ax.plot(d["update"], d.js_nats, "o-", ms=2, lw=1,
                    color=cmap(0.9 * j / max(1, len(orders) - 1)), label=f"order {k}")
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlim(left=0)
        ax.set_ylim(0, math.log(2) * 1.02)
        ax.set_title(describe_run(r), fontsize=7)
        ax.set_xlabel("updates (symmetric log; 0: initial weights)")
    axes[0][0].set_ylabel("mean JS divergence on val (nats)")
    axes[0][-1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                       title="n-gram", title_fontsize=6)
    return save(fig, out, "dynamics", "The model's predictions on a validation stretch "
                "against each n-gram order's (mean Jensen–Shannon divergence, nats) at each "
                "kept snapshot: the lowest line is the order the model is closest to.")


def build(runs: Runs, out: Path) -> Section:
    sec = Section("Training dynamics against n-grams (Karpathy15)")
    found = frames(runs)
    if not found:
        sec.missing = ("no run kept its snapshots: train with train.keep_checkpoints: all and "
                       "probes.errors: true (`python -m study.run configs/dynamics.yaml`), or "
                       "run `python -m study.errors RUN_ID` on such a run")
        return sec
    table = closest_table(found)
    table.to_csv(out / "dynamics.csv", index=False)
    sec.tables["dynamics"] = table
    sec.captions["dynamics"] = (
        "The snapshots (updates done; epochs) at which another n-gram order becomes the "
        "closest to the model's predictions on the validation stretch, and the last one; "
        "the Jensen–Shannon divergence to that order in nats (0: the same predictions; at "
        "most ln 2 = 0.693)")
    sec.figures.append(figure(found, out))
    sec.sources = [str(r.run_id) for r, _ in found]
    path = []
    for (dataset, variant), g in table.groupby(["dataset", "variant"], sort=False):
        steps = g.sort_values("updates")["closest n-gram order"].tolist()
        path.append(f"{variant} on {dataset}: " + " → ".join(
            str(o) for i, o in enumerate(steps) if i == 0 or o != steps[i - 1]))
    sec.text = (
        "Each kept snapshot of a run (at initialisation, after updates 1, 2, 4, … of the first "
        "epoch and after every epoch) predicts every character of the first "
        "probes.dynamics_chars characters of the validation split; the same is done by "
        "interpolated Kneser–Ney n-grams of order 1..9 fitted on the train split, and the "
        "two predictive distributions are compared by their Jensen–Shannon divergence "
        "(nats), averaged over the positions (study/dynamics.py). The order closest to the "
        "model, snapshot after snapshot: " + "; ".join(path) + ".")
    return sec
