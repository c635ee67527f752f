"""Whatever reads a user's text works on any text (STYLE habit 10): every concept, the trace
layout (PNG and HTML) and the probes' text path, property-tested with hypothesis on text
mixing code, prose, CRLF, tabs, long lines, non-ASCII and wide characters."""

import html
import io
import re
import string
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from study import probes
from study.config import ModelConfig, ProbesConfig
from study.model import CharLM
from study.probes import figures, traces
from study.probes.concepts import CONCEPTS, indentation, line_position

NON_ASCII = "éÉßçñüжЖщЯ中文字漢語😀🎉👍"
SEPARATORS = "\x0b\x0c\x1c\x85\u2028\u2029"  # str.splitlines breaks at these; '\n' only does
pieces = st.one_of(
    st.sampled_from(string.ascii_letters + string.digits + string.punctuation),
    st.sampled_from([" ", "\t", "\n", "\r\n", "\n\n", "\r\n\r\n", "    "]),
    st.sampled_from(NON_ASCII),
    st.sampled_from(['"', "'", "{", "}", "(", ")", "/", "*", "/*", "*/", "//", "if (", "\\"]),
)
long_lines = st.builds(lambda n, ch, end: ch * n + end,
                       st.sampled_from([79, 80, 81, 160, 161, 250]),
                       st.sampled_from(["a", " ", "\t", "中", "😀", "é"]),
                       st.sampled_from(["", "\n", "\r\n"]))


def texts(max_pieces: int = 30, separators: bool = False):
    alphabet = st.one_of(pieces, st.sampled_from(SEPARATORS)) if separators else pieces
    return st.one_of(
        st.lists(st.one_of(alphabet, long_lines), max_size=max_pieces).map("".join),
        st.lists(alphabet, max_size=max_pieces).map("".join),  # short, without long lines
        st.sampled_from(["", "\n", "\r", "\r\n", "\t", '"', "a", "中", "😀"]),  # 0 or 1 char
    )


# ---------------------------------------------------------------------------------------
# concepts


@settings(max_examples=150, deadline=None)
@given(st.one_of(texts(separators=True), st.text(max_size=60)))
def test_every_concept_is_defined_on_any_text(text):
    for name, c in CONCEPTS.items():
        out = np.asarray(c.fn(text))
        assert out.shape == (len(text),), name
        assert out.dtype in (np.float32, np.float64), name
        assert np.isfinite(out).all(), name
        if c.kind == "binary":
            assert set(np.unique(out).tolist()) <= {0.0, 1.0}, name
        else:  # depths, positions, widths
            assert (out >= 0).all(), name


@settings(max_examples=150, deadline=None)
@given(texts(separators=True))
def test_lines_end_at_newline_only(text):
    pos = line_position(text)
    for t, ch in enumerate(text):  # characters since the last '\n', 0 at the '\n'
        assert pos[t] == (0 if ch == "\n" else t - text.rfind("\n", 0, t + 1))
    # indentation: one value per '\n'-ended line (its '\n' included), that of its opening
    # spaces and tabs, tab stops every 8 columns
    ind, start = indentation(text), 0
    for line in text.split("\n"):
        opening = line[:len(line) - len(line.lstrip(" \t"))]
        assert (ind[start:start + len(line) + 1] == len(opening.expandtabs(8))).all()
        start += len(line) + 1


def test_indentation_does_not_break_lines_where_line_position_does_not():
    # str.splitlines broke at \x0b, \x85, \u2028 ...: the second "line" got its own width
    assert indentation("  a\x0b    b").tolist() == [2] * 9
    assert indentation("\tx\u2028  y\r\n  z").tolist() == [8] * 8 + [2] * 3
    assert indentation("").tolist() == [] and indentation(" ").tolist() == [1]


# ---------------------------------------------------------------------------------------
# trace layout


def check_rows(text: str, width: int):
    values = np.arange(len(text), dtype=np.float64)  # a value per character: its index
    rows = traces.trace_rows(text, values, width)
    drawn = [(ch, v) for row in rows for ch, v in row]
    assert "".join(ch for ch, _ in drawn) == text.replace("\r", "").replace("\n", "↵")
    kept = [t for t, ch in enumerate(text) if ch != "\r"]
    assert [v for _, v in drawn] == kept  # each value stays with its character
    assert all(1 <= len(row) <= width for row in rows)
    for row in rows:
        ends = [text[int(v)] == "\n" for _, v in row]
        assert not any(ends[:-1])  # a '\n' ends its row...
        assert ends[-1] or len(row) == width or row is rows[-1]  # ...as does a full row
    return rows


@settings(max_examples=200, deadline=None)
@given(texts(), st.sampled_from([1, 2, 7, 80]))
def test_trace_rows_draw_every_character_once_in_order(text, width):
    check_rows(text, width)


