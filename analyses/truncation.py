"""Truncation depth on its own (configs/sweep_bptt.yaml, sweep_bptt_linux.yaml): studies
whose trials share k1 (the new characters per update) and clipping and differ only in k2,
the steps the gradient is back-propagated. Every trial took the same updates over the
same characters, so a difference in loss is the gradient's reach, and a difference in
time its cost.

Besides validation loss against k2 and against wall time, the gain where long context is
needed: each trial's best checkpoint is scored on its corpus's test split
(study.longrange.per_char_nats) at the characters that close something opened earlier —
closing dialogue quotes on War and Peace, closing braces on the Linux source
(study.longrange's matching rules) — binned by the distance to their opener.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from analyses.common import COLUMN_WIDTH, Section, save
from analyses.runs import Runs
from study import longrange

# Scoring reads the test split in this many streams, not the training batch: a closer
# counts only when its opener lies in the stream read, and the batch's short streams (a
# 25,000-character split in 50 streams is 500 characters each) would leave out most of the
# far ones.
SCORE_STREAMS = 4
CLOSERS = {"warpeace": ("closing quotes", longrange.closing_quotes),
           "linux": ("closing braces", longrange.closing_braces)}


def studies(runs: Runs) -> list[tuple[pd.Series, pd.DataFrame]]:
    """(study run, its converged trials) for every study that varied k2 alone."""
    out = []
    for _, s in runs.studies.iterrows():
        t = runs.csv(s.run_id, "study/trials.csv")
        if t is None or t.empty or "k1" not in t:
            continue
        done = t[(t.state == "COMPLETE") & (t.get("outcome", "complete") != "diverged")]
        if done.k2.nunique() > 1 and t.k1.nunique() == 1 and t["clip"].nunique() == 1 \
                and ("lr" not in t or t.lr.nunique() <= 1):
            out.append((s, done.sort_values("k2")))
    return out


def dataset_of(s: pd.Series) -> str:
    return str(s.get("param.data.corpus", s.get("tag.dataset", "?")))


_SCORED: dict[tuple, pd.DataFrame] = {}  # the report's section and its claim score once


def long_context(runs: Runs, trials: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Per trial and distance bin: the mean loss (nats/char, test split) at the corpus's
    closing characters whose opener lies in the stream read (SCORE_STREAMS streams). Empty
    when the corpus has no closer rule or no checkpoints."""
    if dataset not in CLOSERS:
        return pd.DataFrame()
    key = (runs.uri, dataset, tuple(trials.mlflow_run_id.astype(str)))
    if key not in _SCORED:
        _SCORED[key] = _long_context(runs, trials, dataset)
    return _SCORED[key]


def far_gain(lc: pd.DataFrame, beyond: float = 100) -> tuple[float, float, int] | None:
    """(mean loss at closers at least `beyond` characters from their opener for the
    shortest k2, the same for the longer k2s' mean, closers scored), or None."""
    if lc.empty:
        return None
    far = lc[(lc.lo_chars >= beyond) & (lc.scored > 0)]
    if far.empty:
        return None

    def mean(d):
        return float((d.mean_nats * d.scored).sum() / d.scored.sum())

    short = far[far.k2 == far.k2.min()]
    longer = far[far.k2 > far.k2.min()]
    if longer.empty:
        return None
    return mean(short), float(longer.groupby("k2").apply(mean).mean()), int(short.scored.sum())


