"""Kneser–Ney character n-grams (study.ngram.kn) against a slow reference written from the
module docstring alone (dicts of n-gram tuples, a recursive P(order, kind, h, w)); rows that
sum to 1; the hand-computed unigram and discounts; a known order-2 Markov chain whose
entropy rate the order-3 model must reach; the start-of-text rule; bad input refused."""

import math
import re
from collections import Counter
from functools import lru_cache

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from study.ngram.kn import KneserNey, NGramError, check_order, discounts, nats


# the reference: the module docstring, transcribed as plainly as possible -----------------
def ref_discounts(values, smoothing):
    """(D1, D2, D3+) from count-of-counts n_r; undefined -> j/2; clipped to [0.1, j]
    (`kn`: one discount D = Y, so j/2 and the clip use j = 1 for all three)."""
    n = {r: sum(1 for v in values if v == r) for r in (1, 2, 3, 4)}
    y = n[1] / (n[1] + 2 * n[2]) if n[1] + 2 * n[2] else None
    if smoothing == "kn":
        return [min(max(0.5 if y is None else y, 0.1), 1.0)] * 3
    raw = [None if y is None or not n[j] else j - (j + 1) * y * n[j + 1] / n[j]
           for j in (1, 2, 3)]
    return [min(max(j / 2 if d is None else d, 0.1), j)
            for j, d in zip((1, 2, 3), raw, strict=True)]


class Reference:
    """P_n from Counters: raw c(hw) over every k-window of the training text; c*(hw) =
    the number of distinct characters seen right before hw."""

    def __init__(self, train, V, K, smoothing):
        self.V = V
        self.c = {"raw": {}, "cont": {}}
        for k in range(1, K + 2):
            self.c["raw"][k] = Counter(tuple(train[i:i + k]) for i in range(len(train) - k + 1))
        for k in range(1, K + 1):
            self.c["cont"][k] = Counter(g[1:] for g in self.c["raw"][k + 1])
        self.d = {(kind, k): ref_discounts(list(self.c[kind][k].values()), smoothing)
                  for kind in ("raw", "cont") for k in range(1, K + 1)}
        self.P = lru_cache(maxsize=None)(self._P)

    def _P(self, k, kind, h, w):
        if k == 0:
            return 1.0 / self.V
        c, D = self.c[kind][k], self.d[kind, k]
        follow = [c.get(h + (x,), 0) for x in range(self.V)]
        total = sum(follow)
        lower = self.P(k - 1, "cont", h[1:], w)
        if total == 0:
            return lower
        gamma = sum(D[min(f, 3) - 1] for f in follow if f > 0)
        f = follow[w]
        own = max(f - D[min(f, 3) - 1], 0) if f > 0 else 0.0
        return (own + gamma * lower) / total

    def log_prob(self, text, i, n):
        """ln P_n(text[i] | text[i - n + 1 : i]), with only min(n - 1, i) chars of context."""
        m = min(n - 1, i)
        return math.log(self.P(m + 1, "raw", tuple(text[i - m:i]), text[i]))


def ids_of(s, alphabet):
    return [alphabet.index(ch) for ch in s]


def assert_matches_reference(train, tests, V, K):
    for smoothing in ("mkn", "kn"):
        model = KneserNey.fit(np.array(train), V, K, smoothing)
        ref = Reference(list(train), V, K, smoothing)
        for text in tests:
            lp = model.log_probs(np.array(text))
            assert lp.shape == (K, len(text))
            want = np.array([[ref.log_prob(list(text), i, n) for i in range(len(text))]
                             for n in range(1, K + 1)])
            np.testing.assert_allclose(np.exp(lp), np.exp(want), rtol=1e-12, atol=0)
            np.testing.assert_allclose(lp, want, rtol=1e-12, atol=1e-15)


ENGLISH = "the quick brown fox jumps over the lazy dog; then the dog sleeps. "
OTHER = "Quick! the lazy fox sleeps over XZ dogs, then jumps."  # Q ! X Z , unseen
ALPHA = sorted(set(ENGLISH + OTHER))


