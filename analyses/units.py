"""Interpretable units (Karpathy15's cell figures): per corpus, the best unit for each
concept over all runs, drawn over a stretch of validation text (red −1, white 0, blue +1).
Only concepts a unit actually tracks are drawn (AUC ≥ 0.8 or |ρ| ≥ 0.5)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import pandas as pd

from analyses.common import COLUMN_WIDTH, Section, save
from analyses.runs import Runs, describe_run

SHOWN = {"binary": 0.8, "continuous": 0.5}  # score a concept needs to be drawn


def best_per_concept(runs: Runs) -> pd.DataFrame:
    rows = []
    for _, r in runs.train.iterrows():
        best = runs.csv(r.run_id, "probes/best_units.csv")
        if best is None:
            continue
        for _, u in best.iterrows():
            rows.append({"dataset": r["tag.dataset"], "run": describe_run(r),
                         "run_id": r.run_id, "variant": r["tag.variant"], **u.to_dict()})
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows).sort_values("score", ascending=False)
    return df.groupby(["dataset", "concept"], sort=False).head(1).sort_values(
        ["dataset", "score"], ascending=[True, False])


def one_per_unit(d: pd.DataFrame) -> pd.DataFrame:
    """A unit that tracks two concepts (quotes and C strings) is drawn once."""
    return d.drop_duplicates(["run_id", "layer", "state", "unit"])


def build(runs: Runs, out: Path) -> Section:
    sec = Section("Interpretable units")
    best = best_per_concept(runs)
    if best.empty:
        sec.missing = ("no run with probes/best_units.csv: run the ablation (probes on) or "
                       "`python -m study.inspect RUN_ID --probe`")
        return sec
    best = best.assign(drawn=[s >= SHOWN[k] for s, k in zip(best.score, best.kind,
                                                             strict=True)])
    for dataset, d in best.groupby("dataset"):
        images = []
        for _, u in one_per_unit(d[d.drawn]).head(4).iterrows():
            png = runs.artifact(u.run_id, f"probes/traces/{u.concept}_1.png")
            if png is not None:
                images.append((u, mpimg.imread(png)))
        if not images:
            continue
        fig, axes = plt.subplots(len(images), 1, figsize=(2 * COLUMN_WIDTH, 1.9 * len(images)),
                                 squeeze=False)
        for ax, (u, img) in zip(axes[:, 0], images, strict=True):
            ax.imshow(img)
            ax.set_axis_off()
            ax.set_title(u.variant, fontsize=7, loc="left")
        fig.tight_layout()
        sec.figures.append(save(fig, out, f"units_{dataset}", (
            f"{dataset}: the best unit for each concept a unit tracks (over all runs; its "
            "variant at the top left), drawn over validation text, red −1 … blue +1.")))
        sec.sources += sorted(set(d.run_id))
    table = best[["dataset", "concept", "kind", "score", "sign", "run", "layer", "state",
                  "unit", "drawn"]]
    table.to_csv(out / "best_units.csv", index=False)
    sec.tables["best_units"] = table
    sec.text = ("Best unit per concept and corpus over all runs (score: max(AUC, 1 − AUC) "
                "for binary concepts, |Spearman ρ| for continuous ones; sign +1: higher "
                f"inside, or growing with the concept). Drawn: AUC ≥ {SHOWN['binary']} or "
                f"|ρ| ≥ {SHOWN['continuous']}; concepts no unit tracks are listed, not drawn.")
    return sec
