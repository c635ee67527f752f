"""Karpathy15's error analysis (§4): the n-gram baselines (study.ngram) beside the trained
models, the breakdown of the models' errors into categories, and the probability of closing
braces by the distance to their opening brace (both from study.errors, probes.errors: true).

Runs are set side by side only when they read the same corpus (`same_corpus`): the same
dataset and the same data.max_chars and data.splits, compared as the logged strings (a
param not logged counts as None). A smoke run on the first 20,000 characters is never set
beside an n-gram fitted on the whole corpus.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analyses.common import COLUMN_WIDTH, Section, palette, save, variant_order
from analyses.runs import Runs
from analyses.table1 import published
from study.breakdown import CATEGORIES, CATEGORY_COLOURS, LABELS
from study.errors import FAR

ORDERS = (1, 2, 3, 5, 7, 9, 12, 15, 20)  # the n-gram orders the table shows
ORDER_METRIC = re.compile(r"ngram/order_(\d+)_test_nats_per_char")
PUBLISHED_COLUMN = "published 20-gram test nats/char (as in REFERENCES.md)"
SIZE_STYLES = ("-", "--", ":", "-.")  # a variant's second, third ... size
REPRODUCE = ("`python -m study.ngram configs/ablation.yaml` (n-grams); `python -m "
             "study.errors RUN_ID` or train with probes.errors: true (errors, braces)")


# which runs read the same corpus ---------------------------------------------------------

def _param(v) -> str:
    """A param as MLflow holds it (str(value)); missing, NaN and None read as 'None'."""
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return "None"
    return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)


def corpus_keys(df: pd.DataFrame) -> pd.Series:
    """Per run: (dataset, data.max_chars, data.splits) as strings, the corpus it read."""
    cols = [df[c].map(_param) if c in df else pd.Series("None", index=df.index)
            for c in ("tag.dataset", "param.data.max_chars", "param.data.splits")]
    return pd.Series(list(zip(*cols, strict=True)), index=df.index, dtype=object)


def same_corpus(train: pd.DataFrame, key: tuple) -> pd.DataFrame:
    """The training runs that read the corpus `key` (corpus_keys)."""
    return train[corpus_keys(train).map(lambda k: k == key)] if len(train) else train


def _on(df: pd.DataFrame, key: tuple) -> pd.DataFrame:
    """The rows of a frame with a corpus column (corpus_keys) on the corpus `key`."""
    return df[df.corpus.map(lambda k: k == key)]


def _in_order(df: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    """Sorted by `cols`, variants in the registry's order (variant_order)."""
    order = {v: i for i, v in enumerate(variant_order(df.variant))}
    return df.sort_values(cols, key=lambda c: c.map(order) if c.name == "variant" else c,
                          kind="stable")


def corpus_name(key: tuple) -> str:
    """'whole corpus', 'first 20,000 chars', ... (without the dataset)."""
    _, max_chars, splits = key
    parts = [f"first {int(float(max_chars)):,} chars" if max_chars != "None" else "",
             f"splits {splits}" if splits != "None" else ""]
    return ", ".join(p for p in parts if p) or "whole corpus"


def ngram_runs(runs: Runs) -> pd.DataFrame:
    """The newest finished n-gram run per corpus (corpus_keys) and smoothing, with columns
    corpus and smoothing added. Read from runs.all, as Runs.of_kind does."""
    df = runs.all
    if df.empty or "tag.kind" not in df:
        return pd.DataFrame(columns=["run_id", "corpus", "smoothing"])
    df = df[(df["tag.kind"] == "ngram") & (df.status == "FINISHED")]
    logged = pd.Series([len(ngram_curve(r)) > 0 for _, r in df.iterrows()], index=df.index,
                       dtype=bool)  # a run that logged a loss
    df = df[logged]
    smoothing = df.get("param.ngram.smoothing", "?")
    df = df.assign(corpus=corpus_keys(df), smoothing=smoothing)
    df = df.sort_values("start").drop_duplicates(["corpus", "smoothing"], keep="last")
    return df.sort_values(["corpus", "smoothing"])


def ngram_curve(row: pd.Series) -> pd.Series:
    """An n-gram run's test loss (nats/char, test split) by order, every order it logged."""
    found = {int(m[1]): float(v) for k, v in row.items()
             if (m := ORDER_METRIC.fullmatch(str(k))) and v == v}
    return pd.Series(found, dtype=float).sort_index()


