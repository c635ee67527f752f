"""study.breakdown and study.breakdown_figures: the error categories on hand-built cases
(one per category, and the order of peeling), the masks against slow references on any
text, the partition of the errors, the page and the PNG."""

import html
import re
import string
import time
import unicodedata

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from study.breakdown import (
    CATEGORIES,
    CATEGORY_COLOURS,
    LABELS,
    OPENING,
    Thresholds,
    classify,
    dynamic_memory_mask,
    punctuation_mask,
    rare_word_mask,
    word_counts,
    word_start_mask,
)
from study.breakdown_figures import NEWLINE, breakdown_html, breakdown_png

K = 9  # n-gram orders
COMMON = word_counts("the cat sat on the mat and said hello well yes he met him today " * 10)


def errors_at(text, *where, low=0.1, ngram=0.1):
    """model_p 0.9 everywhere but `low` at the given indices; every n-gram model at `ngram`."""
    p = np.full(len(text), 0.9)
    p[list(where)] = low
    return p, np.full((K, len(text)), ngram)


def category_of(b, i):
    return CATEGORIES[b.category[i]] if b.category[i] >= 0 else None


# ---------------------------------------------------------------------------------------
# one category each, by hand


def test_a_repeated_name_is_dynamic_memory():
    text = "Pierre Bezukhov came in. Then Pierre Bezukhov left."
    second = text.index("Bezukhov", text.index("Then"))
    late = [second + k for k in range(3, 8)]  # "ukhov": 8 characters of context repeat
    p, ng = errors_at(text, text.index("Bezukhov") + 4, *late)
    b = classify(text, p, ng, word_counts("Pierre Bezukhov " * 10))
    assert [category_of(b, i) for i in late] == ["dynamic_memory"] * 5
    assert category_of(b, text.index("Bezukhov") + 4) == "boost"  # the first time: new


def test_a_hapax_is_a_rare_word():
    text = "He met Zhirkov today."
    i = text.index("hirkov")
    p, ng = errors_at(text, i, i - 1)
    b = classify(text, p, ng, COMMON)
    assert category_of(b, i) == category_of(b, i - 1) == "rare_word"  # "Z" too: rare first
    assert (b.category[np.arange(len(text)) != i] != 0).all()


def test_the_first_letter_of_a_common_word_is_a_word_start():
    text = "the cat sat on (the) mat"
    starts = [text.index("cat"), text.index("the)")]  # after a space, after "("
    p, ng = errors_at(text, *starts, text.index("at"))
    b = classify(text, p, ng, COMMON)
    assert [category_of(b, i) for i in starts] == ["word_start"] * 2
    assert category_of(b, text.index("at")) == "boost"  # the middle of a common word


def test_a_comma_is_punctuation_and_a_space_is_boost():
    text = "Well, yes he said"
    p, ng = errors_at(text, 4, 5)
    b = classify(text, p, ng, COMMON)
    assert category_of(b, 4) == "punctuation" and category_of(b, 5) == "boost"
    assert b.error.sum() == 2 and (b.category >= 0).sum() == 2


def test_an_ngram_explains_first():
    text = "Pierre Bezukhov came in. Then Pierre Bezukhov left, Zhirkov."
    second = text.index("Bezukhov", text.index("Then")) + 6
    hapax, comma = text.index("Zhirkov"), text.index(",")
    p, ng = errors_at(text, second, hapax, comma)
    ng[:, [second, hapax, comma]] = np.nan  # NaN never reaches the threshold ...
    ng[K - 1, [second, hapax, comma]] = 0.5  # ... but one order at exactly ngram_p does
    b = classify(text, p, ng, COMMON)
    assert [category_of(b, i) for i in (second, hapax, comma)] == ["ngram"] * 3
    ng[K - 1, [second, hapax, comma]] = 0.49
    b = classify(text, p, ng, COMMON)
    got = [category_of(b, i) for i in (second, hapax, comma)]
    assert got == ["dynamic_memory", "rare_word", "punctuation"]


