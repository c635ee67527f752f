"""`python -m study.errors RUN_ID [RUN_ID ...]`: Karpathy15's error analysis of a trained run.

    python -m study.errors 3f2a...                       # analyse one run, log it to the run
    python -m study.errors 3f2a... --set probes.errors_memory_chars=12
    python -m study.run configs/ablation.yaml            # probes.errors: true runs it after
                                                         # training, as one of the probes

On the test split of the run's corpus (the best checkpoint, read as the test loss is read:
study.longrange.per_char_nats), two analyses, logged to the run under `errors/`:

* The breakdown of the model's errors (study.breakdown has the definitions): a character
  is an error when the model gives it p < probes.errors_p; each error goes to the first
  of n-gram (some order ≤ probes.errors_ngram_order gives p ≥ errors_p), dynamic memory,
  rare word, word start, punctuation, boost. Metrics errors/error_rate (of the scored
  test characters) and errors/frac_<category> (of the errors); errors/breakdown.csv,
  errors/breakdown.png and errors/errors.html (the table and the test text with each
  error coloured by its category; it renders in the MLflow UI's artifact view).
* Closing braces (on code: a test split with at least MIN_BRACES matched braces,
  study.longrange.closing_braces): for every '}' the distance to its '{' and the
  probability the model and the 20-gram (ngram.max_order) give it, per distance bin
  (BRACE_BINS, characters): errors/braces.csv, errors/braces.png and metrics
  errors/brace_frac_model_better_near and _far (distances below and from 60, where
  Karpathy15 see the LSTM's advantage end).

The n-gram models come from the cache study.ngram fills (fitted now when missing, on the
train split). Any exception is a failure: the command exits 1 and the run is marked
FAILED with the reason (as a probe that fails); running the analysis again successfully
marks it FINISHED again. A run that does not exist or has no checkpoint gets one error
line, exit 2, and nothing is written.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from study import breakdown, longrange
from study.ngram.cache import test_log_probs

MIN_BRACES = 20  # fewer matched closing braces in the test split: no brace analysis
BRACE_BINS = (1, 10, 20, 40, 60, 100, 200, math.inf)
FAR = 60  # Karpathy15: the LSTM's advantage over the 20-gram lasts to about 60 characters


@dataclass
class ErrorsResult:
    metrics: dict[str, float] = field(default_factory=dict)
    summary: pd.DataFrame | None = None
    braces: pd.DataFrame | None = None
    dynamics: pd.DataFrame | None = None  # study.dynamics: per (update, order) JS divergence
    update_metrics: dict[int, dict[str, float]] = field(default_factory=dict)  # step = update


def snapshot_models(folder: Path, cfg, vocab_size: int, device="cpu"):
    """(update, epoch, model) for each update_N.pt that train.keep_checkpoints=all wrote
    into `folder`, in training order, loaded one at a time."""
    from study.model import CharLM
    from study.train import load_checkpoint

    for path in sorted(Path(folder).glob("update_*.pt")):
        ck = load_checkpoint(path, ("model", "epoch", "update"), name=path.name,
                             fix="retrain the run with train.keep_checkpoints=all")
        model = CharLM(vocab_size, cfg.model)
        model.load_state_dict(ck["model"])
        yield int(ck["update"]), float(ck["epoch"]), model.to(device)


def thresholds(p) -> breakdown.Thresholds:
    """The breakdown's thresholds from a ProbesConfig."""
    th = breakdown.Thresholds(p_error=p.errors_p, ngram_p=p.errors_p,
                              memory_chars=p.errors_memory_chars,
                              memory_window=p.errors_memory_window,
                              rare_count=p.errors_rare_count)
    th.check()
    return th


