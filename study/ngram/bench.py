"""`python -m study.ngram.bench`: how long the n-gram baselines take and how much memory.

For each corpus, in a fresh process of its own (so that its memory is its own): fit every
order 1..--orders on the train split (study.ngram.kn, no cache), score the test split
with all of them, and report the wall time of each, the peak of numpy's allocations
(tracemalloc, which numpy reports its arrays to) and the process's peak resident set
above its size before the fit (what the machine must have free). The targets from issue
15: all orders on the Linux train split (5.6 M chars) in ≤ 2 min and ≤ 4 GiB on 2 cores,
the test split scored in ≤ 1 min.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import tracemalloc
from datetime import date
from pathlib import Path

import pandas as pd


def _rss_mib() -> float:
    """The process's current resident set (Linux /proc), MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2 ** 20


def child(corpus: str, orders: int, smoothing: str) -> dict:
    from study.config import DataConfig
    from study.data import load_corpus
    from study.ngram.kn import KneserNey, nats

    c = load_corpus(DataConfig(corpus=corpus))
    train, test = c.splits["train"].numpy(), c.splits["test"].numpy()
    base_rss = _rss_mib()
    tracemalloc.start()
    t0 = time.perf_counter()
    model = KneserNey.fit(train, c.vocab_size, orders, smoothing)
    fit_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    lp = model.log_probs(test)
    score_s = time.perf_counter() - t1
    peak_numpy = tracemalloc.get_traced_memory()[1] / 2 ** 20
    tracemalloc.stop()
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"corpus": corpus, "train_chars": len(train), "test_chars": len(test),
            "orders": orders, "smoothing": smoothing, "fit_s": fit_s, "score_s": score_s,
            "peak_numpy_mib": peak_numpy, "peak_rss_above_start_mib": peak_rss - base_rss,
            "model_mib": model.nbytes() / 2 ** 20,
            f"order_{orders}_test_nats_per_char": nats(lp[-1])}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m study.ngram.bench",
                                description=__doc__.split("\n")[0])
    p.add_argument("--corpus", nargs="+", default=["linux", "warpeace"])
    p.add_argument("--orders", type=int, default=20, help="fit orders 1..this")
    p.add_argument("--smoothing", default="mkn", choices=["mkn", "kn"])
    p.add_argument("--out", default="results/bench_ngram.csv", help="CSV to write")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(*json.loads(args.child))))
        return 0
    rows = []
    for corpus in args.corpus:
        spec = json.dumps([corpus, args.orders, args.smoothing])
        out = subprocess.run([sys.executable, "-m", "study.ngram.bench", "--child", spec],
                             capture_output=True, text=True)
        if out.returncode != 0:
            print(f"error: {corpus}: {out.stderr.strip().splitlines()[-1]}", file=sys.stderr)
            return 1
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{corpus}: orders 1..{args.orders} fitted on {r['train_chars']:,} train chars "
              f"in {r['fit_s']:.1f} s, {r['test_chars']:,} test chars scored in "
              f"{r['score_s']:.1f} s; peak {r['peak_rss_above_start_mib']:,.0f} MiB above the "
              f"start (numpy arrays {r['peak_numpy_mib']:,.0f} MiB)", file=sys.stderr)
    df = pd.DataFrame(rows)
    with pd.option_context("display.float_format", "{:.2f}".format, "display.width", 200):
        print(df.to_string(index=False))
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
    print(f"wrote {path} ({date.today()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