def ngram_loss(row: pd.Series, order: int) -> float:
    """The test loss of one order, NaN when not logged."""
    return float(ngram_curve(row).get(order, math.nan))


def published_20gram(key: tuple) -> float:
    """Karpathy15's 20-gram on this corpus (published.yaml), only for a whole corpus."""
    pub = published()["karpathy2015_best"].get(key[0])
    return float(pub["ngram20"]) if pub and key[1:] == ("None", "None") else math.nan


def per_seed(rows: pd.DataFrame) -> pd.DataFrame:
    """Columns corpus, variant, size ('2×128') and seed added; a seed run more than once
    counts once (its newest run)."""
    if rows.empty:
        return rows.assign(corpus=None, variant=None, size=None, seed=None)
    seed = rows["tag.seed"] if "tag.seed" in rows else pd.Series(pd.NA, index=rows.index)
    size = [f"{int(layer)}×{int(h)}" if layer == layer and h == h else "?" for layer, h in
            zip(rows["param.model.num_layers"], rows["param.model.hidden_size"], strict=True)]
    df = rows.assign(corpus=corpus_keys(rows), variant=rows["tag.variant"], size=size,
                     seed=seed.fillna(rows.run_id).astype(str))
    df = df.sort_values("start").drop_duplicates(["corpus", "variant", "size", "seed"],
                                                 keep="last")
    return _in_order(df, ["variant", "size"])


def model_losses(train: pd.DataFrame) -> pd.DataFrame:
    """Per (variant, size): n seeds and the mean test loss (nats/char, test split)."""
    if train.empty:
        return pd.DataFrame(columns=["variant", "size", "n", "test"])
    g = per_seed(train).groupby(["variant", "size"], sort=False).test_nats_per_char
    return pd.DataFrame({"n": g.size(), "test": g.mean()}).reset_index()


def _labels(df: pd.DataFrame) -> list[str]:
    """A bar's or line's name within a panel: the variant, with its size where the variant
    has several, and the corpus where the panel holds several."""
    sizes = df.groupby("variant")["size"].nunique()
    corpora = df.corpus.nunique()
    return [r.variant + (f" {r.size}" if sizes[r.variant] > 1 else "")
            + (f" ({corpus_name(r.corpus)})" if corpora > 1 else "") for r in df.itertuples()]


# 1. n-grams beside the models ------------------------------------------------------------

def ngram_part(runs: Runs, sec: Section, out: Path) -> str:
    ng, train = ngram_runs(runs), runs.train
    if ng.empty:
        return ("**n-grams**: no n-gram run; run `python -m study.ngram configs/ablation.yaml`"
                " (or the config of the runs to compare).")
    rows, beside, panels = [], [], []
    shown = [k for k in ORDERS if any(ngram_loss(r, k) == ngram_loss(r, k)
                                      for _, r in ng.iterrows())]
    for key, group in ng.groupby("corpus", sort=False):
        matched = same_corpus(train, key)
        models = model_losses(matched)
        sec.sources += list(group.run_id) + list(matched.run_id)
        panels.append((key, group, models))
        for _, r in group.iterrows():
            curve = ngram_curve(r)
            rows.append({"dataset": key[0], "corpus": corpus_name(key),
                         "smoothing": r.smoothing,
                         **{f"{k}-gram test nats/char": ngram_loss(r, k) for k in shown},
                         "best order": int(curve.idxmin()),
                         "best n-gram test nats/char": curve.min(),
                         PUBLISHED_COLUMN: published_20gram(key)})
            beside += [{"dataset": key[0], "corpus": corpus_name(key), "variant": m.variant,
                        "size": m.size, "n seeds": m.n, "test nats/char": m.test,
                        "smoothing": r.smoothing, "20-gram test nats/char": ngram_loss(r, 20),
                        "model − 20-gram test nats/char": m.test - ngram_loss(r, 20),
                        "best n-gram test nats/char": curve.min()}
                       for m in models.itertuples()]
    sec.tables["ngram"] = pd.DataFrame(rows)
    sec.captions["ngram"] = (
        "Character n-grams (interpolated Kneser-Ney, fitted on the train split): test loss "
        "in nats/char on the test split per order, the best order, and Karpathy15's 20-gram "
        "(as in REFERENCES.md; whole corpora only)")
    sec.tables["ngram_vs_models"] = pd.DataFrame(beside)
    sec.captions["ngram_vs_models"] = (
        "Trained models beside the n-gram on the same corpus (dataset, data.max_chars, "
        "data.splits): test loss in nats/char on the test split, mean over n seeds, and its "
        "difference to the 20-gram's (negative: the model is better)")
    sec.figures.append(save(ngram_figure(panels), out, "ngram_orders", (
        "n-gram test loss (nats/char, test split) against the order, each trained variant's "
        "mean test loss on the same corpus as a horizontal line, and Karpathy15's 20-gram "
        "(as in REFERENCES.md) as a star at order 20.")))
    unmatched = sorted({corpus_name(k) + f" of {k[0]}" for k in corpus_keys(train)}
                       - {corpus_name(k) + f" of {k[0]}" for k in ng.corpus})
    return ("**n-grams**: the test loss (nats/char, test split) of character n-grams of every "
            "order, interpolated Kneser-Ney fitted on the train split, beside the trained "
            "models on the same corpus." + (
                f" Training runs on {', '.join(unmatched)} have no n-gram on that corpus (run"
                " `python -m study.ngram` on their config): not compared." if unmatched else ""))


