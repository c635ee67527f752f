r"""Traces: a unit's value drawn over the text it read, as an HTML page (each character on a
coloured background, its value on hover) or, through study.probes.figures.trace_png, a PNG grid.

Both follow one layout rule (`cells`): every character of the text appears once, in order,
with its own value, except '\r', which is not drawn (a CRLF line ends once); '\n' is drawn
as '↵' at the end of its line, and the next character starts a new line.

The layout is study.probes.layout's (`cells`, `trace_rows`); this module owns the HTML
page (`trace_html`) and a run's trace files (`write_traces`: traces/<concept>_<rank>.html,
a PNG of each concept's best unit and traces/index.html).
"""

from __future__ import annotations

import html
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from study.config import ProbesConfig
from study.probes.concepts import CONCEPTS, signals
from study.probes.layout import NEWLINE, cells, trace_rows  # noqa: F401 (re-exported)
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


def css_colour(v: float) -> str:
    """−1 red, 0 white, +1 blue (Karpathy15's cell figures); grey for a value that is not
    a number."""
    if not math.isfinite(v):
        return "rgb(217,217,217)"
    v = max(-1.0, min(1.0, float(v)))
    a = int(255 * (1 - abs(v)))
    return f"rgb(255,{a},{a})" if v < 0 else f"rgb({a},{a},255)"


def trace_html(text: str, values: np.ndarray, title: str, subtitle: str = "") -> str:
    r"""A self-contained page: each character on a background from red (−1) through white
    to blue (+1), its value on hover; '\n' shown as '↵' before the line break, '\r' not
    shown."""
    spans = []
    for ch, v in cells(text, values):
        shown = NEWLINE + "\n" if ch == "\n" else html.escape(ch)
        spans.append(f'<span style="background:{css_colour(v)}" title="{v:+.2f}">'
                     f"{shown}</span>")
    return ("<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>"
            "body{font-family:sans-serif;margin:1.5em;max-width:60em}"
            ".t{font-family:monospace;white-space:pre-wrap;line-height:1.45;font-size:13px}"
            ".k span{display:inline-block;width:2.2em;text-align:center;font-size:11px}"
            "</style></head><body>"
            f"<h3>{html.escape(title)}</h3><p>{html.escape(subtitle)}</p>"
            "<p class='k'>value: " + "".join(
                f"<span style='background:{css_colour(v)}'>{v:+.1f}</span>"
                for v in (-1, -0.5, 0, 0.5, 1)) + "</p>"
            f"<div class='t'>{''.join(spans)}</div></body></html>")


def write_traces(acts, scores: pd.DataFrame, out: Path, cfg: ProbesConfig, title: str,
                 png: bool = True) -> list[dict]:
    """HTML (and PNG for each concept's best unit) traces of study.probes.activations'
    Activations `acts`, for the best units of `scores` (study.probes.units.unit_scores),
    and an index.html, in `out`."""
    from study.probes import figures  # here: figures imports this module

    out.mkdir(parents=True, exist_ok=True)
    sig = signals(acts.text, sorted(set(scores["concept"])))
    links = []
    for concept, sub in best_units(scores, cfg.top_units).groupby("concept", sort=True):
        window = excerpt(sig[concept], acts.keep, cfg.trace_chars)
        text = acts.text[window]
        for rank, (_, row) in enumerate(sub.iterrows(), 1):
            vals = acts.states[(row["layer"], row["state"])][window, row["unit"]]
            vals = vals.astype(np.float32)
            # named by rank, not unit, so that probing again replaces the files
            name = f"{concept}_{rank}"
            label = describe_unit(row)
            (out / f"{name}.html").write_text(trace_html(
                text, vals, f"{concept}: {label}",
                f"{title}. {CONCEPTS[concept].about}. Characters {window.start}–{window.stop} "
                f"of the probed validation text."), encoding="utf-8")
            entry = {"concept": concept, "rank": rank, "unit": label, "html": f"{name}.html"}
            if png and rank == 1:
                fig = figures.trace_png(text[:600], vals[:600], f"{concept}: {label}")
                with warnings.catch_warnings():  # a box where the font lacks a glyph
                    warnings.filterwarnings("ignore", "Glyph .* missing", UserWarning)
                    fig.savefig(out / f"{name}.png", dpi=110)
                figures.plt.close(fig)
                entry["png"] = f"{name}.png"
            links.append(entry)
    items = "".join(
        f"<li><b>{html.escape(e['concept'])}</b> #{e['rank']}: "
        f"<a href='{e['html']}'>{html.escape(e['unit'])}</a>"
        + (f" (<a href='{e['png']}'>png</a>)" if "png" in e else "") + "</li>" for e in links)
    (out / "index.html").write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>units</title></head><body>"
        f"<h3>{html.escape(title)}: the best units per concept</h3><ul>{items}</ul>"
        "<p>AUC: ROC-AUC of the unit for the binary concept, max(AUC, 1 − AUC), sign (+) "
        "when the unit is higher inside; ρ: Spearman's rank correlation (units ranked by "
        "|ρ|), r: Pearson's.</p></body></html>",
        encoding="utf-8")
    return links