def test_english_sentence_matches_reference_on_train_and_unseen_text():
    """Every order 1..6, both smoothings, on the training text and on a text with unseen
    characters (Q ! X Z ,) and unseen contexts."""
    train = ids_of(ENGLISH, ALPHA)
    other = ids_of(OTHER, ALPHA)
    assert_matches_reference(train, [train, other, train[:3]], len(ALPHA), 6)


def test_repeated_structure_matches_reference():
    """Counts of 3 and more (D3+), continuation counts > 1, contexts with one follower."""
    train = [0, 1, 2] * 8 + [0, 1, 3, 0, 2, 1] * 4 + [2, 2, 2, 2, 0]
    other = [0, 1, 2, 3, 4, 4, 0, 2, 2, 2, 1, 1, 0, 1, 3]
    assert_matches_reference(train, [train, other], 5, 7)


def test_train_text_shorter_than_max_order_matches_reference():
    """Tables above the train length are empty: every context there backs off fully."""
    assert_matches_reference([1, 2], [[1, 2], [1, 2, 1, 2, 0, 3], [3]], 4, 5)
    assert_matches_reference([2], [[2, 2, 2], [0, 1, 2]], 3, 4)
    assert_matches_reference([0, 1, 0], [[0, 1, 0, 1, 0], [2, 1, 0, 0]], 3, 6)


@settings(max_examples=40, deadline=None)
@given(train=st.lists(st.integers(0, 3), min_size=1, max_size=40),
       test=st.lists(st.integers(0, 5), min_size=1, max_size=20),
       K=st.integers(1, 6))
def test_random_small_alphabet_texts_match_reference(train, test, K):
    """Random texts over 4 characters with V = 6 (two never seen), scored on themselves
    and on another random text."""
    assert_matches_reference(train, [train, test], 6, K)


# normalisation -----------------------------------------------------------------------------
@pytest.mark.parametrize("smoothing", ["mkn", "kn"])
def test_every_context_gives_a_distribution_over_all_V_characters(smoothing):
    """distributions(): every row sums to 1 and is > 0, for every context of the training
    text (its last one too: one character appended) and of an unseen text; and,
    independently of distributions(), exp(log_probs) of context + w summed over all w."""
    train = ids_of(ENGLISH, ALPHA)
    other = ids_of(OTHER, ALPHA)
    V, K = len(ALPHA), 7
    model = KneserNey.fit(train, V, K, smoothing)
    for text in (train + [0], other):
        for k in range(1, K + 1):
            dist = model.distributions(text, k)
            assert dist.shape == (len(text), V)
            assert (dist > 0).all()
            np.testing.assert_allclose(dist.sum(axis=1), 1.0, rtol=0, atol=1e-9)
    rng = np.random.default_rng(1)
    for text in (train, other):
        for end in rng.choice(len(text) + 1, size=8, replace=False):
            ctx = text[max(0, end - K + 1):end]
            batch = [model.log_probs(ctx + [w])[:, -1] for w in range(V)]
            np.testing.assert_allclose(np.exp(batch).sum(axis=0), 1.0, rtol=0, atol=1e-9)


def test_distributions_agree_with_log_probs():
    """distributions(ids, k)[i, ids[i]] is exp of log_probs row k - 1 at i."""
    train = ids_of(ENGLISH, ALPHA)
    text = ids_of("the lazy Quick fox. the dog", ALPHA)
    model = KneserNey.fit(train, len(ALPHA), 6)
    lp = model.log_probs(text)
    for k in range(1, 7):
        got = model.distributions(text, k)[np.arange(len(text)), text]
        np.testing.assert_allclose(got, np.exp(lp[k - 1]), rtol=1e-12)