def test_the_threshold_is_strict_and_nan_is_not_scored():
    text = "abcdef"
    p = np.array([np.nan, 0.5, 0.4999, 0.0, 1.0, np.nan])
    b = classify(text, p, np.zeros((K, 6)), COMMON)
    assert b.scored.tolist() == [False, True, True, True, True, False]
    assert b.error.tolist() == [False, False, True, True, False, False]
    t = b.totals()
    assert (t["scored_chars"], t["errors"], t["error_rate"], t["p_error"]) == (4, 2, 0.5, 0.5)
    s = b.summary()
    assert s["category"].tolist() == list(CATEGORIES)
    assert s["label"].tolist() == [LABELS[c] for c in CATEGORIES]
    assert s["errors"].sum() == 2 and s["frac_of_errors"].sum() == pytest.approx(1)
    assert s["frac_of_scored_chars"].sum() == pytest.approx(0.5)


@pytest.mark.parametrize("n", [1, 3, 8])
def test_a_repeat_counts_within_the_window_exactly(n):
    x = "abcdefghij"
    filler = "".join(chr(0x4E00 + k) for k in range(37))  # no repeats of its own
    text = x + filler + x
    i = len(x) + len(filler) + n  # x[n] in the second copy, with n characters before it
    d = len(x) + len(filler)  # back to x[n] in the first
    assert dynamic_memory_mask(text, n, d)[i]
    assert not dynamic_memory_mask(text, n, d - 1)[i]
    assert not dynamic_memory_mask(text, n, d)[: len(x) + len(filler) + n].any()
    assert dynamic_memory_mask(text, n, d)[i:].all()  # the rest of the copy follows


def test_overlapping_repeats_count():
    assert dynamic_memory_mask("aaaaaa", 2, 1).tolist() == [False] * 3 + [True] * 3
    assert dynamic_memory_mask("abababa", 2, 2).tolist() == [False] * 4 + [True] * 3


def test_apostrophes_and_quotes_open_words():
    text = "don't \"Yes\" «Oui» x_1 2nd"
    got = [text[i] for i in np.flatnonzero(word_start_mask(text))]
    assert got == ["d", "Y", "O", "x", "2"]  # the "t" of don't follows an apostrophe
    text = "'Yes,' he said. 'tis x'y"
    got = [text[i] for i in np.flatnonzero(word_start_mask(text))]
    assert got == ["Y", "h", "s", "t", "x"]


# ---------------------------------------------------------------------------------------
# any text: references and the partition

NON_ASCII = "éßжЯ中文😀\u2028\x85\x0b\x0c«»“‘"
pieces = st.one_of(
    st.sampled_from(string.ascii_letters[:6] + string.digits[:3] + string.punctuation),
    st.sampled_from([" ", "\t", "\n", "\r\n", "\n\n", "ab", "abc", "the ", "cat"]),
    st.sampled_from(NON_ASCII),
)
long_lines = st.builds(lambda n, ch, end: ch * n + end, st.sampled_from([80, 161]),
                       st.sampled_from(["a", " ", "\t", "中", "ab"]),
                       st.sampled_from(["", "\n", "\r\n"]))
texts = st.one_of(
    st.lists(st.one_of(pieces, long_lines), max_size=40).map("".join),
    st.text(max_size=60),  # any unicode
    st.sampled_from(["", "\n", "\r", "\r\n", "\t", "a", "😀", " a", "'a"]),
)


def memory_reference(text, n, window):
    return [i >= n and text[i - n:i + 1] in text[max(0, i - n - window):i]
            for i in range(len(text))]


def words_reference(text, counts, rare_count):
    rare, start = [False] * len(text), [False] * len(text)
    for m in re.finditer(r"\w+", text):
        if counts.get(m.group(), 0) <= rare_count:
            rare[m.start():m.end()] = [True] * (m.end() - m.start())
        s = m.start()
        apostrophe = s >= 2 and text[s - 1] == "'" and re.match(r"\w", text[s - 2]) is not None
        start[s] = s == 0 or (text[s - 1].isspace() or text[s - 1] in "\"'([{<“‘«") \
            and not apostrophe
    return rare, start


@settings(max_examples=300, deadline=None)
@given(texts, st.integers(1, 4), st.integers(1, 12))
@example("aaaa", 1, 1)
@example("ab\r\nab\r\nab", 2, 4)
def test_dynamic_memory_is_the_slow_reference(text, n, window):
    got = dynamic_memory_mask(text, n, window)
    assert got.dtype == bool and got.shape == (len(text),)
    assert got.tolist() == memory_reference(text, n, window)


