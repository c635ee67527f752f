"""The end of a study: the trials table, parameter importances, and what the parent
MLflow run gets (best trial, metrics, figures)."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import optuna
import pandas as pd
from optuna.trial import TrialState

from study.config import Config
from study.formats import bits
from study.sweep.space import clip_label


def trials_table(study: optuna.Study) -> pd.DataFrame:
    rows = []
    trials = study.get_trials(deepcopy=False)
    retries = {t.user_attrs["retry_of"]: t for t in trials if "retry_of" in t.user_attrs}
    for t in trials:
        if t.state == TrialState.WAITING:
            continue
        lost = retries[t.number].user_attrs.get("retry_reason") if t.number in retries else None
        p = t.params
        diverged = bool(t.user_attrs.get("diverged"))
        rows.append({
            "trial": t.number, "state": t.state.name,
            "outcome": "diverged" if diverged else t.state.name.lower(),
            "val_nats_per_char": t.value,
            "k2": p.get("k2"), "k1_fraction": p.get("k1_fraction"),
            "k1": t.user_attrs.get("k1", max(1, round(p["k1_fraction"] * p["k2"]))
                                   if "k1_fraction" in p else None),
            "clip": clip_label(p) if "clip_mode" in p else None, "lr": p.get("lr"),
            "epochs_reported": len(t.intermediate_values),
            "last_reported_val": (t.intermediate_values[max(t.intermediate_values)]
                                  if t.intermediate_values else None),
            "last_finite_val_nats_per_char": t.user_attrs.get("last_finite_val_nats_per_char"),
            "minutes": (t.duration.total_seconds() / 60) if t.duration else None,
            "reason": t.user_attrs.get("fail_reason") or t.user_attrs.get("pruned_reason")
            or lost,
            "duplicate_of": t.user_attrs.get("duplicate_of"),
            "retry_of": t.user_attrs.get("retry_of"),
            "mlflow_run_id": t.user_attrs.get("mlflow_run_id")})
    return pd.DataFrame(rows)


def importances(study: optuna.Study) -> pd.DataFrame:
    """PED-ANOVA and fANOVA importances over the complete trials, where they can be had."""
    from optuna.importance import (
        FanovaImportanceEvaluator,
        PedAnovaImportanceEvaluator,
        get_param_importances,
    )

    rows = []
    for label, evaluator in (("PED-ANOVA", PedAnovaImportanceEvaluator()),
                             ("fANOVA", FanovaImportanceEvaluator(seed=0))):
        try:
            imp = get_param_importances(study, evaluator=evaluator)
        except Exception as e:  # noqa: BLE001 - too few trials, or no variation
            print(f"{label} importances unavailable: {e}", file=sys.stderr)
            continue
        rows += [{"method": label, "param": k, "importance": v} for k, v in imp.items()]
    return pd.DataFrame(rows, columns=["method", "param", "importance"])


def _given(v) -> bool:
    return v is not None and v == v  # neither None nor NaN


def summarise(study: optuna.Study, cfg: Config, parent, minutes: float) -> dict:
    from study.sweep import figures

    table = trials_table(study)
    complete = table[(table.state == "COMPLETE") & (table.outcome != "diverged")]
    out = {"trials": len(table), "complete": len(complete),
           "diverged": int((table.outcome == "diverged").sum()),
           "pruned": int((table.state == "PRUNED").sum()),
           "failed": int(((table.state == "FAIL") & (table.outcome != "diverged")).sum()),
           "minutes": minutes, "table": table}
    best = None
    if len(complete):
        best = complete.loc[complete.val_nats_per_char.idxmin()]
        out["best"] = best
    imp = importances(study) if len(complete) >= 2 else pd.DataFrame()
    out["importances"] = imp
    print(f"\nStudy {study.study_name!r}: {out['complete']} converged, {out['diverged']} "
          f"diverged (a result: valued at the stated penalty), {out['pruned']} pruned, "
          f"{out['failed']} failed (incl. lost workers' trials, run again) in {minutes:.1f} min")
    if best is not None:
        print(f"best: trial {best.trial} — k2 {best.k2}, k1 {best.k1}, clip {best['clip']}"
              + (f", lr {best.lr:g}" if _given(best.lr) else "")
              + f": val {best.val_nats_per_char:.4f} nats/char "
              f"({bits(best.val_nats_per_char):.4f} bits/char)")
    if len(imp):
        for method, sub in imp.groupby("method"):
            print(f"{method} importance: " + ", ".join(
                f"{r.param} {r.importance:.2f}" for r in sub.itertuples()))
    if parent is None:
        return out
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        table.to_csv(d / "trials.csv", index=False)
        if len(imp):
            imp.to_csv(d / "importances.csv", index=False)
        for fname, fig in (("optimization_history.png", figures.history_plot(table)),
                           ("bptt_clip_heatmap.png", figures.bptt_clip_heatmap(table)),
                           ("importances.png", figures.importance_bars(imp)
                            if len(imp) else None)):
            if fig is not None:
                fig.savefig(d / fname, dpi=120)
                figures.plt.close(fig)
        parent.log_artifacts(d, "study")
    metrics = {"trials_complete": out["complete"], "trials_diverged": out["diverged"],
               "trials_pruned": out["pruned"],
               "trials_failed": out["failed"], "sweep_minutes": minutes}
    tags = {}
    if best is not None:
        metrics["best_val_nats_per_char"] = best.val_nats_per_char
        metrics["best_val_bits_per_char"] = bits(best.val_nats_per_char)
        tags.update({"best_trial": int(best.trial), "best_run_id": best.mlflow_run_id,
                     "best_params": f"k2={best.k2} k1={best.k1} clip={best['clip']}"
                     + (f" lr={best.lr:g}" if _given(best.lr) else "")})
    for r in imp.itertuples():
        metrics[f"importance.{r.method}.{r.param}"] = r.importance
    parent.log_metrics(metrics)
    parent.set_tags(tags)
    return out
