"""Karpathy15 Fig. 3: gate saturation of an LSTM and a GRU, one point per gate unit, drawn by
study.probes.figures.saturation_scatter (the figure each run's probes draw), a row per run."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import matplotlib.pyplot as plt
import pandas as pd

from analyses.common import COLUMN_WIDTH, Section, save
from analyses.runs import Runs
from study.config import ProbesConfig
from study.engine.cells import CELLS, variants
from study.probes.figures import saturation_scatter
from study.probes.saturation import saturation_note

# inches per scatter panel: one panel is as wide as a paper column's square plot, so a row
# of three (an LSTM's gates) stays readable when the report scales it to its page width
PANEL = 0.8 * COLUMN_WIDTH


def candidates(family: str) -> list[str]:
    """The variants the figure may show for a family, in order of preference: the one named
    after the family (Karpathy15's cell), then the others in the registry's order; none with
    discrete gates (they saturate by construction)."""
    names = [v for v in variants(family) if not CELLS[v].discrete_gates]
    return sorted(names, key=lambda v: v != family)


def families() -> list[str]:
    return list(dict.fromkeys(CELLS[v].family for v in variants()))


def ranked(train, family: str, dataset: str | None = None):
    """The runs of a family (on a corpus) the figure may show, best first: by candidate
    variant, then the deepest, then the lowest seed."""
    if train.empty:
        return train
    d = train[train["tag.variant"].isin(candidates(family))]
    if dataset is not None:
        d = d[d["tag.dataset"] == dataset]
    rank = {v: i for i, v in enumerate(candidates(family))}
    seed = pd.to_numeric(d.get("tag.seed"), errors="coerce") if "tag.seed" in d else 0
    return d.assign(_rank=d["tag.variant"].map(rank), _seed=seed).sort_values(
        ["_rank", "param.model.num_layers", "_seed"], ascending=[True, False, True]
    ).drop(columns=["_rank", "_seed"])


def shown(runs: Runs, family: str, dataset: str):
    """The run the figure shows for a family on a corpus, and its saturation table: the
    first of `ranked` with one; (None, None) if none has."""
    for _, row in ranked(runs.train, family, dataset).iterrows():
        table = runs.csv(row.run_id, "probes/saturation.csv")
        if table is not None and not table.empty:
            return row, table
    return None, None


def _thresholds(row) -> ProbesConfig:
    """The run's own probe settings (left, right, gru_update), defaults where not logged."""
    d = ProbesConfig()

    def param(key, cast):
        v = row.get(f"param.probes.{key}")
        return cast(v) if isinstance(v, str) and v else getattr(d, key)

    return ProbesConfig(left=param("left", float), right=param("right", float),
                        gru_update=param("gru_update", str))


def build(runs: Runs, out: Path) -> Section:
    sec = Section("Gate saturation (Karpathy15 Fig. 3)")
    datasets = sorted(runs.train["tag.dataset"].unique()) if not runs.train.empty else []
    drawn: dict[str, list] = {}  # dataset -> [(run row, saturation table)]
    for dataset in datasets:
        for family in families():
            row, table = shown(runs, family, dataset)
            if row is not None:
                drawn.setdefault(dataset, []).append((row, table))
                sec.sources.append(row.run_id)
    if not drawn:
        sec.missing = ("no LSTM or GRU run with probes/saturation.csv: run the ablation "
                       "(probes on), or `python -m study.inspect RUN_ID --probe`")
        return sec
    for dataset, found in drawn.items():
        cols = max(t.gate.nunique() for _, t in found)
        fig, axes = plt.subplots(len(found), cols, squeeze=False,
                                 figsize=(PANEL * cols, 1.05 * PANEL * len(found)))
        limits, notes = set(), []
        for ax_row, (row, table) in zip(axes, found, strict=True):
            cfg = _thresholds(row)
            limits.add((cfg.left, cfg.right))
            # the run's own figure (study.probes.figures), drawn into this row; its note
            # (what a reader must know about the cell's gates) goes to the caption, once
            note = saturation_note(SimpleNamespace(cell=CELLS.get(row["tag.variant"])),
                                   table, cfg)
            if note:
                notes.append(f"{row['tag.variant']}: {note}")
            saturation_scatter(table, f"{row['tag.variant']} seed {row.get('tag.seed', '?')}",
                               cfg.left, cfg.right, ax=list(ax_row))
            for ax in ax_row[table.gate.nunique():]:
                ax.set_axis_off()
        fig.tight_layout()
        left, right = limits.pop() if len(limits) == 1 else ("the run's", "the run's")
        sec.figures.append(save(fig, out, f"saturation_{dataset}", (
            f"{dataset}: fraction of time each gate unit is left-saturated (< {left}) "
            f"against right-saturated (> {right}), colour = layer, a row per cell type "
            "(the figure of each run's probes/saturation.png)"
            + "".join(f"; {n}" for n in notes) + ".")))
    sec.text = ("Each point is one unit of one gate; points near the x axis on the right "
                "are gates almost always open (for a forget gate: a unit that remembers). "
                "Shown per cell type: a run of the variant named after it (else the first of "
                "its family in the registry with continuous gates), the deepest, lowest seed, "
                "with probes.")
    return sec
