"""Gate saturation (Karpathy15 Fig. 3): per layer, gate and unit, the fraction of steps with
the gate below `left` (left-saturated) and above `right` (right-saturated).

Owns the table (saturation_table), its metrics (saturation_metrics: sat.L<layer>.<gate>.*)
and the saturation probe of a run (`saturation_probe`: the metrics, and with a folder its
saturation.csv and saturation.png). The figure itself is study.probes.figures'.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from study.config import ProbesConfig
from study.probes.activations import Activations


def saturation_table(acts: Activations) -> pd.DataFrame:
    rows = []
    for (layer, gate), lf in acts.left.items():
        rf = acts.right[(layer, gate)]
        for unit in range(len(lf)):
            rows.append({"layer": layer, "gate": gate, "unit": unit,
                         "frac_left": float(lf[unit]), "frac_right": float(rf[unit])})
    return pd.DataFrame(rows, columns=["layer", "gate", "unit", "frac_left", "frac_right"])


def saturation_metrics(table: pd.DataFrame) -> dict[str, float]:
    out = {}
    for (layer, gate), sub in table.groupby(["layer", "gate"]):
        key = f"sat.L{layer}.{gate.split(' ')[0]}"
        out[f"{key}.left_mean"] = float(sub["frac_left"].mean())
        out[f"{key}.right_mean"] = float(sub["frac_right"].mean())
        out[f"{key}.units_right_gt50pct"] = int((sub["frac_right"] > 0.5).sum())
        out[f"{key}.units_right_gt90pct"] = int((sub["frac_right"] > 0.9).sum())
    return out


def saturation_note(model, table: pd.DataFrame, cfg: ProbesConfig) -> str:
    """What a reader of the scatter must know about this cell's gates ("" if nothing)."""
    note = ""
    if getattr(model.cell, "discrete_gates", False):
        note = "binary gates are 0 or 1 by construction: every unit lies on the diagonal"
    if cfg.gru_update == "pytorch" and "u" in set(table["gate"]):
        note = "GRU update gate u in PyTorch's convention, h = (1-u)·n + u·h'"
    return note


def saturation_probe(model, acts: Activations, cfg: ProbesConfig, title: str,
                     folder: Path | None) -> dict[str, float]:
    """The saturation metrics; with a folder, also saturation.csv and saturation.png (no
    figure for a model without gates)."""
    from study.probes import figures

    sat = saturation_table(acts)
    metrics = saturation_metrics(sat)
    if folder is not None:
        sat.to_csv(folder / "saturation.csv", index=False)
        if len(sat):
            fig = figures.saturation_scatter(sat, f"{title}: gate saturation", cfg.left,
                                             cfg.right, saturation_note(model, sat, cfg))
            fig.savefig(folder / "saturation.png", dpi=120)
            figures.plt.close(fig)
    return metrics
