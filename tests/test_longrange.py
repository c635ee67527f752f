"""study.longrange: per-character losses laid out as train.evaluate reads a split, the
quote and brace matchers (hand-built cases, any-text properties, independent references)
and the loss-by-distance tables."""

import math
import string
import time

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from study import train
from study.config import ModelConfig
from study.longrange import (
    by_distance,
    closing_braces,
    closing_quotes,
    compare,
    context_chars,
    per_char_nats,
)
from study.model import CharLM
from study.probes.concepts import in_quotes, lex_c


def pairs(m):
    """(opener, closer) index pairs of a Matches."""
    return [(int(p - d), int(p)) for p, d in zip(m.pos, m.dist, strict=True)]


def at(text, *subs):
    """Index of each substring's first character, searched left to right."""
    out, start = [], 0
    for s in subs:
        start = text.index(s, start)
        out.append(start)
        start += 1
    return out


# ---------------------------------------------------------------------------------------
# braces, by hand


def test_nested_braces_match_innermost_first():
    text = "f() {\n\tif (x) {\n\t\ty();\n\t} else { z(); }\n}\n"
    o1, o2, c2, o3, c3, c1 = at(text, "{", "{", "}", "{", "}", "}")
    m = closing_braces(text)
    assert pairs(m) == [(o2, c2), (o3, c3), (o1, c1)]
    assert m.pos.dtype == m.dist.dtype == np.int64
    assert m.frame()["dist_chars"].tolist() == m.dist.tolist()


def test_braces_in_strings_chars_and_comments_do_not_count():
    text = ('s = "{ not } this"; c = \'{\'; d = \'}\';\n'
            "/* { a block\n comment } */ x; // a { line comment\n"
            "{ real }")
    m = closing_braces(text)
    assert pairs(m) == [(text.index("{ real"), text.index("}", text.index("{ real")))]


def test_escaped_quotes_do_not_end_literals():
    text = 's = "\\"{"; c = \'\\\'\'; t = "\\\\"; {x}'
    # "\"{" is one string (its { hidden); '\'' one char; "\\" ends at its second quote
    assert pairs(closing_braces(text)) == [(text.index("{x"), text.index("x}") + 1)]


def test_unterminated_literals_end_at_the_line_and_comments_at_the_text_end():
    text = "#error don't {\n{ a }\n\"open { string\n{ b } /* { never closed }"
    a, b = text.index("{ a"), text.index("{ b")
    assert pairs(closing_braces(text)) == [(a, a + 4), (b, b + 4)]


def test_unmatched_closers_are_skipped_and_unclosed_openers_left_out():
    text = "} x } { a } } { { b }"
    m = closing_braces(text)
    a, b = text.index("{ a"), text.index("{ b")
    assert pairs(m) == [(a, a + 4), (b, b + 4)]


def test_lone_slash_and_stray_comment_end_are_code():
    text = "a / b */ {c} '/' \"*/\" {d}"
    m = closing_braces(text)
    assert len(m.pos) == 2 and "".join(text[p] for p in m.pos) == "}}"


# ---------------------------------------------------------------------------------------
# quotes, by hand


def test_straight_quotes_alternate_within_a_paragraph():
    text = 'He said "hi,\r\nthere" and "bye."'
    a, b, c, d = at(text, '"', '"', '"', '"')
    assert pairs(closing_quotes(text)) == [(a, b), (c, d)]


@pytest.mark.parametrize("brk", ["\n\n", "\r\n\r\n", "\n \t\n", "\r\n \r\n", "\n\n\n\n"])
def test_a_paragraph_break_drops_the_open_quotation(brk):
    # Gutenberg: a quotation over two paragraphs is reopened, closed once
    text = f'"First paragraph,{brk}"second one," he said. "Third'
    _, a, b, _ = at(text, '"', '"', '"', '"')
    assert pairs(closing_quotes(text)) == [(a, b)]


def test_a_line_break_is_not_a_paragraph_break():
    for brk in ["\n", "\r\n", "\r\r\n", "\n\x0c"]:  # the last line holds a non-newline
        text = f'"one{brk}two"'
        assert pairs(closing_quotes(text)) == [(0, len(text) - 1)], repr(brk)


