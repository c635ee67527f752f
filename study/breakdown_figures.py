r"""The error breakdown of study.breakdown drawn: a stacked bar of the share of each category
in the errors (`breakdown_bar` into an Axes, `breakdown_png` as a file), and a page of the
text with each error on its category's colour (`breakdown_html`).

Both use study.breakdown.CATEGORY_COLOURS, one colour per category, with black text on it.
The page follows the layout rule of the traces (study.probes.layout): every character of
the excerpt appears once, in order, except '\r', which is not drawn (a CRLF line ends once);
'\n' is drawn as '↵' and then breaks the line; tabs and runs of spaces are kept
(white-space: pre-wrap). It renders inside MLflow's artifact preview (a sandboxed iframe):
inline CSS, no scripts, no links, nothing fetched.
"""

from __future__ import annotations

import html
import math
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402

from study.breakdown import CATEGORIES, CATEGORY_COLOURS, LABELS, Breakdown  # noqa: E402

NEWLINE = "↵"  # how a '\n' is drawn (as in study.probes.layout)
TEXT_COLOUR = "#000000"  # on every category colour (contrast ≥ 5.2:1, study.breakdown)
OTHER_COLOUR = "#BBBBBB"  # a category the summary names that CATEGORIES does not


def _colour(category: str) -> str:
    return CATEGORY_COLOURS.get(category, OTHER_COLOUR)


def _totals(summary: pd.DataFrame) -> tuple[int, float]:
    """(errors, error rate) read back from a summary: the rows' sums."""
    errors = int(summary["errors"].sum())
    rate = float(summary["frac_of_scored_chars"].sum(min_count=1))
    return errors, rate


def subtitle(summary: pd.DataFrame, p_error: float = 0.5) -> str:
    """What the errors are and how many: 'errors (model p < 0.5): 12,345 = 18.2% of the
    scored characters'."""
    errors, rate = _totals(summary)
    share = f" = {rate:.1%} of the scored characters" if math.isfinite(rate) else ""
    return f"errors (model p < {p_error:g}): {errors:,}{share}"


def breakdown_bar(summary: pd.DataFrame, ax: Axes, p_error: float = 0.5,
                  title: str = "") -> None:
    """One horizontal bar, 0–100 % of the errors, a segment per category in the summary's
    order (study.breakdown.Breakdown.summary, or its CSV), each on its CATEGORY_COLOURS
    colour and labelled with its percentage where it is wide enough (≥ 4 %); the legend,
    below, names every category with its percentage and count."""
    errors, _ = _totals(summary)
    left = 0.0
    for row in summary.itertuples(index=False):
        pct = 100 * float(row.frac_of_errors) if errors else 0.0
        pct = pct if math.isfinite(pct) else 0.0
        ax.barh(0, pct, left=left, height=0.6, color=_colour(row.category),
                edgecolor="white", linewidth=0.8,
                label=f"{row.label}: {pct:.1f}% ({int(row.errors):,})")
        if pct >= 4:
            ax.text(left + pct / 2, 0, f"{pct:.0f}%", ha="center", va="center",
                    fontsize=8, color=TEXT_COLOUR)
        left += pct
    if not errors:
        ax.text(50, 0, "no errors", ha="center", va="center", fontsize=9, color="0.3")
    ax.set(xlim=(0, 100), ylim=(-0.5, 0.5), yticks=[], xlabel="% of errors")
    ax.set_title((f"{title}\n" if title else "") + subtitle(summary, p_error), fontsize=9)
    handles, labels = ax.get_legend_handles_labels()
    ncol = 3
    by_row = [i for c in range(ncol) for i in range(c, len(handles), ncol)]  # read across
    ax.legend([handles[i] for i in by_row], [labels[i] for i in by_row], loc="upper center",
              bbox_to_anchor=(0.5, -0.5), ncol=ncol, fontsize=7.5, frameon=False,
              title="category: the first in this order that explains an error",
              title_fontsize=7.5)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)


