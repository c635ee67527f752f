"""Interpretable units (Karpathy15's cell figures): the best unit per concept drawn over a
stretch of validation text, red at −1 through white to blue at +1."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import pandas as pd

from analyses.common import COLUMN_WIDTH, Section, save
from analyses.runs import Runs, describe_run
from analyses.saturation import pick


def build(runs: Runs, out: Path) -> Section:
    sec = Section("Interpretable units")
    datasets = sorted(runs.train["tag.dataset"].unique()) if not runs.train.empty else []
    tables = []
    for dataset in datasets:
        row = pick(runs, "lstm", dataset)
        if row is None:
            continue
        best = runs.csv(row.run_id, "probes/best_units.csv")
        if best is None or best.empty:
            continue
        best = best.sort_values("score", ascending=False)
        best.insert(0, "run", describe_run(row))
        tables.append(best[["run", "concept", "kind", "layer", "state", "unit", "score",
                            "sign"]])
        traces = {a.path for a in runs.client.list_artifacts(row.run_id, "probes/traces")}
        images = []
        for concept in best.concept[:4]:
            png = f"probes/traces/{concept}_1.png"
            local = runs.artifact(row.run_id, png) if png in traces else None
            if local is not None:
                images.append((concept, mpimg.imread(local)))
        if images:
            fig, axes = plt.subplots(len(images), 1,
                                     figsize=(2 * COLUMN_WIDTH, 1.9 * len(images)),
                                     squeeze=False)
            for ax, (_, img) in zip(axes[:, 0], images, strict=True):
                ax.imshow(img)
                ax.set_axis_off()
            fig.tight_layout()
            sec.figures.append(save(fig, out, f"units_{dataset}", (
                f"{describe_run(row)}: the best unit for each of the top concepts drawn over "
                "validation text (red −1, white 0, blue +1).")))
        sec.sources.append(row.run_id)
    if not tables:
        sec.missing = ("no LSTM run with probes/best_units.csv: run the ablation (probes on) "
                       "or `python -m study.inspect RUN_ID --probe`")
        return sec
    table = pd.concat(tables, ignore_index=True)
    table.to_csv(out / "best_units.csv", index=False)
    sec.tables["best_units"] = table
    sec.text = ("Best unit per concept (score: max(AUC, 1 − AUC) for binary concepts, "
                "|Spearman ρ| for continuous ones; sign +1: the unit is higher inside or "
                "grows with the concept).")
    return sec
