"""The n-gram models' results on a corpus, computed once: fitted on the train split, scored
on the test split, cached per (split checksum, order, smoothing).

    res = test_log_probs(corpus, orders=range(1, 10), smoothing="mkn", cache_dir=...)
    res.log_probs          # (len(orders), N_test) float64: ln P_n(test[i] | context)
    res.nats_per_char      # per order, the test loss

The key is the checksum of what the numbers depend on: the vocabulary, the train split and
the test split (`split_checksum`), so the same text under another name, or another
`data.max_chars` or `data.splits`, is a different entry. Each order is one file,
<cache_dir>/ngram/<checksum[:20]>/<smoothing>/order_NN.npz, holding the per-character
test log-probabilities (float32), the test loss (float64) and how the fit went; a file
that does not check out is refitted (with one warning line). A fit counts every order up
to the highest one asked for (the higher orders need the lower ones' counts) and stores
them all, under a lock, so two processes fitting the same corpus fit it once.
"""

from __future__ import annotations

import hashlib
import io
import sys
import time
import tracemalloc
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from study.files import atomic_write, file_lock
from study.ngram.kn import KneserNey, check_order, check_smoothing, nats

FORMAT = 1


def split_checksum(corpus) -> str:
    """sha256 of the corpus's vocabulary, train split and test split (their ids)."""
    h = hashlib.sha256(f"ngram-v{FORMAT}:{corpus.vocab_size}:".encode())
    h.update(corpus.vocab.encode("utf-8"))
    for name in ("train", "test"):
        ids = np.ascontiguousarray(corpus.splits[name].numpy()).astype(np.int32)
        h.update(f"{name}:{len(ids)}:".encode())
        h.update(ids.tobytes())
    return h.hexdigest()


@dataclass
class FitInfo:
    """How one fit of orders 1..max_order went (the same for every order it stored)."""

    max_order: int
    train_chars: int
    fit_seconds: float  # counting every order up to max_order
    score_seconds: float  # scoring the test split with all of them
    peak_mib: float  # the peak of numpy's allocations during fit and scoring
    order_seconds: list[float] = field(default_factory=list)  # cumulative, per order


@dataclass
class NGramResult:
    orders: list[int]
    smoothing: str
    checksum: str
    log_probs: np.ndarray  # (len(orders), N_test)
    nats_per_char: list[float]
    fits: dict[int, FitInfo]  # order -> the fit that produced it
    cached: list[bool]  # per order: read from the cache (True) or fitted now

    def row(self, order: int) -> np.ndarray:
        return self.log_probs[self.orders.index(order)]


def _folder(cache_dir: Path, checksum: str, smoothing: str) -> Path:
    return Path(cache_dir) / "ngram" / checksum[:20] / smoothing


def _read(path: Path, checksum: str, n_test: int):
    """(log_probs float64, nats, FitInfo) from a cache file that checks out, else None."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            ok = (int(z["format"]) == FORMAT and str(z["checksum"]) == checksum
                  and z["log_probs"].shape == (n_test,))
            if ok:
                lp = z["log_probs"].astype(np.float64)
                info = FitInfo(int(z["max_order"]), int(z["train_chars"]),
                               float(z["fit_seconds"]), float(z["score_seconds"]),
                               float(z["peak_mib"]), [float(s) for s in z["order_seconds"]])
                return lp, float(z["nats"]), info
        problem = "was made from another text or format"
    except (OSError, KeyError, ValueError) as e:
        problem = f"cannot be read ({type(e).__name__}: {e})"
    print(f"warning: n-gram cache {path} {problem}; refitting", file=sys.stderr)
    return None


def _save(path: Path, **arrays) -> None:
    """One .npz, written whole or not at all."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def _write(path: Path, checksum: str, lp: np.ndarray, loss: float, info: FitInfo) -> None:
    _save(path, format=FORMAT, checksum=checksum, log_probs=lp.astype(np.float32), nats=loss,
          max_order=info.max_order, train_chars=info.train_chars,
          fit_seconds=info.fit_seconds, score_seconds=info.score_seconds,
          peak_mib=info.peak_mib, order_seconds=np.asarray(info.order_seconds))


def _fill(orders: list[int], found: dict, lookup, fit, folder: Path | None) -> None:
    """lookup() puts what the cache has into `found`; fit(missing) computes (and caches)
    the rest, under the folder's lock and after a second lookup: another process may have
    fitted the same corpus while this one waited."""
    lookup()
    if len(found) < len(orders):
        with file_lock(folder / ".lock" if folder is not None else None):
            lookup()
            missing = [k for k in orders if k not in found]
            if missing:
                fit(missing)