# order 1 and the discounts by hand ------------------------------------------------------
@pytest.mark.parametrize("smoothing", ["mkn", "kn"])
def test_order_one_is_the_smoothed_unigram(smoothing):
    """P(w) = (max(c(w) - D(c(w)), 0) + γ/V) / N, γ = Σ_j D_j N_j, D = discounts(c)."""
    train = ids_of(ENGLISH, ALPHA)
    V, N = len(ALPHA), len(train)
    c = np.bincount(train, minlength=V)
    D = discounts(c, smoothing)
    Dc = np.array([D[min(x, 3) - 1] if x else 0.0 for x in c])
    gamma = sum(D[j - 1] * np.count_nonzero(c == j if j < 3 else c >= 3) for j in (1, 2, 3))
    want = (np.maximum(c - Dc, 0) + gamma / V) / N
    model = KneserNey.fit(train, V, 3, smoothing)
    np.testing.assert_allclose(model.distributions(train, 1)[0], want, rtol=1e-12)
    np.testing.assert_allclose(np.exp(model.log_probs(train)[0]), want[train], rtol=1e-12)


def test_discounts_follow_the_formulas_fallback_and_clipping():
    """mkn: Y = n1/(n1+2n2), Dj = j - (j+1) Y n_{j+1}/n_j; kn: D = Y; undefined -> j/2
    (kn: 1/2); clipped to [0.1, j] (kn: [0.1, 1]). Zeros in the counts are ignored."""
    c = np.array([0, 1, 1, 1, 1, 2, 2, 3, 4, 4, 5, 9])  # n1 = 4, n2 = 2, n3 = 1, n4 = 2
    y = 4 / (4 + 2 * 2)
    d3 = 3 - 4 * y * 2 / 1  # = -1: clipped up to 0.1
    np.testing.assert_allclose(discounts(c, "mkn"), [1 - 2 * y * 2 / 4, 2 - 3 * y / 2, 0.1])
    assert d3 < 0.1
    np.testing.assert_allclose(discounts(c, "kn"), [y] * 3)
    # D3+ = 3 - 4 * 0.5 * 5 = -7 -> 0.1; D2 undefined (n2 = 0) -> 1; D1 = 1
    np.testing.assert_allclose(discounts(np.array([1, 3] + [4] * 5), "mkn"), [1, 1, 0.1])
    # nothing counted: all undefined -> (0.5, 1, 1.5); kn -> 0.5
    np.testing.assert_allclose(discounts(np.zeros(3, int), "mkn"), [0.5, 1, 1.5])
    np.testing.assert_allclose(discounts(np.zeros(3, int), "kn"), [0.5] * 3)
    # only twice-seen: Y = 0 -> D1 undefined (n1 = 0) -> 0.5, D2 = 2, D3+ undefined -> 1.5;
    # kn: D = Y = 0 -> clipped to 0.1
    np.testing.assert_allclose(discounts(np.array([2, 2]), "mkn"), [0.5, 2, 1.5])
    np.testing.assert_allclose(discounts(np.array([2, 2]), "kn"), [0.1] * 3)
    # only seen once: Y = 1, D1 = 1, D2 and D3+ undefined
    np.testing.assert_allclose(discounts(np.array([1, 1, 1]), "mkn"), [1, 1, 1.5])
    np.testing.assert_allclose(discounts(np.array([1, 1, 1]), "kn"), [1] * 3)
    for counts in ([1, 1, 2, 3, 3, 3, 4], [1] * 9 + [2], [5, 6, 7], [1, 4, 4, 4, 4]):
        for smoothing in ("mkn", "kn"):
            np.testing.assert_allclose(discounts(np.array(counts), smoothing),
                                       ref_discounts(counts, smoothing), rtol=1e-15)


# a known source -----------------------------------------------------------------------------
def test_order_three_reaches_the_entropy_of_an_order_two_markov_chain():
    """200k characters of a peaked order-2 chain over 6 symbols; fit on 80 %, score 20 %.
    The target is the mean -ln p_true over the scored text: order 3 (a context of the
    chain's 2 characters) lies within 0.01 nats above it; orders 4..8 do not beat it by
    more than noise; orders 1 and 2 (too little context) are clearly worse."""
    S, n = 6, 200_000
    rng = np.random.default_rng(0)
    T = rng.dirichlet(np.full(S, 0.3), size=(S, S))  # T[a, b] = P(next | a, b)
    cdf, u = np.cumsum(T, axis=-1), rng.random(n)
    x = [0, 1]
    for i in range(2, n):
        row = cdf[x[-2], x[-1]]
        x.append(min(int(np.searchsorted(row, u[i], side="right")), S - 1))
    x = np.array(x)
    cut = int(0.8 * n)
    train, test = x[:cut], x[cut:]
    target = -np.mean(np.log(T[test[:-2], test[1:-1], test[2:]]))
    for smoothing in ("mkn", "kn"):
        lp = KneserNey.fit(train, S, 8, smoothing).log_probs(test)
        loss = np.array([nats(row[2:]) for row in lp])  # positions with 2 chars of context
        assert target - 0.005 <= loss[2] <= target + 0.01, (smoothing, loss, target)
        assert loss[3:].min() >= loss[2] - 0.005, (smoothing, loss)
        assert loss[1] >= loss[2] + 0.1 and loss[0] >= loss[1], (smoothing, loss)


