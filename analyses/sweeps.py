"""From the Optuna studies: the optimisation history, BPTT × clipping heatmap and parameter
importances, drawn from each study's logged trials by study.sweep.figures (the figures the
study logs to its own run)."""

from __future__ import annotations

from pathlib import Path

from analyses.common import Section, save
from analyses.runs import Runs
from study.sweep.figures import bptt_clip_heatmap, history_plot, importance_bars


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
        # the study's own figures (study.sweep.figures): the ones logged to its run
        sec.figures.append(save(history_plot(trials), out, f"study_{name}_history", (
            f"Study {name}: validation loss (nats/char, val split) of each trial (pruned: "
            "its last report) and the best so far (the study's optimization_history.png).")))
        heat = bptt_clip_heatmap(trials)
        if heat is not None:
            sec.figures.append(save(heat, out, f"study_{name}_heatmap", (
                f"Study {name}: per k2 × clipping cell, the best complete trial's "
                "validation loss (nats/char, val split); p: only pruned, ×: only diverged "
                "trials (the study's bptt_clip_heatmap.png).")))
        imp = runs.csv(s.run_id, "study/importances.csv")
        if imp is not None and len(imp):
            sec.figures.append(save(importance_bars(imp), out, f"study_{name}_importances", (
                f"Study {name}: parameter importances, share of the variance of the "
                "validation loss (the study's importances.png).")))
            sec.tables[f"importance_{name}"] = imp
            sec.captions[f"importance_{name}"] = (
                f"Study {name}: parameter importances, share of the variance of the "
                "validation loss (nats/char, validation split)")
        best = done.nsmallest(5, "val_nats_per_char")[
            ["trial", "k2", "k1", "clip", "lr", "val_nats_per_char"]] if len(done) else done
        sec.tables[f"best_{name}"] = best.rename(columns={"val_nats_per_char":
                                                          "val nats/char"})
        sec.captions[f"best_{name}"] = (
            f"Study {name}: its five best complete trials by validation loss (nats/char, "
            "validation split)")
        counts = trials.state.value_counts().to_dict()
        sec.text += (f"**{name}**: {len(trials)} trials "
                     f"({', '.join(f'{v} {k.lower()}' for k, v in counts.items())}) in "
                     f"{float(s.get('sweep_minutes', float('nan'))):.1f} min; its best five "
                     "trials are tabled below. ")
    if not found:
        sec.missing = ("no study runs: run `python -m study.run configs/sweep_bptt_clip.yaml`")
    return sec