def brace_table(text: str, p_model: np.ndarray, p_ngram: np.ndarray,
                bins=BRACE_BINS, matches: longrange.Matches | None = None) -> pd.DataFrame:
    """Per distance bin [lo, hi) of the closing braces of `text` whose model probability is
    finite: their number, the mean probability each model gives them, and the fraction
    where the model's is higher (matches: closing_braces(text), when already found)."""
    m = matches if matches is not None else longrange.closing_braces(text)
    pm, pn = p_model[m.pos], p_ngram[m.pos]
    ok = np.isfinite(pm) & np.isfinite(pn)
    rows = []
    for lo, hi in zip(bins[:-1], bins[1:], strict=True):
        k = ok & (m.dist >= lo) & (m.dist < hi)
        n = int(k.sum())
        label = f"{lo}-{hi - 1}" if math.isfinite(hi) else f"≥{lo}"
        rows.append({"dist_chars": label, "lo_chars": lo, "hi_chars": hi, "braces": n,
                     "mean_p_model": float(pm[k].mean()) if n else math.nan,
                     "mean_p_ngram": float(pn[k].mean()) if n else math.nan,
                     "frac_model_better": float((pm[k] > pn[k]).mean()) if n else math.nan})
    return pd.DataFrame(rows)


def brace_figure(df: pd.DataFrame, order: int, title: str, path: Path) -> None:
    from study.probes.figures import plt

    fig, ax = plt.subplots(figsize=(7.0, 3.8), dpi=120)
    x = np.arange(len(df))
    ax.plot(x, df.mean_p_model, "o-", color="#1f77b4", label="model: mean p(})")
    ax.plot(x, df.mean_p_ngram, "s--", color="#7f7f7f", label=f"{order}-gram: mean p(}})")
    ax.bar(x, df.frac_model_better, width=0.5, alpha=0.25, color="#2ca02c",
           label="fraction of braces where the model's p is higher")
    for xi, n in zip(x, df.braces, strict=True):
        ax.annotate(f"n={n}", (xi, 0.02), ha="center", fontsize=7, color="#444444")
    ax.set_xticks(x, df.dist_chars)
    ax.set_xlabel("distance from '{' to its '}' (characters)")
    ax.set_ylabel("probability / fraction")
    ax.set_ylim(0, 1.05)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper right")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def analyse(model, corpus, cfg, out: Path, title: str, device="cpu",
            progress: bool = True, snapshots=None) -> ErrorsResult:
    """Both analyses of `model` on the test split of `corpus` (cfg: the run's Config),
    and with `snapshots` (an iterable of (update, epoch, model): the kept checkpoints) the
    training dynamics (study.dynamics); files written into `out`; returns the metrics to log
    (names errors/...)."""
    t0 = time.perf_counter()
    p = cfg.probes
    th = thresholds(p)
    test = corpus.splits["test"]
    text = corpus.decode(test)
    nats = longrange.per_char_nats(model, test, cfg.train.batch_size, cfg.train.eval_seq_len,
                                   device)
    p_model = np.exp(-nats)  # NaN where nothing predicts the character
    braces = longrange.closing_braces(text)
    n_braces = len(braces.pos)
    top = cfg.ngram.max_order
    orders = list(range(1, max(p.errors_ngram_order, top if n_braces >= MIN_BRACES else 0) + 1))
    ng = test_log_probs(corpus, orders, cfg.ngram.smoothing,
                        Path(cfg.tracking.results_dir) / "cache", progress=progress)
    counts = breakdown.word_counts(corpus.decode(corpus.splits["train"]))
    bd = breakdown.classify(text, p_model, np.exp(ng.log_probs[:p.errors_ngram_order]),
                            counts, th)
    summary = bd.summary()
    totals = bd.totals()
    res = ErrorsResult(summary=summary)
    res.metrics = {"errors/error_rate": totals["error_rate"],
                   "errors/scored_chars": totals["scored_chars"], "errors/errors": totals["errors"],
                   **{f"errors/frac_{r.category}": r.frac_of_errors
                      for r in summary.itertuples()}}
    out.mkdir(parents=True, exist_ok=True)
    from study.breakdown_figures import breakdown_html, breakdown_png

    summary.to_csv(out / "breakdown.csv", index=False)
    breakdown_png(summary, f"{title}: errors on the test split", out / "breakdown.png",
                  p_error=th.p_error)
    (out / "errors.html").write_text(
        breakdown_html(text, bd, p_model, f"{title}: errors on the test split"),
        encoding="utf-8")
    if n_braces >= MIN_BRACES:
        df = brace_table(text, p_model, np.exp(ng.row(top)), matches=braces)
        res.braces = df
        df.to_csv(out / "braces.csv", index=False)
        brace_figure(df, top, f"{title}: closing braces on the test split", out / "braces.png")
        near, far = df[df.hi_chars <= FAR], df[df.lo_chars >= FAR]
        for name, part in (("near", near), ("far", far)):
            n = part.braces.sum()
            res.metrics[f"errors/brace_frac_model_better_{name}"] = float(
                (part.frac_model_better * part.braces).sum() / n) if n else math.nan
        res.metrics["errors/braces"] = int(df.braces.sum())
    if snapshots is not None:
        from study import dynamics

        df = dynamics.dynamics(snapshots, corpus, cfg, Path(cfg.tracking.results_dir) / "cache",
                               progress)
        if len(df):
            res.dynamics, res.update_metrics = df, dynamics.metrics(df)
            df.to_csv(out / "dynamics.csv", index=False)
            dynamics.figure(df, f"{title}: predictions against n-grams during training",
                            out / "dynamics.png")
            near = dynamics.closest(df)
            print("errors: training dynamics, the closest n-gram order after each snapshot's "
                  "updates: " + ", ".join(f"{r.update}: {r.closest_order}"
                                          for r in near.itertuples()), file=sys.stderr)
    res.metrics["errors/seconds"] = time.perf_counter() - t0
    # the result in one line, as the probes print theirs
    print(f"errors: {totals['errors']:,} of {totals['scored_chars']:,} test chars are errors "
          f"(p < {th.p_error:g}): " + ", ".join(
              f"{r.category} {r.frac_of_errors:.0%}" for r in summary.itertuples())
          + (f"; {res.metrics['errors/braces']} closing braces scored"
             if res.braces is not None else "")
          + f" ({res.metrics['errors/seconds']:.1f} s)", file=sys.stderr)
    return res