def test_curly_quotes_say_which_they_are():
    text = "\u201dx \u201ca\u201d \u201cdropped \u201cb\u201d \u201cc\" \"d\u201d"
    m = closing_quotes(text)
    ends = [text[o] + text[c] for o, c in pairs(m)]
    assert ends == ["\u201c\u201d", "\u201c\u201d", "\u201c\"", "\"\u201d"]
    assert text[m.pos[1] - m.dist[1] + 1] == "b"  # the second “ replaced the dropped one


def test_single_quotes_are_apostrophes():
    assert pairs(closing_quotes("'tis the 'season' 'of' it")) == []


@pytest.mark.parametrize("text", ["", "\n", '"', "}", "{", "\u201d", "/*", "'{'"])
def test_tiny_texts(text):
    for fn in (closing_quotes, closing_braces):
        m = fn(text)
        assert m.pos.shape == m.dist.shape == (0,) and m.pos.dtype == np.int64


# ---------------------------------------------------------------------------------------
# any text: properties and references

NON_ASCII = "éßжЯ中文😀\u2028\x85\x0b\x0c"
pieces = st.one_of(
    st.sampled_from(string.ascii_letters + string.digits + string.punctuation),
    st.sampled_from([" ", "\t", "\n", "\r\n", "\n\n", "\r\n\r\n", "\r\n \r\n", "    "]),
    st.sampled_from(NON_ASCII),
    st.sampled_from(['"', "'", "{", "}", "{", "}", "/", "*", "/*", "*/", "//", "\\", '\\"',
                     "\\'", "\u201c", "\u201d"]),
)
long_lines = st.builds(lambda n, ch, end: ch * n + end, st.sampled_from([80, 161, 250]),
                       st.sampled_from(["a", " ", "\t", "中", '"', "{"]),
                       st.sampled_from(["", "\n", "\r\n"]))
texts = st.one_of(
    st.lists(st.one_of(pieces, long_lines), max_size=40).map("".join),
    st.text(max_size=60),  # any unicode
    st.sampled_from(["", "\n", "\r", "\r\n", "\t", '"', "{", "}", "a", "😀"]),
)


def check_matches(m, text, openers, closers):
    assert m.pos.dtype == m.dist.dtype == np.int64 and m.pos.shape == m.dist.shape
    assert (np.diff(m.pos) > 0).all()
    assert ((m.dist > 0) & (m.dist <= m.pos)).all()
    for p, d in zip(m.pos, m.dist, strict=True):
        assert text[p] in closers and text[p - d] in openers
    assert len(set((m.pos - m.dist).tolist())) == len(m.pos)  # one closer per opener


def quotes_reference(text):
    """The quote rules, a character at a time (blank-line tracking as in_quotes does)."""
    out, opener, blank = [], None, False
    for i, ch in enumerate(text):
        if ch == "\n":
            if blank:
                opener = None
            blank = True
        elif not ch.isspace():
            blank = False
        if ch == "\u201c":
            opener = i
        elif ch in '"\u201d' and opener is not None:
            out.append((opener, i))
            opener = None
        elif ch == '"':
            opener = i
    return out


def braces_from_lex_c(text):
    """Pairs read off the brace_depth concept's lexer: a brace counts where the depth
    after it moved by one, and a closer pairs with the last counted opener that left the
    depth it returns to."""
    depth = lex_c(text).brace.astype(int) if text else np.zeros(0, int)
    out, open_at, prev = [], {}, 0
    for i, ch in enumerate(text):
        if ch == "{" and depth[i] == prev + 1:
            open_at[depth[i]] = i
        elif ch == "}" and depth[i] == prev - 1:
            out.append((open_at[prev], i))
        prev = depth[i]
    return out