@settings(max_examples=300, deadline=None)
@given(texts, texts, st.integers(0, 3))
@example("the cat the_1 «x» 'y", "the the", 1)
def test_word_masks_are_the_regex_reference(text, train, rare_count):
    counts = word_counts(train)
    assert counts == {w: len(re.findall(rf"(?<!\w){re.escape(w)}(?!\w)", train))
                      for w in set(re.findall(r"\w+", train))}
    rare, start = words_reference(text, counts, rare_count)
    assert rare_word_mask(text, counts, rare_count).tolist() == rare
    assert word_start_mask(text).tolist() == start
    assert punctuation_mask(text).tolist() == [unicodedata.category(c)[0] in "PS"
                                               for c in text]
    assert set("\"'([{<“‘«") == set(OPENING)


@settings(max_examples=200, deadline=None)
@given(texts, texts, st.integers(0, 2**32 - 1), st.integers(0, 3))
def test_categories_partition_the_errors(text, train, seed, k):
    rng = np.random.default_rng(seed)
    N = len(text)
    p = np.where(rng.random(N) < 0.2, np.nan, rng.random(N))
    ng = np.where(rng.random((k, N)) < 0.2, np.nan, rng.random((k, N)))
    th = Thresholds(memory_chars=2, memory_window=10, rare_count=1)
    counts = word_counts(train)
    b = classify(text, p, ng, counts, th)
    for a in (b.scored, b.error, b.category):
        assert a.shape == (N,)
    assert b.category.dtype == np.int8 and b.error.dtype == bool
    assert ((b.category >= 0) == b.error).all() and (b.category < len(CATEGORIES)).all()
    assert (b.error <= b.scored).all() and (b.scored == ~np.isnan(p)).all()
    explained = [(ng >= 0.5).any(axis=0) if k else np.zeros(N, bool),
                 memory_reference(text, 2, 10), words_reference(text, counts, 1)[0],
                 words_reference(text, counts, 1)[1], punctuation_mask(text), [True] * N]
    for i in np.flatnonzero(b.error):  # the first category that explains it
        assert b.category[i] == next(c for c, e in enumerate(explained) if e[i])
    s = b.summary()
    assert s["errors"].tolist() == [int((b.category == c).sum()) for c in range(6)]
    assert s["errors"].sum() == b.totals()["errors"] == b.error.sum()


@settings(max_examples=50, deadline=None)
@given(texts)
def test_nothing_scored_marks_nothing(text):
    b = classify(text, np.full(len(text), np.nan), np.zeros((K, len(text))), COMMON)
    assert not b.scored.any() and not b.error.any() and (b.category == -1).all()
    t = b.totals()
    assert t["scored_chars"] == t["errors"] == 0 and np.isnan(t["error_rate"])
    assert b.summary()["errors"].tolist() == [0] * 6


# ---------------------------------------------------------------------------------------
# bad arguments


@pytest.mark.parametrize("field,value", [
    ("p_error", 0.0), ("p_error", 1.0), ("p_error", float("nan")), ("ngram_p", -0.1),
    ("ngram_p", 1.5), ("memory_chars", 0), ("memory_chars", 2.5), ("memory_window", 0),
    ("rare_count", -1),
])
def test_bad_thresholds_are_named(field, value):
    th = Thresholds(**{field: value})
    with pytest.raises(ValueError, match=field):
        th.check()
    with pytest.raises(ValueError, match=field):
        classify("abc", np.full(3, 0.1), np.zeros((K, 3)), COMMON, th)


def test_mis_shaped_or_impossible_probabilities_are_named():
    text = "abcd"
    cases = [(np.zeros(3), np.zeros((K, 4)), r"model_p must have shape \(N,\) = \(4,\)"),
             (np.zeros((1, 4)), np.zeros((K, 4)), "model_p"),
             (np.zeros(4), np.zeros(4), r"ngram_p must have shape \(K, N\)"),
             (np.zeros(4), np.zeros((K, 5)), r"ngram_p must have shape \(K, N\)"),
             (np.array([0, 1.5, 0, 0]), np.zeros((K, 4)), "model_p .* 1.5"),
             (np.array([0, np.inf, 0, 0]), np.zeros((K, 4)), "model_p .* inf"),
             (np.zeros(4), np.full((K, 4), -0.5), "ngram_p .* -0.5")]
    for p, ng, msg in cases:
        with pytest.raises(ValueError, match=msg):
            classify(text, p, ng, COMMON)
    b = classify(text, np.zeros(4), np.zeros((0, 4)), COMMON)  # no n-gram model at all
    assert b.error.all() and 0 not in b.category