def log_errors(run, res: ErrorsResult, out: Path) -> None:
    run.log_artifacts(out, "errors")
    run.log_metrics({k: v for k, v in res.metrics.items() if v == v})
    for update, m in sorted(res.update_metrics.items()):
        run.log_metrics(m, step=update)


FAILED_PREFIX = "errors analysis failed"


def analyse_run(run_id: str, overrides: list[str], tracking_uri: str | None,
                progress: bool = True) -> int:
    """Analyse one logged run and log the result to it; the exit code."""
    from study import tracking
    from study.logged import load_with_overrides

    loaded = load_with_overrides(run_id, overrides, ("probes.errors", "ngram."), tracking_uri)
    if loaded is None:
        return 2
    model, cfg, corpus, uri, run_id = loaded
    try:
        thresholds(cfg.probes)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    title = f"{cfg.model.cell} on {corpus.name}"
    print(f"analysing the errors of run {run_id} ({title})", file=sys.stderr)
    run = tracking.open_run(uri, run_id)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "errors"
        kept = tracking.Reader(uri).download(run_id, "checkpoint/snapshots", Path(tmp) / "ck")
        if kept is None or not any(Path(kept).glob("update_*.pt")):
            kept = None
            print("  no kept snapshots (train.keep_checkpoints: all): no training dynamics",
                  file=sys.stderr)
        try:
            res = analyse(model, corpus, cfg, out, title, progress=progress,
                          snapshots=snapshot_models(kept, cfg, corpus.vocab_size)
                          if kept else None)
        except Exception as e:  # noqa: BLE001 (the run and the exit code say so)
            import traceback

            traceback.print_exc()
            reason = f"{FAILED_PREFIX} (study.errors): {type(e).__name__}: {e}"
            run.end("FAILED", reason)
            print(f"error: run {run_id}: {reason}", file=sys.stderr)
            return 1
        log_errors(run, res, out)
    if run.tags().get("failure_reason", "").startswith(FAILED_PREFIX):
        run.end("FINISHED")  # analysed again successfully: the run is whole
    with pd.option_context("display.float_format", "{:.3f}".format, "display.width", 160):
        print(res.summary.to_string(index=False))
        if res.braces is not None:
            print(res.braces.to_string(index=False))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m study.errors",
                                description=__doc__.split("\n")[0])
    p.add_argument("run_id", nargs="+", help="MLflow run id(s) of finished training runs")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="change a threshold, e.g. probes.errors_rare_count=3")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default as study.run's)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    rc = 0
    for run_id in args.run_id:
        rc = max(rc, analyse_run(run_id, args.set, args.tracking_uri, not args.no_progress))
    return rc


if __name__ == "__main__":
    sys.exit(main())