def _long_context(runs: Runs, trials: pd.DataFrame, dataset: str) -> pd.DataFrame:
    from study.data import load_corpus
    from study.inspect import RunError, load_run

    rows, corpus, matches = [], None, None
    for t in trials.itertuples():
        if not isinstance(t.mlflow_run_id, str):
            continue
        try:
            model, cfg, _, _, _ = load_run(t.mlflow_run_id, runs.uri)
        except RunError as e:
            print(f"long-context loss of trial {t.trial}: {e}", file=sys.stderr)
            continue
        if corpus is None:
            cache = Path(cfg.tracking.results_dir) / "cache"
            corpus = load_corpus(cfg.data, cache if cache.is_dir() else None)
            ids = corpus.splits["test"]
            matches = CLOSERS[dataset][1](corpus.decode(ids))
            seen = longrange.context_chars(len(ids), SCORE_STREAMS)
            inside = matches.dist <= seen[matches.pos]  # the opener lies in the stream read
            matches = longrange.Matches(matches.pos[inside], matches.dist[inside])
        nats = longrange.per_char_nats(model, corpus.splits["test"], SCORE_STREAMS,
                                       cfg.train.eval_seq_len, "cpu")
        b = longrange.by_distance(nats, matches.pos, matches.dist)
        b.insert(0, "k2", int(t.k2))
        rows.append(b)
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def figure(found: list[tuple[str, pd.DataFrame, pd.DataFrame]]):
    """Validation loss against k2 and against the trial's wall time; one line per study;
    and per study, the loss at closers by distance, one line per k2."""
    n = len(found)
    fig, axes = plt.subplots(1 + n, 2, figsize=(COLUMN_WIDTH * 2, 2.3 * (1 + n)),
                             squeeze=False)
    for name, done, _ in found:
        axes[0, 0].plot(done.k2, done.val_nats_per_char, "o-", label=name)
        axes[0, 1].plot(done.minutes, done.val_nats_per_char, "o-", label=name)
        for r in done.itertuples():
            axes[0, 1].annotate(f"{int(r.k2)}", (r.minutes, r.val_nats_per_char), fontsize=6,
                                xytext=(2, 2), textcoords="offset points")
    axes[0, 0].set(xscale="log", xlabel="k2: steps back-propagated (k1 fixed)",
                   ylabel="val loss (nats/char)", title="validation loss against k2")
    axes[0, 1].set(xlabel="trial wall time (min, 2 workers)", ylabel="val loss (nats/char)",
                   title="... against time (labels: k2)")
    axes[0, 0].legend(fontsize=6)
    for row, (name, _, lc) in enumerate(found, start=1):
        ax, ax2 = axes[row]
        if lc.empty:
            ax.axis("off")
            ax2.axis("off")
            continue
        lc = lc[lc.scored > 0]
        labels = list(dict.fromkeys(lc.dist_chars))
        shortest = lc[lc.k2 == lc.k2.min()].set_index("dist_chars").mean_nats
        for k2, d in lc.groupby("k2"):
            d = d.set_index("dist_chars").reindex(labels)
            ax.plot(range(len(labels)), d.mean_nats, "o-", ms=3, label=f"k2={k2}")
            ax2.plot(range(len(labels)), d.mean_nats - shortest.reindex(labels), "o-", ms=3,
                     label=f"k2={k2}")
        for a in (ax, ax2):
            a.set_xticks(range(len(labels)), labels, fontsize=6)
            a.set_xlabel("distance to the opener (chars)")
        ax.set(ylabel="test loss at closer (nats)", title=f"{name}: loss at closers")
        ax2.axhline(0, color="0.5", lw=0.6)
        ax2.set(ylabel="Δ vs shortest k2 (nats)", title=f"{name}: gain over k2 = k1")
        ax.legend(fontsize=5.5)
    fig.tight_layout()
    return fig


def build(runs: Runs, out: Path) -> Section:
    sec = Section("Truncation depth on its own (k1 fixed, k2 varied)")
    found = []
    for s, done in studies(runs):
        dataset = dataset_of(s)
        name = f"{s.get('tag.study', s.run_name)} ({dataset})"
        sec.sources.append(s.run_id)
        lc = long_context(runs, done, dataset)
        found.append((name, done, lc))
        k1 = int(done.k1.iloc[0])
        table = done[["k2", "val_nats_per_char", "minutes"]].rename(columns={
            "val_nats_per_char": "val nats/char", "minutes": "trial minutes"})
        sec.tables[f"truncation_{s.get('tag.study')}"] = table
        sec.captions[f"truncation_{s.get('tag.study')}"] = (
            f"{name}: validation loss after the budget (nats/char, validation split) and "
            f"the trial's wall time (minutes, 2 workers) per k2, k1 = {k1} fixed")
        if not lc.empty:
            what = CLOSERS[dataset][0]
            wide = lc.pivot_table(index="k2", columns="dist_chars", values="mean_nats",
                                  sort=False)
            counts = lc.groupby("dist_chars", sort=False).scored.max()
            wide.columns = [f"{c} chars (n={int(counts[c])})" for c in wide.columns]
            sec.tables[f"closers_{s.get('tag.study')}"] = wide.reset_index()
            sec.captions[f"closers_{s.get('tag.study')}"] = (
                f"{name}: mean loss at {what} (nats/char, test split) by the distance to "
                "the opener, per k2 (n: closers scored, whose opener lay in the stream read)")
        gap, short, best = penalty(done)
        loss = done.set_index("k2").val_nats_per_char
        sec.text += (f"**{name}**: k1 = {k1}; k2 = {short} ends at {loss[short]:.4f} "
                     f"nats/char, the best k2 = {best} at {loss[best]:.4f} ({gap:+.4f}). ")
    if not found:
        sec.missing = ("no study that varies k2 alone: run `python -m study.run "
                       "configs/sweep_bptt.yaml --workers 2` (and sweep_bptt_linux.yaml)")
        return sec
    sec.figures.append(save(figure(found), out, "truncation", (
        "Truncation depth with k1 fixed: validation loss (nats/char, validation split) "
        "against k2 and against wall time; per corpus, the test loss at closing quotes or "
        "braces (nats/char, test split) by distance to the opener, and its change from the "
        "shortest k2.")))
    return sec


def penalty(done: pd.DataFrame) -> tuple[float, int, int]:
    """(val loss at the shortest k2 minus the best, the shortest k2, the best k2)."""
    best = done.loc[done.val_nats_per_char.idxmin()]
    short = done[done.k2 == done.k2.min()].iloc[0]
    return float(short.val_nats_per_char - best.val_nats_per_char), int(short.k2), \
        int(best.k2)