# ---------------------------------------------------------------------------------------
# colours, page and figure


def luminance(hex_colour):
    def lin(c):
        c /= 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4
    r, g, b = (int(hex_colour[k:k + 2], 16) for k in (1, 3, 5))
    return 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b)


def test_colours_read_under_black_text_and_show_on_white():
    assert list(CATEGORY_COLOURS) == list(CATEGORIES)
    assert len(set(CATEGORY_COLOURS.values())) == len(CATEGORIES)
    for c in CATEGORY_COLOURS.values():
        assert (luminance(c) + 0.05) / 0.05 >= 4.5, c  # black text: WCAG AA
        assert 1.05 / (luminance(c) + 0.05) >= 3.0, c  # a bar on white: WCAG graphics


def drawn(page):
    """The excerpt's characters as drawn, tags dropped and entities read back."""
    div = re.search(r"<div class='t'>(.*)</div>", page, re.DOTALL).group(1)
    return html.unescape(re.sub(r"<[^>]*>", "", div)).replace(NEWLINE + "\n", "\n")


@settings(max_examples=150, deadline=None)
@given(texts, st.integers(0, 2**32 - 1), st.integers(0, 70))
@example('<script>alert("x")</script> <a href="y"> & &amp;\r\n\t↵\n', 0, 70)
def test_the_page_draws_every_character_once_in_order(text, seed, chars):
    rng = np.random.default_rng(seed)
    p = np.where(rng.random(len(text)) < 0.2, np.nan, rng.random(len(text)))
    b = classify(text, p, np.zeros((K, len(text))), COMMON)
    page = breakdown_html(text, b, p, "A <b>title</b> & more", chars=chars)
    scored = np.flatnonzero(b.scored)
    start = int(scored[0]) if len(scored) else 0
    assert drawn(page) == text[start:start + chars].replace("\r", "")
    assert "\r" not in page
    assert set(re.findall(r"<(\w+)", page)) <= {"html", "head", "meta", "title", "style",
                                                 "body", "h2", "p", "table", "tr", "th", "td",
                                                 "span", "div"}
    assert "<script" not in page.lower() and "<b>" not in page


def test_the_page_marks_errors_and_fetches_nothing():
    text = "He met Zhirkov today,\r\nwell."
    i = text.index("hirkov")
    p, ng = errors_at(text, i, text.index(","), low=0.231)
    p[0] = np.nan
    b = classify(text, p, ng, COMMON)
    page = breakdown_html(text, b, p, "WP test")
    for bad in ("<script", "href", "src=", "url(", "@import", "<link", "<img"):
        assert bad not in page.lower()
    colour = CATEGORY_COLOURS["rare_word"]
    assert f'style="background:{colour};color:#000000" title="p = 0.231 · rare word">h<' in page
    assert 'title="p = 0.231 · punctuation">,<' in page
    assert 'title="p = 0.900">e<' in page and "\r" not in page
    assert drawn(page) == text[1:].replace("\r", "")  # from the first scored character
    for label in LABELS.values():
        assert html.escape(label) in page
    assert "% of errors" in page and "% of scored characters" in page


def test_the_png_is_written(tmp_path):
    text = "He met Zhirkov today, well. " * 20
    p = np.random.default_rng(0).random(len(text))
    b = classify(text, p, np.random.default_rng(1).random((K, len(text))), COMMON)
    path = breakdown_png(b.summary(), "WP test, model X", tmp_path / "sub" / "bd.png")
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000
    none = classify("abc", np.full(3, 0.9), np.zeros((K, 3)), COMMON)  # no errors at all
    assert breakdown_png(none.summary(), "none", tmp_path / "none.png").stat().st_size > 0


def test_a_test_split_is_quick():
    rng = np.random.default_rng(0)
    vocab = np.array(["the", "Pierre", "said", "and", "Natásha", ",", ".", "\n", "of", "war"]
                     + [f"w{k}" for k in range(3000)])
    text = " ".join(rng.choice(vocab, 70_000, p=None))[:330_000]
    p, ng = rng.random(len(text)), rng.random((K, len(text)))
    counts = word_counts(text)
    t0 = time.perf_counter()
    b = classify(text, p, ng, counts)
    assert time.perf_counter() - t0 < 10  # ~1 s
    assert b.summary()["errors"].sum() == b.error.sum() > 0
