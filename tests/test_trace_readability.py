"""Unit traces are readable at every value: the text on each background has a WCAG 2.x
contrast of at least 4.5:1 (AA) over all of [−1, 1], and the HTML trace, the run's single
trace page, the PNG and both legends all draw with the one palette
(study.probes.layout.trace_colours). The page is self-contained (renders inside MLflow's
artifact preview: no links, scripts or fetched files) and well formed for any text."""

import html
import math
import re
import warnings
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from study import probes
from study.config import ModelConfig, ProbesConfig
from study.model import CharLM
from study.probes import figures, layout, traces
from study.probes.layout import LEGEND_VALUES, trace_colours

AA = 4.5  # WCAG 2.x AA, normal text

# ---------------------------------------------------------------------------------------
# WCAG 2.x contrast, written out here (not taken from the code under test)


def _linear(c8: int) -> float:
    """An sRGB channel 0–255 in linear light (WCAG 2.x's linearisation)."""
    c = c8 / 255
    return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4


def luminance(rgb) -> float:
    r, g, b = (_linear(c) for c in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a, b) -> float:
    hi, lo = sorted((luminance(a), luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def test_contrast_formula_on_known_pairs():
    assert contrast((0, 0, 0), (255, 255, 255)) == pytest.approx(21)
    assert contrast((255, 255, 255), (255, 255, 255)) == pytest.approx(1)
    assert contrast((0, 0, 0), (0, 0, 255)) == pytest.approx(2.44, abs=0.01)  # the old +1
    assert contrast((118, 118, 118), (255, 255, 255)) == pytest.approx(4.54, abs=0.01)
    assert contrast((119, 119, 119), (255, 255, 255)) < AA


# ---------------------------------------------------------------------------------------
# the palette


SWEEP = np.concatenate([np.linspace(-1, 1, 2001), [-1.0, 1.0, 0.0, -0.0,
                        np.nextafter(-1, 0), np.nextafter(1, 0), np.nextafter(0, 1),
                        np.nextafter(0, -1), 1e-12, -1e-12]])
OUTSIDE = [-1.5, 1.5, -1e300, 1e300, math.inf, -math.inf, math.nan]


def _rgb(c) -> bool:
    return isinstance(c, tuple) and len(c) == 3 and all(
        isinstance(x, int) and 0 <= x <= 255 for x in c)


def test_every_value_reads_at_aa_contrast_or_better():
    ratios = []
    for v in [*SWEEP, *OUTSIDE, np.float32(0.5), np.float64(-0.25)]:
        bg, fg = trace_colours(v)
        assert _rgb(bg) and _rgb(fg), (v, bg, fg)
        ratios.append(contrast(bg, fg))
    worst = min(ratios)
    assert worst >= AA, f"contrast {worst:.2f}:1 at {SWEEP[int(np.argmin(ratios))]}"
    assert worst >= 7  # in fact AAA: kept, so that a change of palette is a choice
    # the worst is at an end (the darkest backgrounds), both ends alike
    ends = [contrast(*trace_colours(v)) for v in (-1, 1)]
    assert min(ends) == pytest.approx(worst) and abs(ends[0] - ends[1]) < 0.3


def test_the_sign_reads_and_strength_grows_with_the_value():
    white, neg, pos = (trace_colours(v)[0] for v in (0, -1, 1))
    assert white == (255, 255, 255)
    assert neg[0] > neg[2] + 100 and pos[2] > pos[0] + 100  # −1 orange-red, +1 blue
    lum = [luminance(trace_colours(v)[0]) for v in np.linspace(0, 1, 101)]
    assert all(a >= b for a, b in zip(lum, lum[1:], strict=False))  # darker with |v|
    lum = [luminance(trace_colours(-v)[0]) for v in np.linspace(0, 1, 101)]
    assert all(a >= b for a, b in zip(lum, lum[1:], strict=False))
    assert trace_colours(1.5) == trace_colours(1) and trace_colours(-7) == trace_colours(-1)
    assert trace_colours(math.nan)[0] not in {trace_colours(v)[0] for v in SWEEP}
    assert LEGEND_VALUES[0] == -1 and LEGEND_VALUES[-1] == 1 and 0 in LEGEND_VALUES
    assert "−1" in layout.LEGEND_CAPTION and "+1" in layout.LEGEND_CAPTION


# ---------------------------------------------------------------------------------------
# parsing the HTML


def _colour(css: str) -> tuple[int, int, int]:
    m = re.fullmatch(r"rgb\((\d{1,3}),(\d{1,3}),(\d{1,3})\)", css.strip())
    assert m, css
    return tuple(int(x) for x in m.groups())


def _style(style: str) -> dict[str, str]:
    return {k.strip(): v.strip() for k, v in
            (d.split(":", 1) for d in style.split(";") if d.strip())}


VOID = {"meta", "br", "hr", "img", "input", "link"}


class Page(HTMLParser):
    """The page parsed: checks that tags nest and close; collects every element with an
    inline style (tag, style, text), the trace spans (inside <div class='t'>) and the
    legend swatches (inside <p class='k'>), and the text of each heading."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.stack, self.styled, self.spans, self.swatches, self.headings = [], [], [], [], []
        self.tags, self.attrs, self.title = [], [], ""
        self._open = None
        self.feed(text)
        self.close()
        assert self.stack == [], f"unclosed: {self.stack}"

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += attrs
        a = dict(attrs)
        if tag not in VOID:
            self.stack.append((tag, a.get("class")))
        if "style" in a:
            cls = [c for _, c in self.stack[:-1]]
            self._open = {"tag": tag, "style": _style(a["style"]), "text": "",
                          "title": a.get("title"), "in": cls}
        if tag in ("h2", "h3", "h4"):
            self.headings.append("")

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1][0] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()
        if self._open is not None and tag == self._open["tag"]:
            s = self._open
            self.styled.append(s)
            if "t" in s["in"]:
                self.spans.append(s)
            if "k" in s["in"]:
                self.swatches.append(s)
            self._open = None

    def handle_data(self, data):
        if self._open is not None:
            self._open["text"] += data
        if self.stack and self.stack[-1][0] in ("h2", "h3", "h4"):
            self.headings[-1] += data
        if self.stack and self.stack[-1][0] == "title":
            self.title += data


def check_colours(page: Page) -> None:
    """Every inline-styled element: a background and a text colour, at AA contrast; each
    trace span's pair is the palette's for its value (its title), and the legend's
    swatches are the palette's for the values they show, both ends included."""
    assert page.styled
    for s in page.styled:
        bg, fg = _colour(s["style"]["background"]), _colour(s["style"]["color"])
        assert contrast(bg, fg) >= AA, s
    for s in page.spans:
        v = float(s["title"])  # rounded to 2 decimals: the palette's pair at the nearest
        pair = (_colour(s["style"]["background"]), _colour(s["style"]["color"]))
        if math.isnan(v):
            assert pair == trace_colours(v)
        else:
            near = [trace_colours(v + d) for d in np.linspace(-0.005, 0.005, 11)]
            assert any(max(abs(a - b) for a, b in zip(pair[0], n[0], strict=True)) <= 1
                       and pair[1] == n[1] for n in near), (v, pair)
    shown = [float(s["text"].replace("−", "-")) for s in page.swatches]
    assert shown == list(LEGEND_VALUES)
    for s, v in zip(page.swatches, LEGEND_VALUES, strict=True):
        assert (_colour(s["style"]["background"]), _colour(s["style"]["color"])) == \
            trace_colours(v)


def test_trace_html_draws_with_the_palette_exactly():
    values = np.concatenate([np.linspace(-1, 1, 201), [math.nan, 3.0, -3.0]])
    text = "".join(chr(ord("a") + i % 26) for i in range(len(values)))
    page = Page(traces.trace_html(text, values, "t"))
    assert len(page.spans) == len(values)
    for s, v in zip(page.spans, values, strict=True):
        bg, fg = trace_colours(v)
        assert (_colour(s["style"]["background"]), _colour(s["style"]["color"])) == (bg, fg)
    check_colours(page)
    assert layout.LEGEND_CAPTION in html.unescape(traces.legend_html())


# ---------------------------------------------------------------------------------------
# any text: property-based


NON_ASCII = "éÉßçñüжЖщЯ中文字漢語😀🎉👍\u200b\u0301\ufeff"
pieces = st.one_of(
    st.text(max_size=5),  # any Unicode at all (UTF-8 encodable: no lone surrogates)
    st.sampled_from(["\t", "\n", "\r\n", "\r", "\n\n", "\r\n\r\n", "    ", "\x00", "\x0c"]),
    st.sampled_from(list('<>&"\'') + ["&amp;", "&lt;", "<span>", "</div>", "<!--", "-->",
                                      "<script>alert(1)</script>", "]]>", "'\"><"]),
    st.sampled_from(NON_ASCII),
    st.builds(lambda n, ch: ch * n, st.sampled_from([79, 80, 81, 200]),
              st.sampled_from(["a", " ", "\t", "中", "😀", "<"])),
)
any_text = st.lists(pieces, max_size=20).map("".join)
# no subnormals: a library built with -ffast-math may have set flush-to-zero by then
values_for = st.floats(allow_nan=True, allow_infinity=True, width=32, allow_subnormal=False)


@settings(max_examples=150, deadline=None)
@given(any_text, st.data())
@example("", None)
@example("x", None)
@example("\r", None)
@example('<a href="x">&amp;</a>\r\n\'"\t', None)
def test_trace_html_on_any_text_is_well_formed_one_span_per_character(text, data):
    values = (np.linspace(-1, 1, len(text)) if data is None else
              np.array(data.draw(st.lists(values_for, min_size=len(text),
                                          max_size=len(text))), dtype=np.float32))
    title, subtitle = f"unit {text[:40]}", text[:60]
    out = traces.trace_html(text, values, title, subtitle)
    out.encode("utf-8")  # writable as UTF-8
    page = Page(out)
    assert page.title == title and page.headings == [title]
    drawn = [(ch, v) for ch, v in zip(text, values, strict=True) if ch != "\r"]
    assert [s["text"] for s in page.spans] == \
        ["↵\n" if ch == "\n" else ch for ch, _ in drawn]
    assert [s["tag"] for s in page.spans] == ["span"] * len(drawn)
    for s, (_, v) in zip(page.spans, drawn, strict=True):
        assert (_colour(s["style"]["background"]), _colour(s["style"]["color"])) == \
            trace_colours(v)
    check_colours(page)
    body = out.split("<div class='t'>", 1)[1].rsplit("</div>", 1)[0]
    assert "<" not in re.sub(r'<span style="[^"<>]*" title="[^"<>]*">|</span>', "", body)
    assert not {"a", "script", "link", "img", "iframe"} & set(page.tags)


# ---------------------------------------------------------------------------------------
# a run's single trace page, on a tiny model


CODE = 'int f(int a) {\n\tif (a > 0) { /* "x" */ return g("s\\"<&>", a); }\n}\n// c\n'
PROSE = 'He said "yes, <of course>" & left.\r\nShe said "no".\r\n\r\n'


@pytest.fixture(scope="module")
def run_traces(tmp_path_factory):
    text = (PROSE + CODE) * 12
    vocab = "".join(sorted(set(text)))
    torch.manual_seed(0)
    model = CharLM(len(vocab), ModelConfig(cell="lstm", hidden_size=4, num_layers=2))
    ids = torch.tensor([vocab.index(c) for c in text], dtype=torch.long)
    cfg = ProbesConfig(streams=2, warmup=10, top_units=2, trace_chars=200)
    acts = probes.read(model, ids, lambda t: "".join(vocab[int(i)] for i in t), cfg)
    scores = probes.unit_scores(acts)
    out = tmp_path_factory.mktemp("run") / "probes"
    entries = traces.write_traces(acts, scores, out / "traces", cfg, "lstm on tiny")
    return out, entries, scores


def test_one_self_contained_page_per_run_and_the_pngs(run_traces):
    out, entries, scores = run_traces
    files = {str(p.relative_to(out)) for p in out.rglob("*")}
    concepts = sorted(set(scores.concept))
    assert len(concepts) >= 4
    assert files == {"traces.html", "traces"} | {f"traces/{c}_1.png" for c in concepts}
    assert [(e["concept"], e["rank"]) for e in entries] == \
        [(c, r) for c in concepts for r in (1, 2)]
    assert all(e["page"] == "traces.html" for e in entries)
    assert {e["png"] for e in entries if "png" in e} == {f"{c}_1.png" for c in concepts}
    text = (out / "traces.html").read_text(encoding="utf-8")
    page = Page(text)
    # nothing that navigates or fetches: MLflow's preview (an iframe) stays where it is
    assert not {"a", "script", "link", "img", "iframe", "base", "form", "object",
                "embed"} & set(page.tags)
    assert not [a for a in page.attrs if a[0] in ("href", "src", "action") or
                a[0].startswith("on")]
    for needle in ("url(", "@import", "http:", "https:", "javascript:", "<meta http-equiv"):
        assert needle not in text.lower()
    check_colours(page)
    assert "activation of the unit, −1 … +1" in text
    assert len(page.swatches) == len(LEGEND_VALUES)  # one legend, at the top
    # a heading per concept, and one per trace naming the concept, layer, state and unit
    for c in concepts:
        assert c in page.headings
    best = probes.best_units(scores, 2)
    for e, (_, row) in zip(entries, best.iterrows(), strict=True):
        state = "tanh(c)" if row.state == "c" else "h"
        heading = f"{row.concept} #{e['rank']}: layer {row.layer}, {state} unit {row.unit}"
        assert heading in page.headings
        assert html.escape(traces.explain_score(row)) in text
        assert f"score {row.score:.3f}" in traces.explain_score(row)
        assert ("ROC-AUC" if row.kind == "binary" else "Spearman") in traces.explain_score(row)
    divs = re.findall(r"<div class='t'>(.*?)</div>", text, re.S)
    assert len(divs) == len(entries)
    for div in divs:  # trace_chars characters each, less the '\r's not drawn
        assert 180 <= div.count("</span>") <= 200


def test_write_traces_page_can_go_elsewhere_and_without_pngs(run_traces, tmp_path):
    out, _, scores = run_traces
    text = (PROSE + CODE) * 3
    vocab = "".join(sorted(set(text)))
    torch.manual_seed(0)
    model = CharLM(len(vocab), ModelConfig(cell="gru", hidden_size=3, num_layers=1))
    cfg = ProbesConfig(streams=1, warmup=5, top_units=1, trace_chars=60)
    acts = probes.read(model, torch.tensor([vocab.index(c) for c in text]),
                       lambda t: "".join(vocab[int(i)] for i in t), cfg)
    entries = traces.write_traces(acts, probes.unit_scores(acts), tmp_path / "pngs", cfg,
                                  "t", png=False, page=tmp_path / "x" / "all.html")
    assert entries and all("png" not in e and e["page"] == "all.html" for e in entries)
    assert {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")} == {"x", "x/all.html"}
    # no unit scored (an empty text): still a page, saying so
    empty = probes.unit_scores(probes.read(model, torch.tensor([], dtype=torch.long),
                                           lambda t: "", cfg))
    assert traces.write_traces(acts, empty, tmp_path / "e", cfg, "t") == []
    page = (tmp_path / "e.html").read_text(encoding="utf-8")
    assert "No unit was scored" in page and Page(page).spans == []


# ---------------------------------------------------------------------------------------
# the PNG and its legend (drawn by study.probes.figures.trace_png)


def _axes(fig, label):
    [ax] = [a for a in fig.axes if a.get_label() == label]
    return ax


def test_png_cells_and_legend_use_the_palette():
    text = "ab c\tdé中😀<&>\n" * 3 + "x" * 90
    values = np.concatenate([np.linspace(-1, 1, len(text) - 1), [math.nan]])
    fig = figures.trace_png(text, values, "t")
    grid = fig.axes[0]
    img = grid.images[0].get_array()
    rows = traces.trace_rows(text, values, 80)
    assert img.shape == (len(rows), 80, 3)
    colours = {}
    for r, row in enumerate(rows):
        for c, (_, v) in enumerate(row):
            bg, fg = trace_colours(v)
            assert np.allclose(img[r, c], np.divide(bg, 255)), (r, c, v)
            colours[(c + 0.5, r + 0.5)] = fg
    for t in grid.texts:  # each character drawn in its cell's text colour
        fg = colours[tuple(t.get_position())]
        assert np.allclose(matplotlib_rgb(t.get_color()), np.divide(fg, 255))
    key = _axes(fig, "trace legend")
    swatches = key.images[0].get_array()
    assert swatches.shape == (1, len(LEGEND_VALUES), 3)
    for i, v in enumerate(LEGEND_VALUES):
        bg, fg = trace_colours(v)
        assert np.allclose(swatches[0, i], np.divide(bg, 255))
    labels = [t for t in key.texts if t.get_text() != layout.LEGEND_CAPTION]
    assert [float(t.get_text()) for t in labels] == list(LEGEND_VALUES)
    for t, v in zip(labels, LEGEND_VALUES, strict=True):
        assert np.allclose(matplotlib_rgb(t.get_color()), np.divide(trace_colours(v)[1], 255))
    assert layout.LEGEND_CAPTION in [t.get_text() for t in key.texts]
    figures.plt.close(fig)


def matplotlib_rgb(c):
    from matplotlib.colors import to_rgb
    return to_rgb(c)


def test_rendered_png_pixels_have_the_palette_and_read(tmp_path):
    """The saved PNG itself: the pixel at the middle of a blank cell (a space) is the
    palette's background for its value, at ±1 and in between; the legend's ends too."""
    import matplotlib.image as mpimg

    values = [-1.0, -0.4, 0.0, 0.4, 1.0]
    text = "".join(" " * 7 + "x" for _ in values)  # a blank run per value: its middle
    vals = np.repeat(values, 8)
    fig = figures.trace_png(text, vals, "t", width=40)
    path = tmp_path / "t.png"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Glyph .* missing", UserWarning)
        fig.savefig(path, dpi=110)
    grid, key = fig.axes[0], _axes(fig, "trace legend")
    img = mpimg.imread(path)[..., :3]
    h, w = img.shape[:2]

    def pixel(ax, x, y):  # by figure fraction: savefig's dpi is not the figure's
        fx, fy = fig.transFigure.inverted().transform(ax.transData.transform((x, y)))
        return np.round(img[int((1 - fy) * h), int(fx * w)] * 255).astype(int)

    for i, v in enumerate(values):
        got = pixel(grid, 8 * i + 3.5, 0.5)
        bg, fg = trace_colours(v)
        assert np.abs(got - bg).max() <= 2, (v, got, bg)
        assert contrast(tuple(int(x) for x in got), fg) >= AA
    for i, v in enumerate(LEGEND_VALUES):
        got = pixel(key, i + 0.1, 0.15)  # a corner of the swatch, off its label
        assert np.abs(got - trace_colours(v)[0]).max() <= 2, (v, got)
    figures.plt.close(fig)


def test_the_png_still_exists_where_the_report_reads_it(run_traces):
    out, entries, _ = run_traces
    for e in entries:
        if "png" in e:
            assert (out / "traces" / f"{e['concept']}_1.png").stat().st_size > 1000


def test_no_trace_page_links_anywhere():
    """No <a> in anything the traces module writes (the old index.html's links blanked
    MLflow's preview)."""
    src = Path(traces.__file__).read_text(encoding="utf-8")
    assert "<a " not in src and "href" not in src and "index.html" not in src
