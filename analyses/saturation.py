"""Karpathy15 Fig. 3: gate saturation of an LSTM and a GRU, one point per gate unit."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import seaborn as sns

from analyses.common import COLUMN_WIDTH, Section, save
from analyses.runs import Runs, describe_run

PREFERRED = {"lstm": ["lstm", "peephole"], "gru": ["gru"]}


def pick(runs: Runs, family: str, dataset: str | None = None):
    df = runs.train
    for variant in PREFERRED[family]:
        d = df[df["tag.variant"] == variant] if not df.empty else df
        if dataset is not None and not d.empty:
            d = d[d["tag.dataset"] == dataset]
        if not d.empty:
            return d.sort_values("param.model.num_layers", ascending=False).iloc[0]
    return None


def build(runs: Runs, out: Path) -> Section:
    sec = Section("Gate saturation (Karpathy15 Fig. 3)")
    datasets = sorted(runs.train["tag.dataset"].unique()) if not runs.train.empty else []
    panels = []
    for dataset in datasets:
        for family in ("lstm", "gru"):
            row = pick(runs, family, dataset)
            if row is None:
                continue
            table = runs.csv(row.run_id, "probes/saturation.csv")
            if table is None or table.empty:
                continue
            for gate in table.gate.unique():
                panels.append((dataset, describe_run(row), gate, table[table.gate == gate]))
            sec.sources.append(row.run_id)
    if not panels:
        sec.missing = ("no LSTM or GRU run with probes/saturation.csv: run the ablation "
                       "(probes on), or `python -m study.inspect RUN_ID --probe`")
        return sec
    by_dataset: dict[str, list] = {}
    for p in panels:
        by_dataset.setdefault(p[0], []).append(p)
    for dataset, ps in by_dataset.items():
        fig, axes = plt.subplots(1, len(ps), figsize=(1.45 * COLUMN_WIDTH / 2 * len(ps), 2.3),
                                 squeeze=False, sharey=True)
        for ax, (_, label, gate, t) in zip(axes[0], ps, strict=True):
            sns.scatterplot(data=t, x="frac_right", y="frac_left", hue="layer",
                            palette="viridis", s=10, alpha=0.8, ax=ax, legend=ax is axes[0][0])
            ax.plot([0, 1], [1, 0], color="0.85", lw=0.6, zorder=0)
            ax.set(xlim=(-0.03, 1.03), ylim=(-0.03, 1.03), xlabel="right-saturated",
                   ylabel="left-saturated", title=f"{label.split(' (')[0]}: {gate}")
            ax.set_aspect("equal")
        fig.tight_layout()
        sec.figures.append(save(fig, out, f"saturation_{dataset}", (
            f"{dataset}: fraction of time each gate unit is left-saturated (< 0.1) against "
            "right-saturated (> 0.9), colour = layer; GRU update gate u in PyTorch's "
            "convention (u = 1 keeps the state).")))
    sec.text = ("Each point is one unit of one gate; points near the x axis on the right "
                "are gates almost always open (for a forget gate: a unit that remembers).")
    return sec