@pytest.mark.parametrize("text,lengths", [
    ("a" * 80 + "\nb", [80, 1, 1]),  # was IndexError: index 80 is out of bounds
    ("a" * 80 + "\r\n", [80, 1]),
    ("a" * 161, [80, 80, 1]),  # was 80, 80 and one character lost per wrap
    ("a" * 79 + "\n" + "b" * 81 + "\n", [80, 80, 2]),
    ("a" * 160 + "\n", [80, 80, 1]),
    ("", []),
    ("x", [1]),
    ("\n", [1]),
    ("\n\n\r\n", [1, 1, 1]),
    ("\r", []),
])
def test_trace_rows_regressions(text, lengths):
    assert [len(r) for r in check_rows(text, 80)] == lengths


def render(fig) -> None:
    """Draw the figure for real (text and glyph lookup happen there), then close it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing")
        fig.savefig(io.BytesIO(), format="png", dpi=30)
    figures.plt.close(fig)


@pytest.mark.parametrize("text", ["a" * 80 + "\nb", "a" * 161, "", "x", "é中😀\t\r\n$x$"])
def test_trace_png_grid_is_width_columns(text):
    fig = figures.trace_png(text, np.linspace(-1, 1, len(text)), "t")
    img = fig.axes[0].images[0].get_array()
    assert img.shape == (max(1, len(traces.trace_rows(text, range(len(text)), 80))), 80, 3)
    render(fig)


@settings(max_examples=6, deadline=None)
@given(texts(max_pieces=8))
def test_trace_png_draws_any_text(text):
    render(figures.trace_png(text, np.linspace(-1, 1, len(text)), "any text"))


SPAN = re.compile(r'<span style="background:[^"<>]*" title="[^"<>]*">(.*?)</span>', re.S)


@settings(max_examples=150, deadline=None)
@given(texts(separators=True))
@example('<a href="x">&amp;</a>\r\n\'')
def test_trace_html_shows_every_character_once_escaped(text):
    page = traces.trace_html(text, np.linspace(-1, 1, len(text)), f"t {text}", text)
    body = page.split("<div class='t'>", 1)[1].rsplit("</div></body></html>", 1)[0]
    shown = SPAN.findall(body)
    assert SPAN.sub("", body) == ""  # nothing but the characters' spans
    for s in shown:
        assert "<" not in s and ">" not in s and html.escape(html.unescape(s)) == s
    assert [html.unescape(s) for s in shown] == \
        ["↵\n" if ch == "\n" else ch for ch in text if ch != "\r"]
    assert f"<h3>{html.escape(f't {text}')}</h3><p>{html.escape(text)}</p>" in page


# ---------------------------------------------------------------------------------------
# the probes' text path on a tiny model


def tiny_model(text: str, cell: str = "lstm"):
    vocab = "".join(sorted(set(text))) or "a"
    torch.manual_seed(0)
    model = CharLM(len(vocab), ModelConfig(cell=cell, hidden_size=3, num_layers=2))
    ids = torch.tensor([vocab.index(c) for c in text], dtype=torch.long)
    return model, ids, lambda t: "".join(vocab[int(i)] for i in t)


@settings(max_examples=25, deadline=None)
@given(texts(max_pieces=12), st.sampled_from([1, 3]), st.sampled_from([0, 4]))
def test_read_score_and_write_traces_on_any_text(text, streams, warmup):
    model, ids, decode = tiny_model(text)
    cfg = ProbesConfig(streams=streams, warmup=warmup, top_units=2, trace_chars=60)
    acts = probes.read(model, ids, decode, cfg)
    assert text.startswith(acts.text) and len(acts.keep) == len(acts.text)
    assert all(len(v) == len(acts.text) for v in acts.states.values())
    assert acts.keep.any() == bool(text)  # a text too short for the warm-up keeps a step
    scores = probes.unit_scores(acts)
    assert set(scores.concept) == (set(CONCEPTS) if text else set())
    with tempfile.TemporaryDirectory() as tmp:
        links = traces.write_traces(acts, scores, Path(tmp) / "traces", cfg, "t", png=False)
        assert (Path(tmp) / "traces.html").is_file()
        assert all(e["page"] == "traces.html" for e in links)


class TinyCorpus:
    def __init__(self, text):
        _, self.ids, self.decode = tiny_model(text)
        self.splits = {"val": self.ids}


@pytest.mark.parametrize("text", ["", "x", "ab", "é\r\n中😀\t{(\"a\")}\r\n" * 3,
                                  "a" * 161 + "\n" + "\t" * 3])
def test_run_probes_on_very_short_and_unusual_text(text, tmp_path):
    model, _, _ = tiny_model(text, cell="gru")
    cfg = ProbesConfig(streams=2, warmup=5, trace_chars=50, error_flow_q=4,
                       error_flow_batch=2)
    out = tmp_path / "probes"
    res = probes.run_probes(model, TinyCorpus(text), cfg, out, "t", init_model=model)
    assert res.ok and res.failed == {}
    assert "probe_seconds" in res.metrics
    files = {str(p.relative_to(out)) for p in out.rglob("*")}
    assert {"saturation.csv", "unit_scores.csv", "error_flow.csv", "traces.html"} \
        <= files
