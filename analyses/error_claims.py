"""The claims of Karpathy15's error analysis (§4), for the claims table (analyses.claims
lists them with the rest): the LSTM beats the 20-gram on both corpora, and its advantage at
closing braces holds out to about 60 characters from the opening brace. Each check reads
the n-gram runs (study.ngram) and the LSTM runs' error analysis (study.errors), only ever
comparing runs on the same corpus (analyses.error_analysis.same_corpus)."""

from __future__ import annotations

import pandas as pd

from analyses.error_analysis import (
    brace_bins,
    corpus_name,
    ngram_loss,
    ngram_runs,
    per_seed,
    pool,
    published_20gram,
    same_corpus,
)
from analyses.verdicts import NOT, NOT_RUN, REPRODUCED
from study.errors import FAR

DATASETS = ("warpeace", "linux")  # Karpathy15's two corpora
LSTM = "lstm"  # Karpathy15's LSTM has no peepholes: our `lstm`
MIN_BRACES = 10  # a distance bin with fewer braces per run is too noisy to count
PAPER = {"warpeace": "1.077 vs 1.195", "linux": "0.84 vs 0.889"}  # Karpathy15 §4


def _lstm(train: pd.DataFrame) -> pd.DataFrame:
    return train[train["tag.variant"] == LSTM] if len(train) else train


def lstm_vs_20gram(runs) -> list[tuple[tuple, pd.Series, pd.DataFrame]]:
    """(corpus, n-gram run, the lstm runs of the best size on that corpus) for every n-gram
    run on warpeace or linux with an order-20 loss and lstm runs on the same corpus. The best
    size: the lowest mean test loss over seeds (Karpathy15 compare their best model)."""
    out, ng = [], ngram_runs(runs)
    for _, r in ng[ng.corpus.map(lambda k: k[0] in DATASETS)].iterrows():
        lstm = per_seed(_lstm(same_corpus(runs.train, r.corpus)))
        if lstm.empty or ngram_loss(r, 20) != ngram_loss(r, 20):
            continue
        best = lstm.groupby("size").test_nats_per_char.mean().idxmin()
        out.append((r.corpus, r, lstm[lstm["size"] == best]))
    return out


def c_lstm_beats_20gram(runs, df):
    found = lstm_vs_20gram(runs)
    if not found:
        return NOT_RUN, (f"needs an n-gram run up to order 20 (`python -m study.ngram "
                         f"configs/ablation.yaml`) and lstm runs on the same corpus "
                         f"({' or '.join(DATASETS)}, same data.max_chars and data.splits)")
    rows, ok = [], []
    for key, r, lstm in found:
        model, ngram = lstm.test_nats_per_char.mean(), ngram_loss(r, 20)
        ok.append(model < ngram)
        paper = f"; Karpathy15: {PAPER[key[0]]}" if published_20gram(key) == \
            published_20gram(key) else ""
        rows.append(f"{key[0]} ({corpus_name(key)}), test nats/char: lstm "
                    f"{lstm['size'].iloc[0]} {model:.3f} (n = {len(lstm)}) vs 20-gram "
                    f"({r.smoothing}) {ngram:.3f}, the lstm "
                    f"{'lower' if model < ngram else 'higher'} by {abs(ngram - model):.3f}"
                    + paper)
    return (REPRODUCED if all(ok) else NOT), "; ".join(rows)


def lstm_brace_bins(runs) -> pd.DataFrame:
    """The lstm runs' errors/braces.csv on linux, one frame (brace_bins)."""
    train = runs.train
    if "errors/braces" not in train:
        return pd.DataFrame()
    rows = _lstm(train[train["errors/braces"].notna() & (train["tag.dataset"] == "linux")])
    return brace_bins(runs, rows)


def c_lstm_gain_long_range(runs, df):
    bins = lstm_brace_bins(runs)
    if bins.empty:
        return NOT_RUN, ("needs lstm runs on linux with the brace analysis (`python -m "
                         "study.errors RUN_ID`, or train with probes.errors: true)")
    rows, ok = [], []
    for (key, size), p in pool(bins, ["corpus", "size"]).groupby(["corpus", "size"]):
        near = p[(p.hi_chars <= FAR) & (p.braces >= MIN_BRACES)]
        far = p[(p.lo_chars >= FAR) & (p.braces > 0)]
        if near.empty:
            continue
        ok.append(bool((near.mean_p_model > near.mean_p_ngram).all()))
        runs_n = int(p.runs.max())
        rows.append(f"linux ({corpus_name(key)}), lstm {size} ({runs_n} run"
                    f"{'s' if runs_n > 1 else ''}), mean p(}}) model vs 20-gram: "
                    + _bins(near) + f"; beyond {FAR} chars: "
                    + (_bins(far) if len(far) else "no braces"))
    if not ok:
        return NOT_RUN, (f"no distance bin up to {FAR} chars has {MIN_BRACES} braces per run "
                         "in the lstm runs' test split")
    return (REPRODUCED if all(ok) else NOT), "; ".join(rows) + (
        f" (bins up to {FAR} chars with ≥ {MIN_BRACES} braces per run must favour the model)")


def _bins(p: pd.DataFrame) -> str:
    return ", ".join(f"{r.dist_chars} chars {r.mean_p_model:.2f} vs {r.mean_p_ngram:.2f} "
                     f"(n = {r.braces:.0f})" for r in p.itertuples())


CHECKS = {"lstm_beats_20gram": c_lstm_beats_20gram,
          "lstm_gain_long_range": c_lstm_gain_long_range}


def behind_errors(claim_id: str, runs) -> pd.DataFrame:
    """The rows of runs.train a claim's check draws its verdict from (for the size rule,
    analyses.claims.too_small)."""
    train = runs.train
    if claim_id == "lstm_beats_20gram":
        ids = [i for _, _, lstm in lstm_vs_20gram(runs) for i in lstm.run_id]
    elif claim_id == "lstm_gain_long_range":
        bins = lstm_brace_bins(runs)
        ids = list(bins.run_id.unique()) if len(bins) else []
    else:
        raise KeyError(f"{claim_id!r} is not an error-analysis claim; these are: "
                       f"{', '.join(CHECKS)}")
    return train[train.run_id.isin(ids)] if len(train) else train