# the start of the text ------------------------------------------------------------------
def test_start_of_text_uses_the_lower_order_model():
    """At i < n - 1 the order-n row holds the order-(i + 1) model's value (row i at i),
    in log_probs and in distributions."""
    train = ids_of(ENGLISH, ALPHA)
    text = ids_of("the dog jumps", ALPHA)
    K = 8
    model = KneserNey.fit(train, len(ALPHA), K)
    lp = model.log_probs(text)
    for n in range(2, K + 1):
        for i in range(n - 1):
            assert lp[n - 1, i] == lp[i, i]
        dist = model.distributions(text, n)
        for i in range(n - 1):
            np.testing.assert_array_equal(dist[i], model.distributions(text, i + 1)[i])
    assert model.log_probs(text[:3]).shape == (K, 3)


# bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("order", [0, 21, 40, 2.0, True, -1, "3", None])
def test_bad_orders_are_refused_naming_the_value_and_range(order):
    with pytest.raises(NGramError, match=re.escape(repr(order)) + ".*1 to 20"):
        check_order(order)
    with pytest.raises(NGramError, match="1 to 20") as err:
        KneserNey.fit([0, 1, 2], 3, order)
    assert repr(order) in str(err.value)


def test_orders_above_the_fitted_maximum_are_refused_when_scoring():
    model = KneserNey.fit([0, 1, 2, 1], 3, 4)
    for order in (5, 21, 1.5, True):
        with pytest.raises(NGramError, match=rf"order = {order!r}.*1 to 4"):
            model.log_probs([0, 1], order)
        with pytest.raises(NGramError, match=rf"order = {order!r}.*1 to 4"):
            model.distributions([0, 1], order)
    assert model.log_probs([0, 1], 2).shape == (2, 2)


def test_unknown_smoothing_is_refused_listing_the_choices():
    with pytest.raises(NGramError, match=r"'mkn2'.*mkn, kn"):
        KneserNey.fit([0, 1], 2, 3, "mkn2")


def test_ids_outside_the_vocabulary_and_empty_texts_are_refused():
    for bad in ([0, 3, 1], [0, -1]):
        with pytest.raises(NGramError, match=r"0\.\.2"):
            KneserNey.fit(bad, 3, 2)
    model = KneserNey.fit([0, 1, 2], 3, 2)
    for bad in ([0, 3], [-1, 0]):
        with pytest.raises(NGramError, match=r"0\.\.2"):
            model.log_probs(bad)
    for empty in ([], np.zeros(0, np.int64)):
        with pytest.raises(NGramError, match="non-empty"):
            KneserNey.fit(empty, 3, 2)
    with pytest.raises(NGramError, match="1-d"):
        KneserNey.fit(np.zeros((2, 2), np.int64), 3, 2)
    with pytest.raises(NGramError, match="1-d"):
        model.log_probs(np.zeros((2, 2), np.int64))


def test_log_probs_refuses_order_zero():
    with pytest.raises(NGramError, match="order = 0.*1 to 4"):
        KneserNey.fit([0, 1, 2, 1], 3, 4).log_probs([0, 1], 0)


def test_distributions_refuses_ids_outside_the_vocabulary():
    """id 7 = 2·V + 1 would alias the bigram key of '21' if it were not refused."""
    with pytest.raises(NGramError, match=r"0\.\.2"):
        KneserNey.fit([0, 1, 2, 1], 3, 4).distributions([0, 7, 0], 3)