def breakdown_png(summary_df: pd.DataFrame, title: str, path, p_error: float = 0.5) -> Path:
    """breakdown_bar as a PNG at `path` (its folder made); returns the path."""
    path = Path(path)
    fig, ax = plt.subplots(figsize=(8, 3.0))
    try:
        fig.subplots_adjust(left=0.03, right=0.97, top=0.8, bottom=0.45)  # legend below
        breakdown_bar(summary_df, ax, p_error, title)
        path.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():  # a box where the font lacks a glyph
            warnings.filterwarnings("ignore", "Glyph .* missing", UserWarning)
            fig.savefig(path, dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------
# the page

STYLE = ("body{font-family:sans-serif;margin:1.5em;max-width:62em;color:#000;background:#fff}"
         ".t{font-family:monospace;white-space:pre-wrap;tab-size:4;line-height:1.5;"
         "font-size:13px;border:1px solid #ccc;padding:.4em;overflow-wrap:anywhere}"
         "table{border-collapse:collapse;font-size:13px;margin:.5em 0}"
         "td,th{border:1px solid #ccc;padding:.15em .6em}td.n{text-align:right}"
         ".k span{display:inline-block;padding:0 .4em;margin-right:.4em;font-size:12px;"
         "border:1px solid #999}.s{font-size:13px;margin:.3em 0}")


def _swatch(category: str, text: str) -> str:
    return (f'<span style="background:{_colour(category)};color:{TEXT_COLOUR}">'
            f"{html.escape(text)}</span>")


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%" if math.isfinite(v) else "–"


def _table(b: Breakdown) -> str:
    rows = []
    for row in b.summary().itertuples(index=False):
        rows.append(f"<tr><td>{_swatch(row.category, row.label)}</td>"
                    f"<td class='n'>{int(row.errors):,}</td>"
                    f"<td class='n'>{_pct(row.frac_of_errors)}</td>"
                    f"<td class='n'>{_pct(row.frac_of_scored_chars)}</td></tr>")
    t = b.totals()
    rows.append(f"<tr><th>all errors</th><td class='n'>{t['errors']:,}</td>"
                f"<td class='n'>{_pct(1.0 if t['errors'] else math.nan)}</td>"
                f"<td class='n'>{_pct(t['error_rate'])}</td></tr>")
    return ("<table><tr><th>category</th><th>errors</th><th>% of errors</th>"
            f"<th>% of scored characters</th></tr>{''.join(rows)}</table>")


def excerpt_window(b: Breakdown, chars: int) -> slice:
    """The first `chars` characters from the first scored one (from 0 if none is)."""
    scored = np.flatnonzero(b.scored)
    start = int(scored[0]) if len(scored) else 0
    return slice(start, min(len(b.scored), start + max(0, chars)))


def excerpt_div(text: str, b: Breakdown, model_p, window: slice) -> str:
    r"""text[window], each error on its category's colour, each scored character's
    probability (and an error's category) on hover; '\n' as '↵' and a line break, '\r'
    not drawn."""
    parts = []
    for i in range(window.start, window.stop):
        ch = text[i]
        if ch == "\r":
            continue
        shown = NEWLINE + "\n" if ch == "\n" else html.escape(ch)
        if not b.scored[i]:
            parts.append(shown)
            continue
        hover = f"p = {float(model_p[i]):.3f}"
        if b.error[i]:
            name = CATEGORIES[b.category[i]]
            parts.append(f'<span style="background:{_colour(name)};color:{TEXT_COLOUR}" '
                         f'title="{html.escape(hover + " · " + LABELS[name])}">{shown}</span>')
        else:
            parts.append(f'<span title="{hover}">{shown}</span>')
    return f"<div class='t'>{''.join(parts)}</div>"


def breakdown_html(text: str, breakdown: Breakdown, model_p, title: str,
                   chars: int = 3000) -> str:
    """A self-contained page: the title, the summary table, the legend and an excerpt of
    up to `chars` characters (from the first scored one) with each error drawn on its
    category's colour and every scored character's probability on hover."""
    model_p = np.asarray(model_p, np.float64)
    if not len(text) == len(breakdown.scored) == len(model_p):
        raise ValueError(f"text, breakdown and model_p must cover the same characters, got "
                         f"{len(text)}, {len(breakdown.scored)} and {len(model_p)}")
    window = excerpt_window(breakdown, chars)
    p_error = breakdown.thresholds.p_error
    shown = (f"Characters {window.start} to {window.stop - 1} of the text (indices from 0)"
             if window.stop > window.start else "No characters shown")
    legend = " ".join(_swatch(c, LABELS[c]) for c in CATEGORIES)
    body = (f"<h2>{html.escape(title)}</h2>"
            f"<p class='s'>An error is a character the model gave probability &lt; "
            f"{p_error:g}. Each error is put in the first of these categories that explains "
            "it, in this order (Karpathy, Johnson &amp; Fei-Fei 2015, §4.4; definitions in "
            "study/breakdown.py).</p>"
            + _table(breakdown)
            + f"<p class='k'>{legend}</p>"
            f"<p class='s'>{shown}: errors on their category's colour, other characters "
            "plain; hover a character for the model's probability. '↵' marks a line end."
            "</p>"
            + excerpt_div(text, breakdown, model_p, window))
    return ("<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
            f"{body}</body></html>")
