"""`python -m analyses.report`: every figure and table rebuilt from the runs logged in MLflow.

    python -m analyses.report                              # every experiment in the store
    python -m analyses.report --experiment ablation --experiment sweeps
    python -m analyses.report --run-id ID --run-id ID      # exactly these runs
    python -m analyses.report --tag dataset=warpeace --out results/report-wp

Writes report.md and a self-contained report.html (figures inline) under --out (default:
report/ next to a local store's mlflow.db, else results/report/), each figure as PNG and
PDF, each table as CSV, and logs them to an MLflow run in the experiment "report". A
section whose inputs are missing says what to run instead of failing.

The report replaces only files it wrote: it keeps their list in --out/.analyses-report,
refuses a non-empty folder without that list, and leaves every other file alone.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import re
import shutil
import sys
import tempfile
import traceback
from datetime import date
from pathlib import Path

import pandas as pd

from analyses import (
    claims,
    common,
    curves,
    dynamics,
    error_analysis,
    error_flow,
    longlag,
    saturation,
    sweeps,
    table1,
    truncation,
    units,
    variants,
)
from analyses.common import Section
from analyses.runs import Runs
from study.formats import cell_text, is_numeric, markdown_table

SECTIONS = [table1, variants, curves, saturation, units, error_flow, error_analysis, dynamics,
            sweeps, truncation, longlag, claims]


def build_all(runs: Runs, out: Path) -> tuple[list[Section], dict[str, str]]:
    """Every section; one that raises is reported in the report, in the return value
    (name -> error) and so in the exit code, without hiding the others."""
    common.style()
    out.mkdir(parents=True, exist_ok=True)
    sections, failed = [], {}
    for module in SECTIONS:
        name = module.__name__.rsplit(".", 1)[-1]
        try:
            sections.append(module.build(runs, out))
        except Exception as e:  # noqa: BLE001 - one broken section must not hide the rest
            traceback.print_exc()
            failed[name] = f"{type(e).__name__}: {e}"
            sections.append(Section(name, missing=f"this section failed: {failed[name]}"))
    return sections, failed


def header(runs: Runs, selection: str) -> dict:
    from study.tracking import git_commit

    return {"date": str(date.today()), "commit": git_commit(), "uri": runs.uri,
            "experiments": ", ".join(runs.experiments) or "–", "selection": selection,
            "runs": len(runs.all), "train": len(runs.train), "studies": len(runs.studies)}


def to_markdown(sections: list[Section], h: dict) -> str:
    lines = ["# Study report", "",
             f"Built {h['date']} from MLflow at `{h['uri']}` (experiments: {h['experiments']};"
             f" {h['selection']}): {h['runs']} runs, of which {h['train']} finished training "
             f"runs and {h['studies']} studies; code at commit `{h['commit']}`. Every figure "
             "and table below is rebuilt from those runs. Losses are mean cross-entropy in "
             "nats per character (bits = nats / ln 2) on the split named.", ""]
    for s in sections:
        lines += [f"## {s.title}", ""]
        if s.missing:
            lines += [f"_Not available: {s.missing}._", ""]
            continue
        if s.text:
            lines += [s.text, ""]
        for name, df in s.tables.items():
            lines += [f"**{caption(s, name)}**", "", markdown_table(df), ""]
        for f in s.figures:
            lines += [f"![{f.caption}]({f.png.name})", "", f"_{f.caption}_ "
                      f"([PDF]({f.pdf.name}))", ""]
        if s.sources:
            lines += [f"<sub>runs: {', '.join(r[:8] for r in s.sources)}</sub>", ""]
    return "\n".join(lines)


def _inline(text: str) -> str:
    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


# captions for the tables of sections that do not set their own (Section.captions)
CAPTIONS = {
    "best_units": "The best unit per concept and corpus over all runs (score: AUC or "
                  "|Spearman ρ|, on validation text; no loss in this table)",
}
HIGHLIGHT = {claims.TOO_SMALL: "warn"}  # cells the HTML marks so that a reader sees them


def caption(section: Section, name: str) -> str:
    """The caption printed above a table: the section's own, else a known one, else its
    name made readable (never the bare identifier)."""
    if section.captions.get(name):
        return section.captions[name]
    if name in CAPTIONS:
        return CAPTIONS[name]
    words = re.sub(r"[_\-]+", " ", name).strip()
    return f"{section.title}: {words}" if words else section.title


def table_html(df: pd.DataFrame, title: str) -> str:
    """An HTML table with its caption: numbers right-aligned, text (names, verdicts,
    evidence) left-aligned, header cells aligned as their column; NaN as '–'."""
    align = ["r" if is_numeric(df[c]) else "l" for c in df.columns]
    head = "".join(f"<th class='{a}'>{html.escape(str(c))}</th>"
                   for c, a in zip(df.columns, align, strict=True))
    rows = []
    for row in df.itertuples(index=False):
        cells = []
        for v, a in zip(row, align, strict=True):
            text = cell_text(v)
            extra = f" {HIGHLIGHT[text]}" if text in HIGHLIGHT else ""
            cells.append(f"<td class='{a}{extra}'>{_inline(text)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    if df.empty:
        rows.append(f"<tr><td class='l' colspan='{max(1, len(align))}'><i>(no rows)</i>"
                    "</td></tr>")
    return (f"<div class='tw'><table class='t'><caption>{_inline(title)}</caption><thead>"
            f"<tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>")


def to_html(sections: list[Section], h: dict) -> str:
    body = [f"<h1>Study report</h1><p>Built {h['date']} from MLflow at <code>"
            f"{html.escape(h['uri'])}</code> (experiments: {html.escape(h['experiments'])}; "
            f"{html.escape(h['selection'])}): {h['runs']} runs ({h['train']} finished training "
            f"runs, {h['studies']} studies); commit <code>{h['commit']}</code>. Losses in "
            "nats/char (bits = nats / ln 2).</p>"]
    for s in sections:
        body.append(f"<h2>{html.escape(s.title)}</h2>")
        if s.missing:
            body.append(f"<p><i>Not available: {_inline(s.missing)}.</i></p>")
            continue
        if s.text:
            body.append(f"<p>{_inline(s.text)}</p>")
        for name, df in s.tables.items():
            body.append(table_html(df, caption(s, name)))
        for f in s.figures:
            data = base64.b64encode(f.png.read_bytes()).decode()
            body.append(f"<figure><img src='data:image/png;base64,{data}' alt=''>"
                        f"<figcaption>{_inline(f.caption)}</figcaption></figure>")
    style = ("body{font-family:sans-serif;max-width:62em;margin:2em auto;padding:0 1em}"
             "img{max-width:100%}table.t{border-collapse:collapse;font-size:12px;margin:.5em 0}"
             ".tw{overflow-x:auto;max-width:100%}"
             "caption{caption-side:top;text-align:left;font-weight:bold;font-size:13px;"
             "padding:.3em 0}"
             ".t td,.t th{padding:2px 8px;border-bottom:1px solid #ddd;vertical-align:top}"
             ".t .l{text-align:left}.t .r{text-align:right}.t td.r{white-space:nowrap}"
             ".t .warn{background:#fde8c8;font-weight:bold}"
             "figcaption{font-size:13px;color:#444}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Study report</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>")


MARKER = ".analyses-report"  # the files the last report wrote into its folder


class OutError(RuntimeError):
    pass


def prepare_out(out: Path) -> set[Path]:
    """Make `out` ready for a report: remove what the previous report wrote there (and
    nothing else). Returns the files present before, which are not the report's."""
    marker = out / MARKER
    if out.exists() and not out.is_dir():
        raise OutError(f"--out {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not marker.is_file():
        raise OutError(f"--out {out} is not empty and was not written by analyses.report "
                       f"(no {MARKER} in it); give a new or empty folder, e.g. "
                       f"--out {out / 'report'}")
    out.mkdir(parents=True, exist_ok=True)
    if marker.is_file():
        for name in json.loads(marker.read_text(encoding="utf-8")):
            f = out / name
            if f.is_file() and f.resolve().parent == out.resolve():
                f.unlink()
    marker.write_text("[]", encoding="utf-8")
    return {p for p in out.iterdir() if p.is_file()}


def record_written(out: Path, foreign: set[Path]) -> list[Path]:
    written = sorted(p for p in out.iterdir() if p.is_file() and p not in foreign
                     and p.name != MARKER)
    (out / MARKER).write_text(json.dumps([p.name for p in written]), encoding="utf-8")
    return written


def default_out(uri: str) -> Path:
    """Next to a local store (the report belongs with its runs), else ./results/report."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):]).parent / "report"
    return Path("results/report")


def log_report(runs: Runs, files: list[Path], h: dict, sections: list[Section],
               failed: dict[str, str]) -> str:
    from study.config import TrackingConfig
    from study.tracking import Store

    store = Store(TrackingConfig(experiment="report", uri=runs.uri), description=(
        "The reports of `python -m analyses.report`: one run per report, report.html and "
        "its figures and tables as artifacts."))
    tracker = store.start(f"report-{h['date']}", {
        "kind": "report", "experiments": h["experiments"], "selection": h["selection"]},
        description=f"Report over {h['runs']} runs ({h['experiments']}).")
    with tempfile.TemporaryDirectory() as tmp:  # only the report's own files
        for f in files:
            shutil.copy2(f, tmp)
        tracker.log_artifacts(tmp)
    tracker.log_metrics({"sections": len(sections),
                         "sections_missing": sum(s.missing is not None for s in sections),
                         "sections_failed": len(failed)})
    tracker.end("FAILED" if failed else "FINISHED",
                "; ".join(f"section {k} failed: {v}" for k, v in failed.items()))
    return tracker.run_id


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m analyses.report",
                                description=__doc__.split("\n")[0])
    p.add_argument("--experiment", action="append", default=[],
                   help="experiment to draw from (repeatable; default: all)")
    p.add_argument("--run-id", action="append", default=[], help="exactly these runs")
    p.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE",
                   help="only runs with this tag (repeatable), e.g. dataset=warpeace")
    p.add_argument("--out", help="output folder (default: report/ beside a local store's "
                                 "mlflow.db, else results/report)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default as study.run's)")
    p.add_argument("--no-log", action="store_true", help="do not log the report to MLflow")
    args = p.parse_args(argv)
    tags = {}
    for t in args.tag:
        k, sep, v = t.partition("=")
        if not sep:
            p.error(f"--tag {t!r}: expected KEY=VALUE")
        tags[k] = v
    from study.config import TrackingConfig
    from study.tracking import StoreError, require_store, tracking_uri

    uri = args.tracking_uri or tracking_uri(TrackingConfig())
    try:
        require_store(uri)
    except StoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        runs = Runs.load(uri, args.experiment or None, args.run_id or None, tags or None)
    except StoreError as e:  # e.g. a --run-id the store does not hold
        print(f"error: {e}", file=sys.stderr)
        return 2
    missing = [e for e in args.experiment if e not in runs.experiments]
    if missing:
        print(f"error: no experiment named {', '.join(missing)} in {uri}", file=sys.stderr)
        return 2
    if runs.all.empty:
        print(f"error: no runs at {uri} match (experiments: "
              f"{', '.join(runs.experiments) or 'none'}); train some first, e.g. "
              "`make smoke`, or check --experiment/--run-id/--tag", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else default_out(uri)
    try:
        foreign = prepare_out(out)
    except OutError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    selection = "runs " + ", ".join(args.run_id) if args.run_id else (
        "tags " + ", ".join(args.tag) if args.tag else "all runs")
    sections, failed = build_all(runs, out)
    h = header(runs, selection)
    (out / "report.md").write_text(to_markdown(sections, h), encoding="utf-8")
    (out / "report.html").write_text(to_html(sections, h), encoding="utf-8")
    written = record_written(out, foreign)
    print(f"wrote {out / 'report.md'} and {out / 'report.html'}: "
          + ", ".join(f"{s.title.split(':')[0]} {'–' if s.missing else 'ok'}" for s in sections))
    if not args.no_log:
        run_id = log_report(runs, written, h, sections, failed)
        print(f"logged to MLflow run {run_id} (experiment 'report')")
    if failed:
        print(f"error: {len(failed)} section(s) failed (tracebacks above): "
              + "; ".join(f"{k}: {v}" for k, v in failed.items()), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