def fit_and_score(corpus, max_order: int, smoothing: str, progress: bool = True):
    """Fit orders 1..max_order on the train split and score the test split: the (max_order,
    N_test) log-probabilities and the FitInfo (time and peak memory of numpy's arrays)."""
    train = corpus.splits["train"].numpy()
    test = corpus.splits["test"].numpy()
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()

    def say(k: int, s: float) -> None:
        if progress:
            print(f"\r  n-grams of {corpus.name}: order {k}/{max_order} counted on "
                  f"{len(train):,} train chars ({s:.1f} s)", end="", file=sys.stderr,
                  flush=True)

    try:
        model = KneserNey.fit(train, corpus.vocab_size, max_order, smoothing, progress=say)
        fit_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        lp = model.log_probs(test)
        score_s = time.perf_counter() - t1
        peak = (tracemalloc.get_traced_memory()[1] - base) / 2 ** 20
    finally:
        if not was_tracing:
            tracemalloc.stop()
    if progress:
        print(f"\r  n-grams of {corpus.name}: orders 1..{max_order} fitted on {len(train):,} "
              f"train chars in {fit_s:.1f} s, test scored in {score_s:.1f} s, peak "
              f"{peak:,.0f} MiB", file=sys.stderr)
    return lp, FitInfo(max_order, len(train), fit_s, score_s, peak, list(model.fit_seconds))


def test_log_probs(corpus, orders: Iterable[int], smoothing: str = "mkn",
                   cache_dir: Path | str | None = None, progress: bool = True,
                   force: bool = False) -> NGramResult:
    """The test split's log-probabilities under each n-gram order, from the cache where it
    has them (cache_dir None: no cache), else fitted now and cached."""
    orders = [check_order(k) for k in orders]
    if not orders:
        raise ValueError("test_log_probs: no orders asked for")
    check_smoothing(smoothing)
    checksum = split_checksum(corpus)
    n_test = len(corpus.splits["test"])
    folder = _folder(cache_dir, checksum, smoothing) if cache_dir is not None else None
    found: dict[int, tuple] = {}

    def lookup():
        if folder is None or force:
            return
        for k in orders:
            if k not in found:
                hit = _read(folder / f"order_{k:02d}.npz", checksum, n_test)
                if hit is not None:
                    found[k] = hit

    fitted = set()

    def fit(missing):
        lp, info = fit_and_score(corpus, max(missing), smoothing, progress)
        for k in range(1, max(missing) + 1):
            loss = nats(lp[k - 1])
            if folder is not None:
                _write(folder / f"order_{k:02d}.npz", checksum, lp[k - 1], loss, info)
            if k in orders and (k not in found or force):
                found[k] = (lp[k - 1].astype(np.float32).astype(np.float64), loss, info)
                fitted.add(k)

    _fill(orders, found, lookup, fit, folder)
    lp = np.stack([found[k][0] for k in orders]) if n_test else np.zeros((len(orders), 0))
    return NGramResult(orders, smoothing, checksum, lp,
                       [found[k][1] for k in orders], {k: found[k][2] for k in orders},
                       [k not in fitted for k in orders])


def stretch_distributions(corpus, orders: Iterable[int], chars: int, smoothing: str = "mkn",
                          cache_dir: Path | str | None = None, progress: bool = True
                          ) -> dict[int, np.ndarray]:
    """order -> (N, V) float64: each order's distribution of every character of the first
    `chars` characters of the val split (KneserNey.distributions), from the cache where it
    has them (keyed also by the stretch's own checksum), else fitted on train now."""
    orders = [check_order(k) for k in orders]
    check_smoothing(smoothing)
    ids = np.ascontiguousarray(corpus.splits["val"][:chars].numpy()).astype(np.int32)
    tag = hashlib.sha256(ids.tobytes()).hexdigest()[:16]
    folder = _folder(cache_dir, split_checksum(corpus), smoothing) \
        if cache_dir is not None else None
    path = (lambda k: folder / f"val_{len(ids)}_{tag}_order_{k:02d}.npz") if folder else None
    out: dict[int, np.ndarray] = {}

    def lookup():
        for k in orders:
            if path is not None and k not in out and path(k).is_file():
                try:
                    with np.load(path(k), allow_pickle=False) as z:
                        if z["p"].shape == (len(ids), corpus.vocab_size):
                            out[k] = z["p"].astype(np.float64)
                except (OSError, KeyError, ValueError) as e:
                    print(f"warning: n-gram cache {path(k)} cannot be read ({e}); refitting",
                          file=sys.stderr)

    def fit(missing):
        t0 = time.perf_counter()
        model = KneserNey.fit(corpus.splits["train"].numpy(), corpus.vocab_size, max(missing),
                              smoothing)
        for k in missing:
            p = model.distributions(ids, k).astype(np.float32)
            if path is not None:
                _save(path(k), p=p)
            out[k] = p.astype(np.float64)
        if progress:
            print(f"  n-grams of {corpus.name}: orders 1..{max(missing)} fitted and their "
                  f"predictions on {len(ids):,} val chars computed in "
                  f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)

    _fill(orders, out, lookup, fit, folder)
    return out