def braces_recursive(text):
    """Plain nesting, every brace counted: match(i) reads a group opened at i."""
    out = []

    def group(i):  # text[i] == "{"; returns the index after its closer, or None
        j = i + 1
        while j < len(text):
            if text[j] == "{":
                j = group(j)
                if j is None:
                    return None
            elif text[j] == "}":
                out.append((i, j))
                return j + 1
            else:
                j += 1
        return None

    i = 0
    while i < len(text):
        nxt = group(i) if text[i] == "{" else i + 1
        # an unclosed group: its openers stay open; the closers after them match inner ones
        i = nxt if nxt is not None else i + 1
    return sorted(set(out), key=lambda p: p[1])


@settings(max_examples=400, deadline=None)
@given(texts)
@example('"a\r\n\r\n"b" \u201cc\u201d')
@example("{'}'} /* } */ \"\\\"}\" {}")
def test_quotes_on_any_text(text):
    m = closing_quotes(text)
    check_matches(m, text, '"\u201c', '"\u201d')
    assert pairs(m) == quotes_reference(text)
    if "\u201c" not in text and "\u201d" not in text:  # in_quotes knows straight ones only
        inside = in_quotes(text)
        assert m.pos.tolist() == [i for i, ch in enumerate(text)
                                  if ch == '"' and i > 0 and inside[i - 1] and not inside[i]]


@settings(max_examples=400, deadline=None)
@given(texts)
@example("{'}'} /* } */ \"\\\"}\" {} // {\n}")
@example("/*/ { */ { '\\'' }")
def test_braces_on_any_text(text):
    m = closing_braces(text)
    check_matches(m, text, "{", "}")
    assert pairs(m) == braces_from_lex_c(text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from("{}{}ab \n\t\r中"), max_size=80))
@example("{{}")
@example("}{}{{}}}")
def test_braces_without_literals_are_plain_nesting(text):
    assert pairs(closing_braces(text)) == braces_recursive(text)


# ---------------------------------------------------------------------------------------
# per-character loss


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = CharLM(11, ModelConfig(hidden_size=16, num_layers=2, dropout=0.5,
                                   init_range=0.5))
    ids = torch.randint(0, 11, (1003,), dtype=torch.uint8)
    return model, ids


@pytest.mark.parametrize("batch_size,seq_len", [(7, 13), (1, 50), (10, 1000)])
def test_per_char_mean_is_evaluate(tiny, batch_size, seq_len):
    model, ids = tiny
    model.train()
    nats = per_char_nats(model, ids, batch_size, seq_len, torch.device("cpu"))
    assert model.training  # restored
    want = train.evaluate(model, ids, batch_size, seq_len, torch.device("cpu"))
    assert nats.dtype == np.float64 and nats.shape == (len(ids),)
    assert np.nanmean(nats) == pytest.approx(want, abs=1e-6)
    L = (len(ids) - 1) // batch_size
    never = np.r_[0, np.arange(batch_size * L + 1, len(ids))]  # ids[0] and the tail
    assert np.flatnonzero(np.isnan(nats)).tolist() == never.tolist()
    assert (nats[np.isfinite(nats)] > 0).all()


def test_each_loss_is_its_own_characters(tiny):
    """Stream b read alone from a zero state gives the losses at ids[bL+1 : (b+1)L+1]:
    the scatter puts each loss at the character it predicts."""
    model, ids = tiny
    B, n = 7, len(ids)
    L = (n - 1) // B
    nats = per_char_nats(model, ids, B, 13, "cpu")
    model.eval()
    with torch.no_grad():
        for b in (0, 3, B - 1):
            x = ids[b * L:(b + 1) * L].long().view(-1, 1)
            y = ids[b * L + 1:(b + 1) * L + 1].long()
            logits, _, _ = model(x)
            own = torch.nn.functional.cross_entropy(logits[:, 0], y, reduction="none")
            np.testing.assert_allclose(nats[b * L + 1:(b + 1) * L + 1], own.double().numpy(),
                                       rtol=1e-5, atol=1e-6)
    ctx = context_chars(n, B)
    assert ctx[0] == 0 and ctx[1] == 1 and ctx[L] == L and ctx[L + 1] == 1
    assert ((ctx == 0) == np.isnan(nats)).all()
    assert context_chars(3, 5).tolist() == [0, 0, 0]


