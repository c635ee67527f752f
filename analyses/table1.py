"""Karpathy15's Table 1: test loss (nats/char) per cell type × depth × size, for War and
Peace and the Linux kernel, with the paper's value beside ours where the setup matches."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from analyses.common import Section
from analyses.runs import Runs
from analyses.seeds import width
from study.engine.cells import CELLS, variants

PUBLISHED = Path(__file__).with_name("published.yaml")


def published() -> dict:
    return yaml.safe_load(PUBLISHED.read_text())


def cell_types() -> list[str]:
    """Karpathy15's three cell types: the variants named after their family."""
    return [v for v in variants() if CELLS[v].family == v]


def build(runs: Runs, out: Path) -> Section:
    sec = Section("Table 1: cell types × depth × size (Karpathy15)")
    df = runs.train
    cells = cell_types()
    df = df[df["tag.variant"].isin(cells)] if not df.empty else df
    if df.empty:
        sec.missing = (f"no finished {'/'.join(cells)} runs: run `python -m study.run "
                       "configs/ablation.yaml` (CPU) or configs/karpathy2015.yaml (GPU)")
        return sec
    pub = published()["karpathy2015_table1"]
    df = df.assign(width=width(df).astype(int), layers=df["param.model.num_layers"].astype(int),
                   params=pd.to_numeric(df["tag.num_params"], errors="coerce"))
    rows = []
    for (dataset, layers, w), g in df.groupby(["tag.dataset", "layers", "width"]):
        row = {"dataset": dataset, "layers": layers, "row width": w}
        for cell in cells:
            c = g[g["tag.variant"] == cell]
            row[f"{cell} test nats/char"] = c.test_nats_per_char.mean() if len(c) \
                else float("nan")
            row[f"{cell} params"] = int(c.params.mean()) if len(c) else float("nan")
        paper = pub["rows"].get(int(w), {}).get(int(layers)) \
            if dataset == pub["dataset"] else None
        row["paper lstm test nats/char"] = paper if paper is not None else float("nan")
        row["epochs"] = int(g["param.train.epochs"].max())
        rows.append(row)
    table = pd.DataFrame(rows).sort_values(["dataset", "row width", "layers"])
    table.to_csv(out / "table1.csv", index=False)
    sec.tables["table1"] = table
    sec.captions["table1"] = (
        "Table 1: test loss in nats/char on the test split per cell type, depth and width "
        "(mean over seeds), parameter counts, and the paper's LSTM value")
    sec.sources = list(df.run_id)
    matched = "tag.row_width" in df and (df["tag.row_width"].astype(str) !=
                                         df["param.model.hidden_size"].astype(str)).any()
    sec.text = (
        "Test loss in nats/char on the test split (lower is better) from the "
        "best-validation checkpoint, the mean over seeds. "
        + ("RNN and GRU widths were matched to the LSTM's parameter count per row, as in the "
           "paper. " if matched else "All cells have the row's width (equal width, not equal "
           "parameters: the GRU has 3/4 and the RNN 1/4 of the LSTM's recurrent weights). ")
        + f"'paper lstm test nats/char' is {pub['source']} ({pub['status']}); our runs "
        "trained for the epochs shown, the paper's for up to 50.")
    return sec