def ngram_figure(panels):
    rows, cols = (len(panels) + 1) // 2, min(2, len(panels))
    fig, axes = plt.subplots(rows, cols, figsize=(COLUMN_WIDTH * cols, 3.2 * rows),
                             squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (key, group, models) in zip(axes.flat, panels, strict=False):
        for (_, r), ls in zip(group.iterrows(), ("o-", "s--", "^:"), strict=False):
            c = ngram_curve(r)
            ax.plot(c.index, c.values, ls, color="0.2", ms=2.5, lw=1,
                    label=f"n-gram ({r.smoothing})")
        colours = palette(models.variant.unique())
        for m in models.itertuples():
            style = SIZE_STYLES[list(models[models.variant == m.variant]["size"]).index(
                m.size) % len(SIZE_STYLES)]
            ax.axhline(m.test, color=colours[m.variant], ls=style, lw=1,
                       label=f"{m.variant} {m.size} (n={m.n})")
        pub = published_20gram(key)
        if pub == pub:
            ax.plot([20], [pub], "*", color="black", ms=7,
                    label=f"Karpathy15 20-gram ({pub:.3f})")
        ax.set(xlabel="n-gram order", ylabel="test loss (nats/char)",
               title=f"{key[0]} ({corpus_name(key)})", xticks=ORDERS)
        ax.legend(fontsize=5.5, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=2,
                  frameon=False)  # below the panel: no key over the data
    fig.tight_layout()
    return fig


# 2. the breakdown of errors --------------------------------------------------------------

def breakdown_part(runs: Runs, sec: Section, out: Path) -> str:
    train = runs.train
    if "errors/error_rate" not in train or not train["errors/error_rate"].notna().any():
        return ("**Breakdown of errors**: no run with the error analysis; run `python -m "
                "study.errors RUN_ID` or train with probes.errors: true.")
    rows = per_seed(train[train["errors/error_rate"].notna()])
    rows = rows.sort_values("tag.dataset", kind="stable")
    sec.sources += list(rows.run_id)
    fracs = [f"errors/frac_{c}" for c in CATEGORIES]
    g = rows.groupby(["tag.dataset", "corpus", "variant", "size"], sort=False)
    t = g[["errors/error_rate", *fracs]].mean().mul(100).reset_index()
    t.insert(4, "n seeds", g.size().values)
    t = t.rename(columns={"tag.dataset": "dataset", "errors/error_rate": "error rate % of "
                          "test chars", **{f: f"{LABELS[c]} % of errors"
                                           for f, c in zip(fracs, CATEGORIES, strict=True)}})
    sec.figures.append(save(breakdown_figure(t), out, "error_breakdown", (
        "The breakdown of each model's errors on the test split (characters given p < 0.5), "
        "% of errors per category, mean over seeds; the error rate at each bar's end.")))
    t = t.assign(corpus=t.corpus.map(corpus_name))
    sec.tables["error_breakdown"] = t
    sec.captions["error_breakdown"] = (
        "Errors on the test split per model (an error: p < 0.5, a loss above ln 2 = 0.693 "
        "nats/char at that character): the error rate (% of test characters) and each "
        "category's share (% of errors), mean over n seeds")
    return ("**Breakdown of errors**: a character of the test split is an error when the model"
            " gives it p < 0.5 (a loss above 0.693 nats, 1 bit). Each error goes to the first "
            "category that explains it, in this order: n-gram (some n-gram of order ≤ 9 gives "
            "it p ≥ 0.5), dynamic memory (it continues an 8-character string seen in the last "
            "1,000), rare word (inside a word seen ≤ 5 times in train), word start, "
            "punctuation, and boost (the rest); these are the defaults, a run's "
            "probes.errors_* params hold its own (study/breakdown.py defines them). Shares are "
            "% of errors, the error rate % of scored test characters.")


def breakdown_figure(t: pd.DataFrame):
    datasets = list(dict.fromkeys(t.dataset))
    heights = [0.5 + 0.3 * (t.dataset == d).sum() for d in datasets]
    fig, axes = plt.subplots(len(datasets), 1, figsize=(COLUMN_WIDTH * 2, sum(heights) + 0.6),
                             squeeze=False, gridspec_kw={"height_ratios": heights})
    for ax, d in zip(axes[:, 0], datasets, strict=True):
        part = t[t.dataset == d]
        y = np.arange(len(part))[::-1]
        left = np.zeros(len(part))
        for c in CATEGORIES:
            pct = part[f"{LABELS[c]} % of errors"].fillna(0).to_numpy()
            ax.barh(y, pct, left=left, height=0.7, color=CATEGORY_COLOURS[c],
                    edgecolor="white", lw=0.6, label=LABELS[c])
            left += pct
        for yi, rate in zip(y, part["error rate % of test chars"], strict=True):
            ax.text(101, yi, f"error rate {rate:.0f}%", va="center", fontsize=6,
                    clip_on=False)
        ax.set(yticks=y, xlim=(0, 100), title=d, xlabel="% of errors")
        ax.set_yticklabels(_labels(part))
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(CATEGORIES), fontsize=6,
               frameon=False, bbox_to_anchor=(0.5, -0.02))
    fig.tight_layout(rect=(0, 0.06, 0.88, 1))
    return fig