def test_per_char_nats_on_a_real_size_split_is_quick():
    torch.manual_seed(0)
    model = CharLM(84, ModelConfig(hidden_size=128, num_layers=1))
    ids = torch.randint(0, 84, (300_000,))
    per_char_nats(model, ids[:1000], 10, 50, "cpu")  # builds the fused kernel, if any
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a busy machine more threads only wait for each other
    try:
        t0 = time.perf_counter()
        nats = per_char_nats(model, ids, 100, 500, "cpu")
        seconds = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    assert seconds < 15  # ~1 s
    assert np.isfinite(nats).sum() == 100 * ((300_000 - 1) // 100)


def test_matching_six_million_characters_of_c_is_quick():
    unit = ('static int f(struct s *p)\n{\n\t/* { */ if (p->x) {\n\t\tpr("}{\\"");\n'
            "\t\treturn '{';\n\t} // }\n\treturn 0;\n}\n\n")
    text = unit * (6_000_000 // len(unit))
    t0 = time.perf_counter()
    m = closing_braces(text)
    q = closing_quotes(text)
    assert time.perf_counter() - t0 < 5
    assert len(m.pos) == 2 * (len(text) // len(unit)) and len(q.pos) > 0


# ---------------------------------------------------------------------------------------
# loss by distance


def test_by_distance_bins_counts_and_means():
    nats = np.array([9.0, 1.0, 2.0, 3.0, np.nan, 5.0, 7.0, 0.5])
    pos = np.array([1, 2, 3, 4, 5, 6, 7])
    dist = np.array([1, 9, 10, 29, 30, 50, 400])
    t = by_distance(nats, pos, dist, bins=(1, 10, 30, 100, math.inf))
    assert t["dist_chars"].tolist() == ["[1, 10)", "[10, 30)", "[30, 100)", "[100, inf)"]
    assert t["closers"].tolist() == [2, 2, 2, 1]
    assert t["scored"].tolist() == [2, 1, 2, 1]  # the NaN loss at pos 4 is left out
    np.testing.assert_allclose(t["mean_nats"], [1.5, 3.0, 6.0, 0.5])
    np.testing.assert_allclose(t["sem_nats"], [0.5, np.nan, 1.0, np.nan])  # 1 value: NaN
    # distances outside the edges are left out; an empty bin has NaN means
    t = by_distance(nats, pos, dist, bins=(2, 20, 25))
    assert t["closers"].tolist() == [2, 0] and np.isnan(t["mean_nats"][1])


def test_compare_pairs_the_two_models_on_the_same_closers():
    a = np.array([0.0, 1.0, 2.0, 3.0, 4.0, np.nan])
    b = np.array([0.0, 2.0, 2.0, 1.0, 7.0, 1.0])
    pos, dist = np.array([1, 2, 3, 4, 5]), np.array([1, 2, 20, 20, 20])
    t = compare(a, b, pos, dist, bins=(1, 10, 100))
    assert t["closers"].tolist() == [2, 3] and t["scored"].tolist() == [2, 2]
    np.testing.assert_allclose(t["mean_nats_a"], [1.5, 3.5])
    np.testing.assert_allclose(t["mean_nats_b"], [2.0, 4.0])
    np.testing.assert_allclose(t["diff_nats"], [0.5, 0.5])  # b − a
    np.testing.assert_allclose(t["frac_a_better"], [0.5, 0.5])  # the tie (pos 2) is no win
    np.testing.assert_allclose(t["sem_diff_nats"], [0.5, 2.5])


def test_bad_arguments_are_named():
    nats = np.zeros(5)
    with pytest.raises(ValueError, match="outside the 5 losses"):
        by_distance(nats, [5], [1])
    with pytest.raises(ValueError, match="increasing edges"):
        by_distance(nats, [1], [1], bins=(10, 1))
    with pytest.raises(ValueError, match="one length"):
        by_distance(nats, [1, 2], [1])
    with pytest.raises(ValueError, match="same text"):
        compare(nats, np.zeros(4), [1], [1])
