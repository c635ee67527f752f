"""Learning curves: validation nats/char against epoch and against wall time, per variant."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from analyses.common import COLUMN_WIDTH, Section, palette, save
from analyses.runs import Runs


def build(runs: Runs, out: Path) -> Section:
    sec = Section("Learning curves")
    df = runs.of_kind("train")
    if df.empty:
        sec.missing = "no training runs: run `python -m study.run configs/ablation.yaml`"
        return sec
    rows = []
    for _, r in df.iterrows():
        val = runs.history(r.run_id, "val_nats_per_char")
        secs = runs.history(r.run_id, "epoch_seconds")
        if val.empty:
            continue
        minutes = secs.set_index("step").value.sort_index().cumsum() / 60
        for s, v in zip(val.step, val.value, strict=True):
            rows.append({"variant": r.get("tag.variant"),
                         "dataset": r.get("tag.dataset"), "epoch": s,
                         "minutes": minutes.get(s, float("nan")), "val": v, "run": r.run_id})
    if not rows:
        sec.missing = "no per-epoch validation metrics found in the selected runs"
        return sec
    curves = pd.DataFrame(rows)
    curves.to_csv(out / "learning_curves.csv", index=False)
    sec.sources = sorted(curves.run.unique())
    datasets = sorted(curves.dataset.dropna().unique())
    colours = palette(sorted(curves.variant.dropna().unique()))
    fig, axes = plt.subplots(len(datasets), 2, figsize=(2 * COLUMN_WIDTH, 2.4 * len(datasets)),
                             squeeze=False)
    for i, dataset in enumerate(datasets):
        d = curves[curves.dataset == dataset]
        hi = d.groupby("variant").val.min().max()  # keep a diverging variant from flattening
        for j, x in enumerate(("epoch", "minutes")):
            ax = axes[i][j]
            sns.lineplot(data=d, x=x, y="val", hue="variant", units="run", estimator=None,
                         hue_order=sorted(colours), palette=colours,
                         marker="o", markersize=3, ax=ax, legend=(i == 0 and j == 1))
            ax.set(xlabel="epoch" if x == "epoch" else "wall time (min)",
                   ylabel="validation loss (nats/char)", title=dataset)
            lo = d.val.min()
            ax.set_ylim(lo - 0.05, min(d.val.max(), hi + 0.5) + 0.05)
    if axes[0][1].get_legend():
        sns.move_legend(axes[0][1], "upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    sec.figures.append(save(fig, out, "learning_curves", (
        "Validation loss per epoch and against training wall time, one line per run "
        "(axes clipped so that a diverging variant does not hide the others).")))
    return sec
