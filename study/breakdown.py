r"""Peeling the onion: which kinds of error a character model still makes, after Karpathy,
Johnson & Fei-Fei (2015), "Visualizing and Understanding Recurrent Networks", §4.4.

Pure functions over (text, probabilities): no model, no tracking. `classify` takes a text
(a split's own text), the model's probability of each of its characters and the
probabilities the n-gram models give them, and puts every error into one category;
`Breakdown.summary()` counts them. Indices are into the text given: position i is text[i],
and every array here has one entry per character of it (Python's str indexing, so one per
Unicode code point; a CRLF is two characters). Nothing before the text's start is seen, so
a repeat of something that lies before a split's start does not count as one.

Errors
------
model_p[i] is the model's probability of text[i] given the text before it. A character is
*scored* when model_p[i] is finite; NaN marks a character the model did not predict (the
first character, a dropped tail), which is neither an error nor counted anywhere (not in
the scored characters, not in any category). Any other value outside [0, 1] (±inf
included) is refused. A scored character is an *error* when model_p[i] < p_error
(default 0.5: the model gave the right character less than even odds).

Categories
----------
Each error goes into the FIRST of these, in this order, that explains it (so the
categories partition the errors: each error is in exactly one, a non-error in none):

1. ``ngram`` — n-gram (order ≤ 9): some n-gram model gives text[i] probability
   ≥ ngram_p (default 0.5). ngram_p is a (K, N) array, row k the probability under the
   k-th model (the caller passes orders 1..9, K = 9); the test is max over the K rows
   ≥ ngram_p, where a NaN entry never reaches the threshold (a row with NaN at i
   simply does not explain i). K = 0 is allowed: nothing is explained this way.
2. ``dynamic_memory`` — dynamic memory: text[i] continues a substring of n = memory_chars
   (default 8) characters seen shortly before. With W = memory_window (default 1000):
   i ≥ n and the (n + 1)-character string text[i−n : i+1] (n characters of context and
   the character itself) also occurs ending at some index j with 0 < i − j ≤ W
   (occurrences may overlap, so in "aaaa…" every i ≥ n + 1 qualifies). A model that
   copies perfectly from an n-character context seen within W characters gets it right.
3. ``rare_word`` — rare word: text[i] lies inside a word that occurs at most rare_count
   (default 5) times in the TRAIN text. A word is a maximal match of the regular
   expression ``\w+`` (Python's re on str: Unicode letters, digits and '_'), compared
   case-sensitively ("The" and "the" are different words). `word_counts(train_text)`
   counts them once; a word absent from the train text has count 0.
4. ``word_start`` — word start: text[i] is the first character of a ``\w+`` word and
   i = 0, or text[i−1] is whitespace (str.isspace: ' ', '\t', '\n', '\r', ...), or
   text[i−1] is one of the opening quotes and brackets ``"'([{<“‘«`` (OPENING), except
   an apostrophe: a "'" that itself follows a word character (the "'" of "don't") opens
   nothing, so the "t" of "don't" is not a word start, while "'Yes'" starts one.
5. ``punctuation`` — punctuation: text[i]'s Unicode general category starts with 'P'
   (punctuation: ,.;:!?'"()[]{}-…) or 'S' (symbols: =+<>|~^$`, currency, math). Symbols
   are included on purpose, so that code's operators count as punctuation; note that
   '*', '&', '%', '#', '@', '/' and '\\' are category P already. Whitespace is not.
6. ``boost`` — everything else (whitespace, letters in the middle of common words,
   digits, …): errors a bigger or better model would have to reduce.

Outputs
-------
`classify` returns a Breakdown: `scored` (bool, N), `error` (bool, N) and `category` (int8,
N: the index into CATEGORIES of each error's category, -1 at every non-error).
`Breakdown.summary()` is one row per category, in CATEGORIES' order: category, label,
errors (count), frac_of_errors (errors / all errors; NaN when there are none) and
frac_of_scored_chars (errors / scored characters; NaN when none is scored), so the last
column sums to the error rate. `Breakdown.totals()`: scored_chars, errors, error_rate,
p_error.

Each mask is also a function of its own (`dynamic_memory_mask`, `rare_word_mask`,
`word_start_mask`, `punctuation_mask`: bool (N,), true where the rule holds whether or not
the character is an error). All are numpy-vectorised: the ~330k characters of a test split
take well under a second.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

CATEGORIES = ("ngram", "dynamic_memory", "rare_word", "word_start", "punctuation", "boost")
LABELS = {
    "ngram": "n-gram (order ≤ 9)",
    "dynamic_memory": "dynamic memory",
    "rare_word": "rare word",
    "word_start": "word start",
    "punctuation": "punctuation",
    "boost": "boost",
}
# One colour per category, for every figure and page (the HTML draws black text on them).
# Each has a relative luminance between 0.21 and 0.30: black text on it keeps a contrast
# of at least 5.2:1 (WCAG AA's 4.5:1) and it keeps at least 3:1 against white (WCAG's
# minimum for graphics), so one colour serves as a highlight and as a bar. Hues after
# Okabe & Ito's colour-blind-safe palette; grey for the residual category.
CATEGORY_COLOURS = {
    "ngram": "#3A8FD0",  # blue
    "dynamic_memory": "#009E73",  # bluish green
    "rare_word": "#D55E00",  # vermillion
    "word_start": "#CC79A7",  # reddish purple
    "punctuation": "#B8860B",  # dark goldenrod
    "boost": "#7F7F7F",  # grey
}

WORD = re.compile(r"\w+")  # a word: a maximal run of Unicode word characters
OPENING = "\"'([{<“‘«"  # a word after one of these starts a word, as after whitespace


@dataclass(frozen=True)
class Thresholds:
    """The breakdown's parameters (module docstring): an error is model p < p_error; an
    n-gram model explains it at p ≥ ngram_p; dynamic memory copies memory_chars characters
    from within memory_window; a rare word occurs at most rare_count times in train."""

    p_error: float = 0.5
    ngram_p: float = 0.5
    memory_chars: int = 8
    memory_window: int = 1000
    rare_count: int = 5

    def check(self) -> Thresholds:
        """Raise ValueError naming a bad value and its valid range; return self."""
        for name in ("p_error", "ngram_p"):
            v = getattr(self, name)
            if not isinstance(v, int | float | np.floating) or isinstance(v, bool) or not 0 < v < 1:
                raise ValueError(f"{name} must be a probability in (0, 1), got {v!r}")
        for name, low in (("memory_chars", 1), ("memory_window", 1), ("rare_count", 0)):
            v = getattr(self, name)
            if not isinstance(v, int | np.integer) or isinstance(v, bool) or v < low:
                raise ValueError(f"{name} must be an integer ≥ {low}, got {v!r}")
        return self


# ---------------------------------------------------------------------------------------
# the masks


def _codes(text: str) -> np.ndarray:
    """The text's code points, uint32 (N,) (lone surrogates passed through)."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32)


