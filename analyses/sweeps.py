"""From the Optuna studies: the BPTT × clipping heatmap, optimisation history and
parameter importances, rebuilt from each study's logged trials."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from analyses.common import COLUMN_WIDTH, Section, save
from analyses.runs import Runs


def build(runs: Runs, out: Path) -> Section:
    sec = Section("Sweeps of BPTT length and clipping")
    studies = runs.studies
    found = False
    for _, s in studies.iterrows():
        trials = runs.csv(s.run_id, "study/trials.csv")
        if trials is None or trials.empty:
            continue
        found = True
        name = s.get("tag.study", s.run_name)
        sec.sources.append(s.run_id)
        done = trials[trials.state == "COMPLETE"]
        fig, axes = plt.subplots(1, 2, figsize=(2 * COLUMN_WIDTH, 2.6))
        for state, marker in (("COMPLETE", "o"), ("PRUNED", "v"), ("FAIL", "x")):
            t = trials[trials.state == state]
            y = t.val_nats_per_char if state == "COMPLETE" else t.last_reported_val
            axes[0].scatter(t.trial, y, marker=marker, s=14, label=state.lower())
        if len(done):
            axes[0].step(done.trial, done.val_nats_per_char.cummin(), where="post",
                         color="0.3", lw=1, label="best so far")
        axes[0].set(xlabel="trial", ylabel="val loss (nats/char)", title=f"{name}: history")
        axes[0].legend()
        if len(done) and done.k2.nunique() > 1:
            grid = done.pivot_table(index="clip", columns="k2", values="val_nats_per_char",
                                    aggfunc="min")
            if len(grid.columns) > 8:  # continuous k2 (TPE): bin it
                d = done.assign(k2=pd.qcut(done.k2, 6, duplicates="drop").astype(str))
                grid = d.pivot_table(index="clip", columns="k2", values="val_nats_per_char",
                                     aggfunc="min")
            if len(grid.index) > 10:
                d = done.assign(clip=done["clip"].str.split(":").str[0])
                grid = d.pivot_table(index="clip", columns="k2", values="val_nats_per_char",
                                     aggfunc="min")
            sns.heatmap(grid, annot=True, fmt=".3f", cmap="viridis_r", ax=axes[1],
                        annot_kws={"fontsize": 6}, cbar_kws={"label": "nats/char"})
            axes[1].set(xlabel="k2 (steps back-propagated)", ylabel="clipping",
                        title="best val loss per cell")
        else:
            axes[1].set_axis_off()
        fig.tight_layout()
        sec.figures.append(save(fig, out, f"sweep_{name}", (
            f"Study {name}: validation loss of each trial (pruned: last report) and, per "
            "k2 × clipping cell, the best complete trial.")))
        imp = runs.csv(s.run_id, "study/importances.csv")
        if imp is not None and len(imp):
            fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, 2.2))
            sns.barplot(data=imp, y="param", x="importance", hue="method", ax=ax)
            ax.set(xlabel="importance (share of variance)", ylabel="", title=f"{name}")
            fig.tight_layout()
            sec.figures.append(save(fig, out, f"importance_{name}",
                                    f"Study {name}: parameter importances (PED-ANOVA, fANOVA)."))
            sec.tables[f"importance_{name}"] = imp
        best = done.nsmallest(5, "val_nats_per_char")[
            ["trial", "k2", "k1", "clip", "lr", "val_nats_per_char"]] if len(done) else done
        sec.tables[f"best_{name}"] = best
        counts = trials.state.value_counts().to_dict()
        sec.text += (f"**{name}**: {len(trials)} trials "
                     f"({', '.join(f'{v} {k.lower()}' for k, v in counts.items())}) in "
                     f"{float(s.get('sweep_minutes', float('nan'))):.1f} min; its best five "
                     "trials are tabled below. ")
    if not found:
        sec.missing = ("no study runs: run `python -m study.run configs/sweep_bptt_clip.yaml`")
    return sec
