"""`python -m study.ngram CONFIG [--set ngram.max_order=9]`: Karpathy15's n-gram baselines.

For each corpus the config names (data.corpus, or ablation.datasets), fits character
n-gram models of every order 1..ngram.max_order on the train split (interpolated
Kneser-Ney, study.ngram.kn), scores the test split, and logs one MLflow run per corpus
into the config's experiment, beside its training runs (tag kind=ngram): the test loss
of every order in nats/char and bits/char (as a chart over the order: step = order), the
fit and scoring times, the peak memory, a CSV and a figure. The numbers are cached
(study.ngram.cache), so the error breakdown (study.errors) and the report never refit;
re-running logs a corpus again only with --force (which also refits).

Why a command of its own rather than a section study.run honours: an n-gram model is a
property of a corpus, not of a training run; fitting it needs no model, no grid and no
queue, and it is shared by every run on that corpus.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from study import config as config_mod
from study.config import ConfigError
from study.data import DataError, load_corpus
from study.formats import bits
from study.ngram.cache import NGramResult, test_log_probs
from study.ngram.kn import NGramError


def table(res: NGramResult) -> pd.DataFrame:
    """One row per order: test loss (nats/char, bits/char) and the fit that made it."""
    rows = []
    for k, loss in zip(res.orders, res.nats_per_char, strict=True):
        info = res.fits[k]
        rows.append({"order": k, "test_nats_per_char": loss,
                     "test_bits_per_char": bits(loss),
                     "fit_seconds_to_order": info.order_seconds[k - 1]
                     if k <= len(info.order_seconds) else math.nan,
                     "fit_seconds": info.fit_seconds, "score_seconds": info.score_seconds,
                     "peak_mib": info.peak_mib, "fitted_to_order": info.max_order})
    return pd.DataFrame(rows)


def figure(df: pd.DataFrame, corpus: str, path: Path) -> None:
    """Test loss against the order (the report sets the published 20-gram beside it)."""
    from study.probes.figures import plt  # the harness's Agg backend and style

    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=120)
    ax.plot(df.order, df.test_nats_per_char, "o-", color="#1f77b4", label="this harness")
    best = df.loc[df.test_nats_per_char.idxmin()]
    ax.set_title(f"n-gram test loss on {corpus} (best: order {int(best.order)}, "
                 f"{best.test_nats_per_char:.3f} nats/char)", fontsize=10)
    ax.set_xlabel("order n (characters of context + 1)")
    ax.set_ylabel("test loss (nats/char)")
    ax.set_xticks(range(1, int(df.order.max()) + 1, 1 if df.order.max() <= 10 else 2))
    ax.grid(alpha=0.3)
    sec = ax.secondary_yaxis("right", functions=(lambda x: x / math.log(2),
                                                 lambda x: x * math.log(2)))
    sec.set_ylabel("bits/char")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def log_corpus(store, cfg, corpus, res: NGramResult, df: pd.DataFrame) -> str:
    """One finished MLflow run for one corpus's n-grams; its id."""
    info = res.fits[res.orders[-1]]
    run = store.start(f"ngram-{corpus.name}", {
        "kind": "ngram", "dataset": corpus.name, "data_sha256": corpus.sha256,
        "ngram.checksum": res.checksum, "ngram.smoothing": res.smoothing},
        description=f"Character n-grams of order 1..{res.orders[-1]} on {corpus.name} "
                    f"(interpolated {'modified ' if res.smoothing == 'mkn' else ''}Kneser-Ney)"
                    f": fitted on its train split ({info.train_chars:,} chars), test loss in "
                    "nats/char and bits/char per order (chart: step = order).")
    try:
        run.log_config(cfg, sections=("data", "ngram"))
        run.log_dataset(corpus.name, corpus.sha256, str(corpus.path), {
            "chars": int(corpus.ids.numel()), "vocab_size": corpus.vocab_size,
            **{f"{k}_chars": int(v.numel()) for k, v in corpus.splits.items()}})
        for row in df.itertuples():
            run.log_metrics({"ngram/test_nats_per_char": row.test_nats_per_char,
                             "ngram/test_bits_per_char": row.test_bits_per_char}, step=row.order)
        best = df.loc[df.test_nats_per_char.idxmin()]
        run.log_metrics({
            "ngram/best_test_nats_per_char": best.test_nats_per_char,
            "ngram/best_test_bits_per_char": best.test_bits_per_char,
            "ngram/best_order": best.order,
            **{f"ngram/order_{int(r.order):02d}_test_nats_per_char": r.test_nats_per_char
               for r in df.itertuples()},
            "ngram/fit_seconds": info.fit_seconds, "ngram/score_seconds": info.score_seconds,
            "ngram/peak_mib": info.peak_mib, "ngram/train_chars": info.train_chars,
            "ngram/test_chars": len(corpus.splits["test"])})
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "ngram"
            out.mkdir()
            df.to_csv(out / "ngram_test_loss.csv", index=False)
            figure(df, corpus.name, out / "ngram_test_loss.png")
            run.log_artifacts(out, "ngram")
    except BaseException as e:
        run.end_after(e, "run the same command again")
        raise
    run.end("FINISHED")
    return run.run_id


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m study.ngram", description=__doc__.split("\n")[0])
    p.add_argument("config", help="a YAML config, e.g. configs/ablation.yaml (its corpora and "
                   "its tracking section are used)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set ngram.max_order=9")
    p.add_argument("--force", action="store_true",
                   help="refit (ignore the cache) and log again even if logged")
    p.add_argument("--no-progress", action="store_true", help="no progress lines")
    args = p.parse_args(argv)
    from study.run import datasets_of

    try:
        cfg = config_mod.load(args.config, args.set)
        corpora = []
        for name in datasets_of(cfg):
            d = config_mod.updated(cfg, {"data.corpus": name}).data
            corpora.append(load_corpus(d, Path(cfg.tracking.results_dir) / "cache"))
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    store = None
    if cfg.tracking.enabled:
        from study.tracking import Store

        store = Store(cfg.tracking)
    cache = Path(cfg.tracking.results_dir) / "cache"
    orders = range(1, cfg.ngram.max_order + 1)
    summary = {}
    for corpus in corpora:
        t0 = time.perf_counter()
        try:
            res = test_log_probs(corpus, orders, cfg.ngram.smoothing, cache,
                                 progress=not args.no_progress, force=args.force)
        except (NGramError, MemoryError) as e:
            print(f"error: {corpus.name}: {e}", file=sys.stderr)
            return 1
        df = table(res)
        summary[corpus.name] = df.set_index("order").test_nats_per_char
        where = "read from the cache" if all(res.cached) else "fitted"
        print(f"{corpus.name}: orders 1..{orders[-1]} {where} in "
              f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
        if store is not None:
            logged = [r for r in store.find(kind="ngram", **{"ngram.checksum": res.checksum,
                                                             "ngram.smoothing": res.smoothing})
                      if r.status == "FINISHED"
                      and str(cfg.ngram.max_order) == r.params.get("ngram.max_order")]
            if logged and not args.force:
                print(f"  already logged as run {logged[0].run_id} (--force logs it again)",
                      file=sys.stderr)
            else:
                print(f"  logged as run {log_corpus(store, cfg, corpus, res, df)}",
                      file=sys.stderr)
    out = pd.DataFrame(summary)
    with pd.option_context("display.float_format", "{:.3f}".format):
        print("\nn-gram test loss (nats/char; test split; "
              f"{'modified ' if cfg.ngram.smoothing == 'mkn' else ''}Kneser-Ney)")
        print(out.to_string())
    if store is not None:
        from study.run import where_to_browse

        where_to_browse(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
