"""What every report section shares: its result type, the figure style and saving, the
variants' order and colours (from the cell registry). Tables are study.formats.markdown_table."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from study.engine.cells import variants  # noqa: E402

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
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # name: its CSV's stem
    # table name -> the caption the report prints above it: what the table is, its unit
    # (nats/char or bits/char) and split; a table without one gets a caption made from its
    # name (analyses.report.caption)
    captions: dict[str, str] = field(default_factory=dict)
    missing: str | None = None  # what to run when the inputs are not there
    sources: list[str] = field(default_factory=list)  # run ids drawn from


NEUTRAL = (0.55, 0.55, 0.55)  # a variant the registry does not know (an old run's)


def variant_order(names) -> list[str]:
    """The variants in the registry's display order (study.engine.cells.CELLS); names it
    does not know (old runs) last, alphabetically."""
    known = variants()
    names = set(names)
    return [v for v in known if v in names] + sorted(n for n in names if n not in known)


def palette(names) -> dict[str, tuple]:
    """One colour per variant, the same in every figure: by its place in the registry (the
    ablation's six, listed first there, get the most distinct ones); unknown names grey,
    a colour no known variant gets."""
    known = variants()
    colours = [c for c in sns.color_palette("tab10") + sns.color_palette("Dark2")
               if len(set(c)) > 1]  # the palettes' own greys are kept for NEUTRAL
    return {v: colours[known.index(v) % len(colours)] if v in known else NEUTRAL
            for v in names}


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
