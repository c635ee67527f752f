r"""Traces: a unit's value drawn over the text it read, as an HTML page (each character on a
coloured background, its value on hover) or, through study.probes.figures.trace_png, a PNG grid.

Both follow one layout rule (`cells`): every character of the text appears once, in order,
with its own value, except '\r', which is not drawn (a CRLF line ends once); '\n' is drawn
as '↵' at the end of its line, and the next character starts a new line.

The layout and the palette are study.probes.layout's (`cells`, `trace_rows`,
`trace_colours`); this module owns the HTML (`trace_html`: a page of one trace) and a run's
trace files (`write_traces`: one self-contained page of every trace, probes/traces.html, and
a PNG of each concept's best unit, probes/traces/<concept>_1.png). The page renders inside
MLflow's artifact preview (a sandboxed iframe): inline CSS, no scripts, no links, nothing
fetched.
"""

from __future__ import annotations

import html
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from study.config import ProbesConfig
from study.probes.concepts import CONCEPTS, signals
from study.probes.layout import (
    LEGEND_CAPTION,
    LEGEND_VALUES,
    NEWLINE,
    cells,
    css_rgb,
    trace_colours,
    trace_rows,  # noqa: F401 (re-exported)
)
from study.probes.units import best_units, describe_unit


def excerpt(signal: np.ndarray, keep: np.ndarray, length: int) -> slice:
    """The window of `length` characters (past the warm-up) where the concept varies most."""
    n = len(signal)
    if n <= length:
        return slice(0, n)
    s = np.where(keep, signal, signal[keep].mean() if keep.any() else 0).astype(np.float64)
    c1, c2 = np.concatenate([[0], np.cumsum(s)]), np.concatenate([[0], np.cumsum(s * s)])
    starts = np.arange(0, n - length + 1, max(1, length // 10))
    mean = (c1[starts + length] - c1[starts]) / length
    var = (c2[starts + length] - c2[starts]) / length - mean ** 2
    var = np.where(keep[starts], var, -1)
    best = int(starts[np.argmax(var)])
    return slice(best, best + length)


def css_style(v: float) -> str:
    """The inline CSS of a character whose unit's activation is `v`: its background and
    text colour, both from study.probes.layout.trace_colours."""
    bg, fg = trace_colours(v)
    return f"background:{css_rgb(bg)};color:{css_rgb(fg)}"


STYLE = ("body{font-family:sans-serif;margin:1.5em;max-width:62em;color:#000;background:#fff}"
         ".t{font-family:monospace;white-space:pre-wrap;line-height:1.45;font-size:13px;"
         "border:1px solid #ccc;padding:.4em;overflow-wrap:anywhere}"
         ".k{position:sticky;top:0;background:#fff;padding:.3em 0;margin:0;"
         "border-bottom:1px solid #ccc}"
         ".k span{display:inline-block;width:3.2em;text-align:center;font-size:11px;"
         "font-family:monospace;border:1px solid #999}"
         ".s{font-size:13px;margin:.2em 0 .4em}h4{margin:1.1em 0 .2em}")


def legend_html() -> str:
    """The legend: a swatch per value of study.probes.layout.LEGEND_VALUES (−1 and +1
    included), drawn with the traces' palette, and what the colours mean."""
    swatches = "".join(f"<span style=\"{css_style(v)}\">{v:+.1f}</span>" for v in LEGEND_VALUES)
    return (f"<p class='k'>{html.escape(LEGEND_CAPTION)}: {swatches} "
            "(a character's value on hover)</p>")


def trace_div(text: str, values: np.ndarray) -> str:
    r"""The text, one <span> per character drawn (study.probes.layout.cells) on its value's
    background and in its text colour, its value on hover; '\n' shown as '↵' before the
    line break, '\r' not shown."""
    spans = []
    for ch, v in cells(text, values):
        shown = NEWLINE + "\n" if ch == "\n" else html.escape(ch)
        spans.append(f'<span style="{css_style(v)}" title="{v:+.2f}">{shown}</span>')
    return f"<div class='t'>{''.join(spans)}</div>"


def _page(title: str, body: str) -> str:
    """A self-contained page: inline CSS, no scripts, no links, nothing fetched."""
    return ("<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
            f"{body}</body></html>")


def trace_html(text: str, values: np.ndarray, title: str, subtitle: str = "") -> str:
    r"""A self-contained page of one trace: each character on a background from orange-red
    (−1) through white to blue (+1) (study.probes.layout.trace_colours), its value on
    hover; '\n' shown as '↵' before the line break, '\r' not shown."""
    return _page(title, f"<h3>{html.escape(title)}</h3><p>{html.escape(subtitle)}</p>"
                 f"{legend_html()}{trace_div(text, values)}")


def explain_score(row) -> str:
    """What a unit's score of study.probes.units.unit_scores is, for the unit of `row`."""
    if row["kind"] == "binary":
        higher = "higher" if row["sign"] > 0 else "lower"
        return (f"score {row['score']:.3f}: the ROC-AUC of the unit's activation for telling the "
                f"characters where {row['concept']} holds from the rest, as max(AUC, 1 − AUC) "
                f"(0.5: chance, 1: perfect); the unit is {higher} inside ("
                f"{'+' if row['sign'] > 0 else '−'}).")
    return (f"score {row['score']:.3f}: |ρ|, where ρ = {row['spearman']:+.3f} is Spearman's "
            f"rank correlation of the unit's activation with {row['concept']} (Pearson's r "
            f"{row['pearson']:+.3f}); 0: none, 1: perfectly monotone.")


def _unit_name(row) -> str:
    state = "tanh(c)" if row["state"] == "c" else "h"
    return f"layer {row['layer']}, {state} unit {row['unit']}"


def write_traces(acts, scores: pd.DataFrame, out: Path, cfg: ProbesConfig, title: str,
                 png: bool = True, page: Path | None = None) -> list[dict]:
    """The traces of study.probes.activations' Activations `acts` for the best units of
    `scores` (study.probes.units.unit_scores), cfg.top_units per concept: all on one
    self-contained page, `page` (default: beside the folder `out`, named after it:
    probes/traces.html for probes/traces), and with png=True a PNG of each concept's
    best unit in `out` (<concept>_1.png). One entry per trace, in the page's order:
    concept, rank, unit (described), page (its file name), id (its heading's) and png
    (the PNG's file name, if drawn)."""
    from study.probes import figures  # here: figures imports this module

    out = Path(out)
    page = Path(page) if page is not None else out.resolve().parent / f"{out.resolve().name}.html"
    sig = signals(acts.text, sorted(set(scores["concept"])))
    entries, sections = [], []
    for concept, sub in best_units(scores, cfg.top_units).groupby("concept", sort=True):
        window = excerpt(sig[concept], acts.keep, cfg.trace_chars)
        text = acts.text[window]
        parts = [f"<h3 id='{html.escape(concept, quote=True)}'>{html.escape(concept)}</h3>"
                 f"<p class='s'>{html.escape(CONCEPTS[concept].about)}. Characters "
                 f"{window.start}–{window.stop} of the probed validation text.</p>"]
        for rank, (_, row) in enumerate(sub.iterrows(), 1):
            vals = acts.states[(row["layer"], row["state"])][window, row["unit"]]
            vals = vals.astype(np.float32)
            # named by rank, not unit, so that probing again replaces the files
            name = f"{concept}_{rank}"
            label = describe_unit(row)
            parts.append(f"<h4 id='{html.escape(name, quote=True)}'>{html.escape(concept)} "
                         f"#{rank}: {html.escape(_unit_name(row))}</h4>"
                         f"<p class='s'>{html.escape(explain_score(row))}</p>"
                         + trace_div(text, vals))
            entry = {"concept": concept, "rank": rank, "unit": label, "page": page.name,
                     "id": name}
            if png and rank == 1:
                out.mkdir(parents=True, exist_ok=True)
                fig = figures.trace_png(text[:600], vals[:600], f"{concept}: {label}")
                with warnings.catch_warnings():  # a box where the font lacks a glyph
                    warnings.filterwarnings("ignore", "Glyph .* missing", UserWarning)
                    fig.savefig(out / f"{name}.png", dpi=110)
                figures.plt.close(fig)
                entry["png"] = f"{name}.png"
            entries.append(entry)
        sections.append("".join(parts))
    concepts = ", ".join(html.escape(c) for c in dict.fromkeys(e["concept"] for e in entries))
    body = (f"<h2>{html.escape(title)}: unit traces</h2>"
            "<p class='s'>Each trace is the text a unit read, every character on the colour "
            "of that unit's activation there, for the best units of each concept (ranked by "
            "their score). Binary concepts are scored by ROC-AUC, continuous ones by "
            "Spearman's ρ; each trace says which.</p>"
            + (f"<p class='s'>Concepts, in order below: {concepts}.</p>" if entries else
               "<p class='s'>No unit was scored on this text: no traces.</p>")
            + legend_html() + "".join(sections))
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(_page(f"{title}: unit traces", body), encoding="utf-8")
    return entries
