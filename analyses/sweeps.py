"""From the Optuna studies: the optimisation history, BPTT × clipping heatmap and parameter
importances, drawn from each study's logged trials by study.sweep.figures (the figures the
study logs to its own run)."""

from __future__ import annotations

from pathlib import Path

from analyses.common import Section, save
from analyses.runs import Runs
from study.sweep.figures import bptt_clip_heatmap, history_plot, importance_bars


def clipping_table(runs: Runs, trials):
    """For a study over learning rates and clipping: one row per trial with its outcome and
    its last epoch's clip rate and pre-clip gradient-norm quantiles (from its MLflow run);
    None for other studies."""
    if "lr" not in trials or trials.lr.isna().all() or trials["clip"].nunique() < 2:
        return None
    kids = runs.of_kind("trial")
    cols = ["clip_rate", "grad_norm_preclip_p50", "grad_norm_preclip_p99"]
    per_run = kids.set_index("run_id")[[c for c in cols if c in kids]] if len(kids) else None
    rows = []
    for t in trials.sort_values(["lr", "clip"]).itertuples():
        m = per_run.loc[t.mlflow_run_id] if per_run is not None and \
            t.mlflow_run_id in per_run.index else {}
        outcome = getattr(t, "outcome", t.state.lower())
        rows.append({"lr": t.lr, "clip": t.clip, "outcome": outcome,
                     "val nats/char": t.val_nats_per_char,
                     **{c.replace("grad_norm_preclip_", "grad norm ") if c != "clip_rate"
                        else "clip rate": m.get(c, float("nan")) for c in cols}})
    import pandas as pd

    return pd.DataFrame(rows)


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
        done = trials[(trials.state == "COMPLETE")
                      & (trials.get("outcome", "complete") != "diverged")]
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
        clip_table = clipping_table(runs, trials)
        if clip_table is not None:
            sec.tables[f"clipping_{name}"] = clip_table
            sec.captions[f"clipping_{name}"] = (
                f"Study {name}: per learning rate and clipping, the outcome, the validation "
                "loss after the budget (nats/char, validation split; diverged: the penalty "
                "ln V), and in the last epoch trained the fraction of updates clipped and "
                "the median and 99th percentile of the gradient's L2 norm before clipping")
        counts = (trials.outcome if "outcome" in trials else trials.state).value_counts()
        counts = counts.to_dict()
        sec.text += (f"**{name}**: {len(trials)} trials "
                     f"({', '.join(f'{v} {k.lower()}' for k, v in counts.items())}) in "
                     f"{float(s.get('sweep_minutes', float('nan'))):.1f} min; its best five "
                     "trials are tabled below. ")
    if not found:
        sec.missing = ("no study runs: run `python -m study.run configs/sweep_bptt_clip.yaml`")
    return sec
