"""The claims judged from the Optuna studies (analyses.claims' table lists them with the
rest): TBPTT 50 vs 100, clipping needed, too short a truncation, clipping preventing
divergence, the learning rate first. Each reads the studies' trials tables
(study/trials.csv); the truncation claim also the long-lag runs."""

from __future__ import annotations

import pandas as pd

from analyses.seeds import MARGIN
from analyses.verdicts import NOT, NOT_RUN, REPRODUCED


def trials(runs):
    out = []
    for _, s in runs.studies.iterrows():
        t = runs.csv(s.run_id, "study/trials.csv")
        if t is not None and len(t):
            out.append((s, t))
    return out


def c_bptt_50(runs, df):
    for s, t in trials(runs):
        done = t[t.state == "COMPLETE"]
        a, b = done[done.k2 == 50], done[done.k2 == 100]
        if len(a) and len(b):
            gap = a.val_nats_per_char.min() - b.val_nats_per_char.min()
            return (REPRODUCED if gap < MARGIN else NOT), (
                f"study {s.get('tag.study')}, best val nats/char: k2=50 "
                f"{a.val_nats_per_char.min():.3f} vs k2=100 {b.val_nats_per_char.min():.3f} "
                f"(costs little: less than {MARGIN} nats/char more)")
    return NOT_RUN, "needs a sweep with k2 = 50 and 100 (configs/sweep_bptt_clip.yaml)"


def c_clipping(runs, df):
    rows, ok = [], []
    for s, t in trials(runs):  # every study that ran with and without clipping
        none, clipped = t[t["clip"] == "none"], t[(t["clip"] != "none") & t["clip"].notna()]
        if not len(none) or not len(clipped):
            continue
        diverged = int(_diverged(none).sum())
        best_none = none[_converged(none)].val_nats_per_char.min()
        best_clip = clipped[_converged(clipped)].val_nats_per_char.min()
        ok.append(bool(diverged) or best_none != best_none or best_none > best_clip + MARGIN)
        rows.append(f"study {s.get('tag.study')}: without clipping {diverged} of {len(none)} "
                    f"trials diverged, best val {best_none:.3f} nats/char; with clipping best "
                    f"val {best_clip:.3f} nats/char")
    if not ok:
        return NOT_RUN, "needs a sweep with and without clipping (configs/sweep_bptt_clip.yaml)"
    return (REPRODUCED if all(ok) else NOT), "; ".join(rows) + (
        f" (one sweep: a difference under {MARGIN} nats/char is not claimed)")


def _diverged(t: pd.DataFrame) -> pd.Series:
    """Diverged trials: outcome "diverged" (COMPLETE at the penalty), or FAIL in a table
    written before divergence was an outcome."""
    if "outcome" in t:
        return t.outcome == "diverged"
    return t.state == "FAIL"


def _converged(t: pd.DataFrame) -> pd.Series:
    return (t.state == "COMPLETE") & ~_diverged(t)


def c_too_short_bptt(runs, df):
    """From the studies that vary k2 alone (analyses.truncation) and the long-lag runs
    (analyses.longlag). Reproduced when, in every such study, the shortest k2 (= k1) ends
    at least MARGIN above the best k2, and, where long-lag runs exist, the gated cells
    (lstm, gru) learn the task more often with k2 ≥ lag than with k2 < lag."""
    from analyses import longlag, truncation

    found = truncation.studies(runs)
    if not found:
        return NOT_RUN, ("needs a study that varies k2 alone at fixed k1 "
                         "(configs/sweep_bptt.yaml, sweep_bptt_linux.yaml)")
    rows, ok = [], []
    for s, done in found:
        gap, short, best = truncation.penalty(done)
        ok.append(gap >= MARGIN)
        dataset = truncation.dataset_of(s)
        far = truncation.far_gain(truncation.long_context(runs, done, dataset))
        closers = "" if far is None else (
            f"; at {truncation.CLOSERS[dataset][0]} ≥ 100 chars from their opener (test, "
            f"n = {far[2]}) k2 = {short} has {far[0]:.3f} nats/char, the longer k2 "
            f"{far[1]:.3f} on average")
        rows.append(f"study {s.get('tag.study')} (k1 = {int(done.k1.iloc[0])}, "
                    f"{int(s.get('param.train.epochs', 0) or 0)} epochs, val nats/char): k2 = "
                    f"{short} is {gap:+.4f} above the best k2 = {best}{closers}")
    o = longlag.outcomes(runs)
    if len(o):
        gated = o[o.cell.isin(["lstm", "gru"])]
        far, near = gated[gated.k2 < gated.lag], gated[gated.k2 >= gated.lag]
        if len(far) and len(near):
            ok.append(far.learned.mean() < near.learned.mean())
            rows.append(f"long-lag ({', '.join(sorted(o.task.unique()))}; lstm and gru): "
                        f"learned in {int(near.learned.sum())}/{len(near)} runs with k2 ≥ lag, "
                        f"{int(far.learned.sum())}/{len(far)} with k2 < lag")
    return (REPRODUCED if all(ok) else NOT), "; ".join(rows) + (
        f" (hurts: the shortest k2 at least {MARGIN} nats/char above the best, one seed)")


def c_clip_prevents_divergence(runs, df):
    """From studies with unclipped and clipped trials at the same learning rates: at every
    learning rate where an unclipped trial diverged, some clipped trial converged."""
    rows, ok, any_lr = [], [], False
    for s, t in trials(runs):
        if "lr" not in t or t.lr.isna().all():
            continue
        none = t[t["clip"] == "none"]
        clipped = t[(t["clip"] != "none") & t["clip"].notna()]
        if not len(none) or not len(clipped):
            continue
        any_lr = True
        bad_lrs = sorted(none[_diverged(none)].lr.unique())
        for lr in bad_lrs:
            at = clipped[clipped.lr == lr]
            saved = sorted(at[_converged(at)]["clip"].unique())
            ok.append(bool(saved))
            rows.append(f"study {s.get('tag.study')}, lr {lr:g}: unclipped diverged; "
                        f"converged with {', '.join(saved) or 'no clipping mode'} "
                        f"(of {len(at)} clipped trials)")
    if not any_lr:
        return NOT_RUN, ("needs a study over learning rates with and without clipping "
                         "(configs/sweep_bptt_clip.yaml)")
    if not ok:
        return NOT_RUN, ("no unclipped trial diverged in the studies over learning rates: the "
                         "regime where clipping matters was not reached")
    return (REPRODUCED if all(ok) else NOT), "; ".join(rows)


def c_lr(runs, df):
    for s, _ in trials(runs):
        imp = runs.csv(s.run_id, "study/importances.csv")
        if imp is not None and "lr" in set(imp.param):
            tops = imp.sort_values("importance").groupby("method").tail(1)
            ok = (tops.param == "lr").all()
            return (REPRODUCED if ok else NOT), (
                f"study {s.get('tag.study')}: most important " + ", ".join(
                    f"{m}: {p} {v:.2f}" for m, p, v in zip(tops.method, tops.param,
                                                           tops.importance, strict=True)))
    return NOT_RUN, "needs a study that searches lr (configs/sweep_tpe_lr.yaml)"
