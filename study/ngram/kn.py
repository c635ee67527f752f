r"""Character n-gram models with interpolated Kneser–Ney smoothing, counted with numpy.

Karpathy15 compare their LSTMs with character n-gram models of order 1..20 ("interpolated
Kneser-Ney"). This module fits every order at once on a text of token ids and scores any
other text with them. Which smoothing, exactly
--------------------------------------------
`mkn` (the default) is interpolated *modified* Kneser–Ney (Chen & Goodman 1998, §3.3-3.5):
three discounts per order, D1, D2 and D3+, for n-grams seen once, twice and three or more
times; `kn` is interpolated Kneser–Ney with one discount per order (D1 = D2 = D3+ = D).

Notation: an order-k model predicts character w from the k − 1 characters h before it;
h' is h without its first character; V is the vocabulary size (the corpus's, so characters
never seen in training still get probability).

* Raw counts: c(hw) = how often the k-gram hw occurs in the training text (every window
  of k characters that lies inside it). Continuation counts (the lower orders of
  Kneser–Ney): c*(hw) = N1+(• hw), the number of distinct characters that precede hw in
  the training text (so the k-gram at the very start of the text adds no continuation).
* For either kind of count c and a context h: C(h) = Σ_w c(hw), and Nj(h) = the number of
  distinct w with c(hw) = j (j = 1, 2) or ≥ 3 (j = 3).
* Discounts, per order and per kind of count, from its count-of-counts n_r (the number of
  k-grams with count r): Y = n1 / (n1 + 2 n2), D1 = 1 − 2Y n2/n1, D2 = 2 − 3Y n3/n2,
  D3+ = 3 − 4Y n4/n3 (`kn`: D = Y for all three). A discount that is undefined (a zero
  count-of-counts in a denominator, in tiny texts) is j/2 (`kn`: 1/2); each is then
  clipped to [0.1, j] (`kn`: [0.1, 1]) so that a seen context always leaves some mass to
  the lower order (every probability stays > 0). Nothing is tuned on the validation
  split: the discounts come from the training counts alone.
* The interpolation, level by level, with P_0(w) = 1/V:

      P_k(w | h) = [max(c(hw) − D(c(hw)), 0) + γ(h) · P*_{k−1}(w | h')] / C(h)
      γ(h)      = D1 N1(h) + D2 N2(h) + D3+ N3+(h)

  when C(h) > 0, and P_k(w | h) = P*_{k−1}(w | h') when the context was never followed by
  anything in training. P* is this formula on continuation counts (with their discounts),
  P on raw counts: the order-n model is P_n, on raw counts at its top level and
  continuation counts below. For every context the probabilities over the V characters
  sum to 1 (the tests check it to 1e-9). Order 1 is the unigram P_1(w) = [max(c(w) −
  D, 0) + γ/V] / N, interpolated with the uniform distribution.

Scoring a text
--------------
`KneserNey.log_probs(ids)` gives ln P_n(ids[i] | ids[i−n+1 : i]) for every position i and
order n = 1..max_order: the context is taken from the scored text itself (not from the
training text before it), so at its start, where fewer than n − 1 characters precede i,
the order-n model uses the context there is: it predicts as the order-(i + 1) model.

How it is counted
-----------------
Every k-gram of the training text gets a dense rank among the k-grams, built up from the
(k−1)-gram ranks: the k-gram ending at i is the pair (rank of the (k−1)-gram ending at
i − 1, ids[i]), encoded as one int64 and ranked by np.unique. Ranks are exact (no hashing:
no collisions), the table of order k is the sorted array of its pair keys, and looking up
a text's k-grams is a np.searchsorted into it. The model takes about 40 bytes per distinct
k-gram; the time is one sort of the text per order.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

SMOOTHINGS = ("mkn", "kn")
MAX_ORDER = 20  # the paper's largest; orders are checked against it
MIN_DISCOUNT = 0.1


class NGramError(ValueError):
    """An n-gram model that cannot be built or used as asked; the message says why."""


def check_order(order: int, name: str = "order", hi: int = MAX_ORDER) -> int:
    if isinstance(order, bool) or not isinstance(order, int | np.integer) or \
            not 1 <= order <= hi:
        raise NGramError(f"{name} = {order!r}: an n-gram order is an integer from 1 to {hi}")
    return int(order)


def check_smoothing(smoothing: str) -> str:
    if smoothing not in SMOOTHINGS:
        raise NGramError(f"smoothing = {smoothing!r}: use one of {', '.join(SMOOTHINGS)} "
                         "(mkn: modified Kneser-Ney, three discounts; kn: one discount)")
    return smoothing


def discounts(counts: np.ndarray, smoothing: str) -> np.ndarray:
    """(D1, D2, D3+) from the count-of-counts of `counts` (the module docstring)."""
    n = [int(np.count_nonzero(counts == r)) for r in (1, 2, 3, 4)]
    y = n[0] / (n[0] + 2 * n[1]) if n[0] + 2 * n[1] > 0 else math.nan
    if smoothing == "kn":
        d = [y, y, y]
    else:
        d = [1 - 2 * y * n[1] / n[0] if n[0] else math.nan,
             2 - 3 * y * n[2] / n[1] if n[1] else math.nan,
             3 - 4 * y * n[3] / n[2] if n[2] else math.nan]
    out = np.empty(3)
    for j, v in enumerate(d, start=1):
        hi = 1.0 if smoothing == "kn" else float(j)
        v = v if math.isfinite(v) else hi / 2
        out[j - 1] = min(max(v, MIN_DISCOUNT), hi)
    return out


@dataclass
class _Level:
    """One kind of count (raw or continuation) at one order: per k-gram its count; per
    context (the (k−1)-gram rank) its total C(h) and mass γ(h); the three discounts."""

    count: np.ndarray  # (types_k,) int32
    total: np.ndarray  # (contexts,) float64: C(h)
    gamma: np.ndarray  # (contexts,) float64
    d: np.ndarray  # (3,) D1, D2, D3+

    @classmethod
    def build(cls, count: np.ndarray, ctx: np.ndarray, n_ctx: int, smoothing: str) -> _Level:
        d = discounts(count, smoothing)
        total = np.bincount(ctx, weights=count, minlength=n_ctx).astype(np.float64)
        gamma = np.bincount(ctx, weights=cls._discount(count, d), minlength=n_ctx)
        return cls(count.astype(np.int32), total, gamma, d)

    @staticmethod
    def _discount(count: np.ndarray, d: np.ndarray) -> np.ndarray:
        """D(c): 0 for an unseen n-gram, else D1, D2 or D3+."""
        return np.where(count > 0, d[np.clip(count, 1, 3) - 1], 0.0)

    def discounted(self, count: np.ndarray) -> np.ndarray:
        return np.maximum(count - self._discount(count, self.d), 0.0)

    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.count, self.total, self.gamma))


@dataclass
class _Order:
    keys: np.ndarray  # (types_k,) int64, sorted: (rank of the (k−1)-gram) · V + last char
    raw: _Level
    cont: _Level | None = None  # the continuation counts (absent for the top order)


@dataclass
class KneserNey:
    """Interpolated (modified) Kneser–Ney character models of every order 1..max_order,
    fitted on one text (`fit`); `log_probs` scores a text with all of them at once."""

    vocab_size: int
    max_order: int
    smoothing: str
    train_chars: int
    orders: list[_Order] = field(default_factory=list)  # orders[k − 1]
    fit_seconds: list[float] = field(default_factory=list)  # per order, cumulative

    @classmethod
    def fit(cls, ids, vocab_size: int, max_order: int = MAX_ORDER,
            smoothing: str = "mkn", progress=None) -> KneserNey:
        """Count every order 1..max_order on `ids` (token ids < vocab_size).
        progress(order, seconds) is called after each order is counted."""
        check_order(max_order, "max_order")
        check_smoothing(smoothing)
        x = np.ascontiguousarray(np.asarray(ids), dtype=np.int64)
        if x.ndim != 1 or not len(x):
            raise NGramError("an n-gram model needs a non-empty 1-d text of token ids")
        V = int(vocab_size)
        if x.min() < 0 or x.max() >= V:
            raise NGramError(f"token ids must lie in 0..{V - 1} (the vocabulary), got "
                             f"{x.min()}..{x.max()}")
        self = cls(V, max_order, smoothing, len(x))
        t0 = time.perf_counter()
        n_ctx, prev_rank = 1, None  # the empty context; ranks of the (k−1)-grams
        pending = None  # (ctx, n_ctx) of order k − 1, awaiting its continuation counts
        for k in range(1, max_order + 1):
            if k > len(x):  # no k-gram fits: an empty table (every context unseen)
                keys = np.zeros(0, np.int64)
                counts = np.zeros(0, np.int64)
                rank = np.zeros(0, np.int64)
                first = np.zeros(0, np.int64)
            else:
                # the k-gram ending at i (i ≥ k − 1) as (rank of the (k−1)-gram at i − 1, x[i])
                pair = x[k - 1:] if k == 1 else prev_rank[:-1] * V + x[k - 1:]
                keys, first, rank, counts = np.unique(pair, return_index=True,
                                                      return_inverse=True, return_counts=True)
                rank = rank.reshape(-1)
            ctx = keys // V if k > 1 else np.zeros(len(keys), np.int64)
            if pending is not None:  # continuation counts of order k − 1 from the k-grams
                p_ctx, p_nctx = pending
                # the (k−1)-gram that a k-gram type ends with: its suffix, at the same
                # position (rank of order k − 1 at the k-gram's first occurrence)
                suffix = prev_rank[first + 1] if len(first) else np.zeros(0, np.int64)
                cont = np.bincount(suffix, minlength=len(p_ctx)).astype(np.int64)
                self.orders[-1].cont = _Level.build(cont, p_ctx, p_nctx, smoothing)
            self.orders.append(_Order(keys, _Level.build(counts.astype(np.int64), ctx,
                                                          n_ctx, smoothing)))
            pending = (ctx, n_ctx)
            n_ctx, prev_rank = len(keys), rank
            self.fit_seconds.append(time.perf_counter() - t0)
            if progress is not None:
                progress(k, self.fit_seconds[-1])
        return self

    def nbytes(self) -> int:
        return sum(o.keys.nbytes + o.raw.nbytes() + (o.cont.nbytes() if o.cont else 0)
                   for o in self.orders)

    # scoring -----------------------------------------------------------------------------
    def _text(self, ids) -> np.ndarray:
        x = np.ascontiguousarray(np.asarray(ids), dtype=np.int64)
        if x.ndim != 1:
            raise NGramError(f"a text to score is a 1-d array of token ids, got shape {x.shape}")
        if len(x) and (x.min() < 0 or x.max() >= self.vocab_size):
            raise NGramError(f"token ids must lie in 0..{self.vocab_size - 1} (the "
                             f"vocabulary), got {x.min()}..{x.max()}")
        return x

    def _ranks(self, x: np.ndarray) -> list[np.ndarray]:
        """ranks[k − 1][i]: the rank of the k-gram of x ending at i in the training
        table of order k, or −1 (unseen, or i < k − 1)."""
        V, out, prev = self.vocab_size, [], None
        for k, o in enumerate(self.orders, start=1):
            r = np.full(len(x), -1, np.int64)
            if k <= len(x) and len(o.keys):
                if k == 1:
                    key, valid = x.copy(), np.ones(len(x), bool)
                else:
                    p = prev[k - 2:-1]  # the (k−1)-gram ending at i − 1, for i ≥ k − 1
                    valid = p >= 0
                    key = np.where(valid, p, 0) * V + x[k - 1:]
                j = np.searchsorted(o.keys, key)
                j_ok = np.minimum(j, len(o.keys) - 1)
                hit = valid & (j < len(o.keys)) & (o.keys[j_ok] == key)
                r[k - 1:] = np.where(hit, j_ok, -1)
            out.append(r)
            prev = r
        return out

    def log_probs(self, ids, max_order: int | None = None) -> np.ndarray:
        """(max_order, N) float64: ln P_n(ids[i] | the n − 1 characters before i in ids)
        for n = 1..max_order (row n − 1); at i < n − 1 the order-(i + 1) model's."""
        K = check_order(max_order if max_order is not None else self.max_order, "order",
                        self.max_order)
        x = self._text(ids)
        N = len(x)
        ranks = self._ranks(x)
        out = np.empty((K, N))
        lower = np.full(N, 1.0 / self.vocab_size)  # P*_{k−1}: continuation level below
        for k in range(1, K + 1):
            o = self.orders[k - 1]
            if k == 1:
                ctx = np.zeros(N, np.int64)
            else:
                ctx = np.full(N, -1, np.int64)
                ctx[1:] = ranks[k - 2][:-1]  # the (k−1)-gram ending at i − 1
            top = self._level(o.raw, ctx, ranks[k - 1], lower)
            out[k - 1] = np.log(top)
            if k < K:
                lower = self._level(o.cont, ctx, ranks[k - 1], lower)
        for k in range(2, K + 1):  # the start of the text: only i characters of context
            n = min(k - 1, N)
            out[k - 1, :n] = out[np.arange(n), np.arange(n)]
        return out

    @staticmethod
    def _level(lv: _Level, ctx: np.ndarray, rank: np.ndarray, lower: np.ndarray) -> np.ndarray:
        c = np.where(ctx >= 0, ctx, 0)
        total = np.where(ctx >= 0, lv.total[c] if len(lv.total) else 0.0, 0.0)
        seen = total > 0
        count = np.where(rank >= 0, lv.count[np.maximum(rank, 0)] if len(lv.count) else 0, 0)
        own = lv.discounted(count)
        gamma = lv.gamma[c] if len(lv.gamma) else np.zeros(c.shape)
        with np.errstate(divide="ignore", invalid="ignore"):
            p = (own + gamma * lower) / total
        return np.where(seen, p, lower)

    def distributions(self, ids, order: int) -> np.ndarray:
        """(N, V) float64: the order-`order` model's distribution of the character at each
        position i of ids, given the characters before it (conditioned as log_probs is):
        every row sums to 1. Memory about 5 · N · V · 8 bytes; meant for short stretches."""
        K = check_order(order, "order", self.max_order)
        x = self._text(ids)
        N, V = len(x), self.vocab_size
        ranks = self._ranks(x)
        w = np.arange(V)[None, :]  # (1, V) every candidate character
        lower = np.full((N, V), 1.0 / V)
        tops = []
        for k in range(1, K + 1):
            o = self.orders[k - 1]
            ctx = np.zeros(N, np.int64) if k == 1 else np.full(N, -1, np.int64)
            if k > 1:
                ctx[1:] = ranks[k - 2][:-1]
            ctx = ctx[:, None]  # (N, 1)
            rank = np.full((N, V), -1, np.int64)
            if len(o.keys):
                key = np.where(ctx >= 0, ctx, 0) * V + w if k > 1 else np.broadcast_to(w, (N, V))
                j = np.searchsorted(o.keys, key)
                j_ok = np.minimum(j, len(o.keys) - 1)
                rank = np.where((ctx >= 0) & (o.keys[j_ok] == key), j_ok, -1)
            tops.append(self._level(o.raw, ctx, rank, lower))
            if k < K:
                lower = self._level(o.cont, ctx, rank, lower)
        out = tops[-1]
        for i in range(min(K - 1, N)):  # the start of the text: only i characters of context
            out[i] = tops[i][i]
        return out


def nats(log_probs_row: np.ndarray) -> float:
    """Mean loss in nats/char of one order's row of log_probs."""
    return float(-np.mean(log_probs_row)) if len(log_probs_row) else math.nan