# 3. closing braces -----------------------------------------------------------------------

def brace_bins(runs: Runs, rows: pd.DataFrame) -> pd.DataFrame:
    """Every run's errors/braces.csv (per_seed's columns added), one frame; runs without
    the file are left out."""
    found = []
    for r in per_seed(rows).itertuples():
        b = runs.csv(r.run_id, "errors/braces.csv")
        if b is not None and len(b):
            found.append(b.assign(run_id=r.run_id, dataset=r.corpus[0], variant=r.variant,
                                  corpus=[r.corpus] * len(b), size=r.size))
    return pd.concat(found, ignore_index=True) if found else pd.DataFrame()


def pool(bins: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Per group and distance bin: mean p(}) under the model and the n-gram and the fraction
    of braces where the model's is higher, over runs weighted by their braces in the bin;
    braces per run (mean) and runs."""
    w = bins.braces.astype(float)
    cols = ["mean_p_model", "mean_p_ngram", "frac_model_better"]
    b = bins.assign(w=w, **{c: bins[c].fillna(0) * w for c in cols})
    g = b.groupby([*by, "lo_chars", "hi_chars", "dist_chars"], sort=True)
    out = g[cols].sum().div(g.w.sum().replace(0, np.nan), axis=0)
    out["braces"], out["runs"] = g.braces.mean(), g.run_id.nunique()
    return out.reset_index()


def braces_part(runs: Runs, sec: Section, out: Path) -> str:
    train = runs.train
    rows = train[train["errors/braces"].notna()] if "errors/braces" in train else train[:0]
    bins = brace_bins(runs, rows)
    if bins.empty:
        return ("**Closing braces**: no run on code with the brace analysis (it needs ≥ 20 "
                "matched '}' in the test split, e.g. linux); run `python -m study.errors "
                "RUN_ID` or train with probes.errors: true.")
    sec.sources += list(bins.run_id.unique())
    models = _in_order(pool(bins, ["dataset", "corpus", "variant", "size"]),
                       ["dataset", "variant", "size", "lo_chars"])
    ngram = pool(bins, ["dataset", "corpus"])
    ref = {(c, lo): p for c, lo, p in zip(ngram.corpus, ngram.lo_chars, ngram.mean_p_ngram,
                                          strict=True)}
    sec.figures.append(save(braces_figure(models, ngram), out, "braces", (
        "Closing braces on the test split: the mean probability of '}' by the distance to its "
        "'{', per model and for the 20-gram, and the fraction of braces where the model's "
        "probability is higher.")))
    t = models.assign(ngram=[ref[k] for k in zip(models.corpus, models.lo_chars, strict=True)],
                      corpus=models.corpus.map(corpus_name))
    sec.tables["braces"] = t[["dataset", "corpus", "variant", "size", "dist_chars", "braces",
                              "runs", "mean_p_model", "ngram", "frac_model_better"]].rename(
        columns={"dist_chars": "distance (chars)", "braces": "braces per run",
                 "mean_p_model": "model mean p(})", "ngram": "20-gram mean p(})",
                 "frac_model_better": "model better (fraction)"})
    sec.captions["braces"] = (
        "Closing braces on the test split by the distance from '{' to its '}' (characters): "
        "the mean probability of '}' (a probability p is a loss of −ln p nats/char) under the "
        "model and the 20-gram, and the fraction of braces where the model's is higher, "
        "over runs weighted by braces")
    return ("**Closing braces**: for every '}' of the test split matched to its '{', the "
            "probability the model and the 20-gram (ngram.max_order, fitted on the same train "
            "split) give it, by the distance between the two; Karpathy15 report the LSTM's "
            f"advantage out to about {FAR} characters.")


def braces_figure(models: pd.DataFrame, ngram: pd.DataFrame):
    panels = list(dict.fromkeys(models.corpus))
    fig, axes = plt.subplots(len(panels), 2, figsize=(COLUMN_WIDTH * 2, 2.5 * len(panels)),
                             squeeze=False)
    for (ax, ax2), key in zip(axes, panels, strict=True):
        part = _on(models, key)
        edges = part.drop_duplicates("lo_chars").sort_values("lo_chars")
        labels = list(edges.dist_chars)
        x = {d: i for i, d in enumerate(labels)}
        groups = part.drop_duplicates(["variant", "size"])
        colours = palette(groups.variant.unique())
        width = 0.8 / len(groups)
        for i, (g, name) in enumerate(zip(groups.itertuples(), _labels(groups), strict=True)):
            d = part[(part.variant == g.variant) & (part["size"] == g.size)]
            xs = d.dist_chars.map(x)
            ax.plot(xs, d.mean_p_model, "o-", ms=3, color=colours[g.variant], label=name)
            ax2.bar(xs - 0.4 + width * (i + 0.5), d.frac_model_better, width,
                    color=colours[g.variant], label=name)
        n = _on(ngram, key)
        ax.plot(n.dist_chars.map(x), n.mean_p_ngram, "s--", ms=3, color="0.5", label="20-gram")
        far = [i for i, lo in enumerate(edges.lo_chars) if lo >= FAR]
        for a in (ax, ax2):
            if far:
                a.axvline(far[0] - 0.5, color="0.6", ls=":", lw=0.8)
            a.set_xticks(range(len(labels)), labels, fontsize=6)
            a.set(xlabel="distance from '{' to '}' (chars)", ylim=(0, 1.02))
        ax.set(ylabel="mean p(})", title=f"{key[0]} ({corpus_name(key)}): p of '}}'")
        ax2.axhline(0.5, color="0.6", lw=0.6)
        ax2.set(ylabel="fraction", title="braces where the model beats the 20-gram")
        ax.legend(fontsize=5.5, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=3,
                  frameon=False)
    fig.tight_layout()
    return fig


def build(runs: Runs, out: Path) -> Section:
    sec = Section("Error analysis: n-grams, the breakdown of errors, closing braces "
                  "(Karpathy15)")
    parts = [ngram_part(runs, sec, out), breakdown_part(runs, sec, out),
             braces_part(runs, sec, out)]
    if not sec.tables:
        sec.missing = ("no n-gram run and no run with the error analysis: run " + REPRODUCE)
        return sec
    for name, t in sec.tables.items():
        t.to_csv(out / f"{name}.csv", index=False)
    sec.sources = list(dict.fromkeys(sec.sources))
    sec.text = " ".join(parts) + f" To reproduce: {REPRODUCE}. Losses in nats/char."
    return sec
