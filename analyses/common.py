"""What every report section shares: its result type, the figure style, saving, tables."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

COLUMN_WIDTH = 3.4  # inches: one column of a two-column paper


@dataclass
class Figure:
    png: Path
    pdf: Path
    caption: str  # one sentence: what it shows


@dataclass
class Section:
    title: str
    text: str = ""  # markdown
    figures: list[Figure] = field(default_factory=list)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    missing: str | None = None  # what to run when the inputs are not there
    sources: list[str] = field(default_factory=list)  # run ids drawn from


ORDER = ["peephole", "lstm", "gru", "rnn", "nfg", "hard", "cifg", "noaf", "nig", "nog",
         "niaf", "fgr", "lstm1997", "binary"]


def palette(variants) -> dict[str, tuple]:
    """One colour per variant, the same in every figure (the ablation's six get the most
    distinct ones)."""
    colours = sns.color_palette("tab10") + sns.color_palette("Dark2")
    return {v: colours[ORDER.index(v)] if v in ORDER else (0.3, 0.3, 0.3) for v in variants}


def style() -> None:
    sns.set_theme(context="paper", style="whitegrid", font_scale=0.9,
                  rc={"figure.dpi": 150, "savefig.dpi": 200, "axes.titlesize": 9,
                      "axes.labelsize": 8, "legend.fontsize": 7, "xtick.labelsize": 7,
                      "ytick.labelsize": 7, "pdf.fonttype": 42})


def save(fig, out: Path, name: str, caption: str) -> Figure:
    out.mkdir(parents=True, exist_ok=True)
    png, pdf = out / f"{name}.png", out / f"{name}.pdf"
    fig.savefig(png, bbox_inches="tight")
    fig.savefig(pdf, bbox_inches="tight")
    plt.close(fig)
    return Figure(png, pdf, caption)


def markdown_table(df: pd.DataFrame, floats: str = "{:.3f}") -> str:
    if df.empty:
        return "_(no rows)_\n"
    cols = [str(c) for c in df.columns]

    def fmt(v):
        if isinstance(v, float):
            return "–" if v != v else floats.format(v)
        return str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"
