"""Interpretable units: every unit's tanh(c) and h scored against every concept of
study.probes.concepts.

Owns the scores (`auc`, `pearson`, `unit_scores`: ROC-AUC for binary concepts, reported as
max(AUC, 1 − AUC) with its sign; Spearman's ρ, by which units are ranked (a unit may track
a concept monotonically but not linearly), and Pearson's r for continuous ones), the best
units per concept (`best_units`, `describe_unit`) and the units probe of a run
(`units_probe`: unit.<concept>.score/.layer/.unit metrics, unit.<concept> tags, and with a
folder unit_scores.csv and best_units.csv). Their traces are study.probes.traces'.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from study.config import ProbesConfig
from study.probes.activations import Activations
from study.probes.concepts import CONCEPTS, signals


def auc(values: np.ndarray, positive: np.ndarray, ranks: np.ndarray | None = None):
    """ROC-AUC of each column of values (N, U) for the binary labels (N,), by ranks
    (Mann-Whitney U, ties averaged). Pass `ranks` (rankdata(values, axis=0)) when scoring
    many concepts: ranking is the expensive part."""
    pos = positive.astype(bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return np.full(values.shape[1], np.nan)
    if ranks is None:
        ranks = rankdata(values, axis=0)
    return (ranks[pos].sum(0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def pearson(values: np.ndarray, target: np.ndarray) -> np.ndarray:
    v = values - values.mean(0)
    t = target - target.mean()
    denom = np.sqrt((v * v).sum(0) * (t * t).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (v * t[:, None]).sum(0) / denom, np.nan)


UNIT_COLUMNS = ["layer", "state", "unit", "concept", "kind", "score", "sign", "auc",
                "pearson", "spearman"]


def unit_scores(acts: Activations, concept_names: list[str] | None = None) -> pd.DataFrame:
    """One row per (layer, state, unit, concept): the score and its sign (NaN and 0 where
    the stretch gives no score: a concept constant over it)."""
    sig = signals(acts.text, concept_names)
    keep = acts.keep
    rows = []
    for (layer, kind), vals in acts.states.items():
        v = vals[keep].astype(np.float32)  # (N, H)
        ranked = rankdata(v, axis=0)
        for name, s in sig.items():
            s = s[keep]
            c = CONCEPTS[name]
            if c.kind == "binary":
                a = auc(v, s, ranked)
                score, sign = np.maximum(a, 1 - a), np.where(a >= 0.5, 1, -1)
                extra = {"auc": a}
            else:  # ranked by |Spearman ρ|: a position cell may saturate (tanh), not be linear
                r = pearson(v, s)
                rho = pearson(ranked, rankdata(s))
                score, sign = np.abs(rho), np.sign(rho)
                extra = {"pearson": r, "spearman": rho}
            for unit in range(v.shape[1]):
                row = {"layer": layer, "state": kind, "unit": unit, "concept": name,
                       "kind": c.kind, "score": float(score[unit]), "sign": int(sign[unit])
                       if np.isfinite(score[unit]) else 0}
                row.update({k: float(x[unit]) for k, x in extra.items()})
                rows.append(row)
    return pd.DataFrame(rows, columns=UNIT_COLUMNS)


def best_units(scores: pd.DataFrame, top: int = 1) -> pd.DataFrame:
    ok = scores[np.isfinite(scores["score"].astype(float))]
    return (ok.sort_values("score", ascending=False).groupby("concept", sort=False)
            .head(top).sort_values(["concept", "score"], ascending=[True, False]))


def describe_unit(row) -> str:
    state = "tanh(c)" if row["state"] == "c" else "h"
    if row["kind"] == "binary":
        how = f"AUC {row['score']:.3f} ({'+' if row['sign'] > 0 else '−'})"
    else:
        how = f"ρ {row['spearman']:+.3f} (Pearson r {row['pearson']:+.3f})"
    return f"layer {row['layer']} {state}[{row['unit']}]: {how}"


def units_probe(acts: Activations, cfg: ProbesConfig, folder: Path | None
                ) -> tuple[dict[str, float], dict[str, str], pd.DataFrame]:
    """The units' metrics (the best unit of each concept's score: unit.<concept>.score),
    tags (which unit that is: unit.<concept>, described) and all scores; with a folder,
    also unit_scores.csv and best_units.csv."""
    scores = unit_scores(acts, cfg.concepts or None)
    best = best_units(scores, 1)
    metrics, tags = {}, {}
    for _, row in best.iterrows():
        key = f"unit.{row['concept']}"
        metrics[f"{key}.score"] = row["score"]
        tags[key] = describe_unit(row)
    if folder is not None:
        scores.to_csv(folder / "unit_scores.csv", index=False)
        best.to_csv(folder / "best_units.csv", index=False)
    return metrics, tags, scores