def _per_char(text: str, rule: Callable[[str], bool]) -> np.ndarray:
    """rule(ch) for each character, bool (N,), evaluated once per distinct character."""
    codes = _codes(text)
    if not len(codes):
        return np.zeros(0, bool)
    distinct, inverse = np.unique(codes, return_inverse=True)
    table = np.fromiter((rule(chr(u)) for u in distinct.tolist()), bool, len(distinct))
    return table[inverse]


def _words(text: str) -> tuple[np.ndarray, np.ndarray]:
    r"""(starts, ends) of the text's \w+ words, ends exclusive: runs of \w characters."""
    is_word = _per_char(text, lambda ch: WORD.match(ch) is not None)
    step = np.diff(np.concatenate([[0], is_word.astype(np.int8), [0]]))
    return np.flatnonzero(step == 1), np.flatnonzero(step == -1)


def word_counts(text: str) -> Counter:
    r"""How often each \w+ word occurs in `text` (case-sensitive)."""
    return Counter(WORD.findall(text))


def dynamic_memory_mask(text: str, n: int = 8, window: int = 1000) -> np.ndarray:
    """bool (N,): i ≥ n and text[i−n : i+1] also ends at some j with 0 < i − j ≤ window."""
    Thresholds(memory_chars=n, memory_window=window).check()
    c = _codes(text)
    N = len(c)
    out = np.zeros(N, bool)
    if len(out) <= n + 1:  # no room for two (n+1)-grams
        return out
    # dense ranks of the m-grams, m = 1 .. n+1: rank[t] is the m-gram ending at t + m − 1
    _, char = np.unique(c, return_inverse=True)
    char = char.astype(np.int64)
    V = int(char.max()) + 1
    rank = char
    for m in range(1, n + 1):  # (m-gram ending at p − 1, char at p) → (m+1)-gram ending at p
        _, rank = np.unique(rank[:-1] * V + char[m:], return_inverse=True)
        rank = rank.astype(np.int64)
    # each (n+1)-gram's previous occurrence: neighbours in a stable sort by rank
    order = np.argsort(rank, kind="stable")
    same = rank[order[1:]] == rank[order[:-1]]
    near = order[1:] - order[:-1] <= window  # > 0: stable, so positions ascend in a rank
    out[order[1:][same & near] + n] = True
    return out


def rare_word_mask(text: str, counts: Mapping[str, int], rare_count: int = 5) -> np.ndarray:
    r"""bool (N,): inside a \w+ word that `counts` (word_counts of the train text) has at
    most rare_count times (absent: 0 times)."""
    Thresholds(rare_count=rare_count).check()
    starts, ends = _words(text)
    words = (text[s:e] for s, e in zip(starts.tolist(), ends.tolist(), strict=True))
    rare = np.fromiter((counts.get(w, 0) <= rare_count for w in words), bool, len(starts))
    edge = np.zeros(len(text) + 1, np.int32)  # +1 at a rare word's start, −1 after its end
    edge[starts[rare]] += 1
    edge[ends[rare]] -= 1  # words are maximal runs: an end is never a start
    return np.cumsum(edge[:-1]) > 0


def word_start_mask(text: str) -> np.ndarray:
    r"""bool (N,): the first character of a \w+ word at index 0 or after whitespace or
    one of OPENING."""
    starts, _ = _words(text)
    after = _per_char(text, lambda ch: ch.isspace() or ch in OPENING)
    prev = np.maximum(starts - 1, 0)
    # a "'" right after a word character is an apostrophe (don't): it opens nothing
    apostrophe = np.array([text[p] == "'" and p > 0 and (text[p - 1].isalnum()
                                                           or text[p - 1] == "_")
                           for p in prev.tolist()], bool)
    out = np.zeros(len(text), bool)
    out[starts] = (starts == 0) | (after[prev] & ~apostrophe)
    return out


def punctuation_mask(text: str) -> np.ndarray:
    """bool (N,): Unicode general category P* (punctuation) or S* (symbols)."""
    return _per_char(text, lambda ch: unicodedata.category(ch)[0] in "PS")


# ---------------------------------------------------------------------------------------
# the breakdown


@dataclass(frozen=True, eq=False)
class Breakdown:
    scored: np.ndarray  # bool (N,): model_p finite
    error: np.ndarray  # bool (N,): scored and model_p < p_error
    category: np.ndarray  # int8 (N,): index into CATEGORIES for an error, −1 elsewhere
    thresholds: Thresholds

    def counts(self) -> np.ndarray:
        """Errors per category, int64 (len(CATEGORIES),)."""
        return np.bincount(self.category[self.error], minlength=len(CATEGORIES))

    def totals(self) -> dict:
        """scored_chars, errors, error_rate (errors / scored_chars; NaN if none), p_error."""
        scored, errors = int(self.scored.sum()), int(self.error.sum())
        return {"scored_chars": scored, "errors": errors,
                "error_rate": errors / scored if scored else math.nan,
                "p_error": self.thresholds.p_error}

    def summary(self) -> pd.DataFrame:
        """One row per category, in CATEGORIES' order: category, label, errors,
        frac_of_errors, frac_of_scored_chars."""
        t, counts = self.totals(), self.counts()
        return pd.DataFrame({
            "category": list(CATEGORIES),
            "label": [LABELS[c] for c in CATEGORIES],
            "errors": counts.astype(np.int64),
            "frac_of_errors": counts / t["errors"] if t["errors"] else math.nan,
            "frac_of_scored_chars": counts / t["scored_chars"] if t["scored_chars"]
            else math.nan,
        })


def _probabilities(name: str, a, shape: tuple[int, ...], what: str) -> np.ndarray:
    a = np.asarray(a, np.float64)
    if a.shape != shape:
        raise ValueError(f"{name} must have shape {what}, got {a.shape}")
    bad = ~np.isnan(a) & ~((a >= 0) & (a <= 1))
    if bad.any():
        raise ValueError(f"{name} must hold probabilities in [0, 1] or NaN, got "
                         f"{float(a[bad].flat[0])} at index {np.argwhere(bad)[0].tolist()}")
    return a


def classify(text: str, model_p, ngram_p, counts: Mapping[str, int],
             th: Thresholds = Thresholds()) -> Breakdown:
    """Each error of the model on `text` in the first category that explains it (module
    docstring). model_p: float (N,), the model's probability of each character (NaN: not
    scored); ngram_p: float (K, N), each n-gram model's; counts: word_counts(train text)."""
    th.check()
    N = len(text)
    model_p = _probabilities("model_p", model_p, (N,), f"(N,) = ({N},), one per character")
    ngram_p = np.asarray(ngram_p, np.float64)
    if ngram_p.ndim != 2:
        raise ValueError(f"ngram_p must have shape (K, N) = (K, {N}), one row per n-gram "
                         f"model, got {ngram_p.shape}")
    ngram_p = _probabilities("ngram_p", ngram_p, (len(ngram_p), N),
                             f"(K, N) = (K, {N}), one row per n-gram model")
    scored = np.isfinite(model_p)
    error = scored & (model_p < th.p_error)
    explained = {
        "ngram": (ngram_p >= th.ngram_p).any(axis=0),  # NaN ≥ x is False
        "dynamic_memory": dynamic_memory_mask(text, th.memory_chars, th.memory_window),
        "rare_word": rare_word_mask(text, counts, th.rare_count),
        "word_start": word_start_mask(text),
        "punctuation": punctuation_mask(text),
        "boost": np.ones(N, bool),
    }
    category = np.full(N, -1, np.int8)
    left = error.copy()  # errors not yet peeled
    for k, name in enumerate(CATEGORIES):
        hit = left & explained[name]
        category[hit] = k
        left &= ~hit
    return Breakdown(scored=scored, error=error, category=category, thresholds=th)
