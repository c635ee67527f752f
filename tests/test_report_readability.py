"""What a reader of report.html sees: no legend over the data, the decay table says why a
cell is empty, readable saturation panels in dark colours, text left- and numbers right-
aligned, captions that say what a table is (unit, split), and claims from runs too small to
judge marked so. Without a store: runs are built from RunRecords."""

import re

import matplotlib.pyplot as plt
import pandas as pd
import pytest
from matplotlib.colors import to_rgb

from analyses import claims, common, error_flow, report, saturation, variants
from analyses.common import Section
from analyses.runs import frame
from study.formats import markdown_table
from study.probes.figures import LAYER_COLOURS
from study.tracking import RunRecord


def record(run_id, variant="lstm", dataset="warpeace", seed=0, test=1.5, epochs=5,
           hidden=128, layers=2, max_chars="None"):
    return RunRecord(run_id, f"{variant}-{dataset}-s{seed}", "ablation", "FINISHED", seed,
                     seed + 10, {"kind": "train", "variant": variant, "dataset": dataset,
                                 "seed": str(seed)},
                     {"model.num_layers": str(layers), "model.hidden_size": str(hidden),
                      "train.seed": str(seed), "train.epochs": str(epochs),
                      "data.max_chars": str(max_chars)},
                     {"test_nats_per_char": test, "epochs_trained": float(epochs)})


class FakeRuns:
    """What the sections read from analyses.runs.Runs, with artifacts given as frames."""

    def __init__(self, records, artifacts=None):
        self.all = frame(records)
        self.train = self.all[self.all.status == "FINISHED"]
        self.studies = self.all.iloc[0:0]
        self.artifacts = artifacts or {}

    def csv(self, run_id, path):
        return self.artifacts.get((run_id, path))


@pytest.fixture
def captured(monkeypatch, tmp_path):
    """The figures the sections save, still open (common.save closes them)."""
    figs = []

    def keep(fig, out, name, caption):
        figs.append(fig)
        return common.Figure(tmp_path / f"{name}.png", tmp_path / f"{name}.pdf", caption)

    for module in (variants, saturation, error_flow):
        monkeypatch.setattr(module, "save", keep)
    yield figs
    plt.close("all")


# 1. the variants figure's key hides no point ------------------------------------------

def test_the_variants_key_is_outside_every_panel(captured, tmp_path):
    # one point sits where an in-panel key ('upper left') would go: the second variant's
    # loss at the top of the scale, as in the smoke runs
    recs = [record(f"{v}-{d}", v, d, 0, x) for d, xs in
            (("linux", (3.743, 3.740, 3.639)), ("warpeace", (3.085, 3.083, 3.066)))
            for v, x in zip(("peephole", "lstm", "gru"), xs, strict=True)]
    variants.build(FakeRuns(recs), tmp_path)
    (fig,) = captured
    assert all(ax.get_legend() is None for ax in fig.axes)
    assert len(fig.legends) == 1  # the baseline's key, once, below the panels
    fig.canvas.draw()
    key = fig.legends[0].get_window_extent()
    for ax in fig.axes:
        assert not key.overlaps(ax.get_window_extent())


# 2. the decay table explains its dashes and a q range below 50 ---------------------------

def curve(q_max, rate=-0.1, zero_from=None):
    rows = [{"layer": 1, "state": "h", "q": q, "when": "trained",
             "grad_norm": 0.0 if zero_from is not None and q >= zero_from
             else float(2.718281828 ** (rate * q))} for q in range(q_max + 1)]
    return pd.DataFrame(rows)


def test_decay_runs_to_the_last_q_measured_and_says_why_it_cannot():
    rate, q_to, why = error_flow.decay(curve(40))
    assert q_to == 40 and rate == pytest.approx(-0.1) and why == ""
    assert error_flow.decay_rate(curve(40)) == pytest.approx(-0.1)
    rate, q_to, why = error_flow.decay(curve(80))
    assert q_to == 50 and rate == pytest.approx(-0.1)
    rate, q_to, why = error_flow.decay(curve(80, zero_from=45))  # underflow before q = 50
    assert rate != rate and q_to == 50 and "q = 50" in why
    rate, _, why = error_flow.decay(curve(0))  # only q = 0 measured
    assert rate != rate and "only to 0" in why


def test_the_decay_table_says_why_a_cell_is_empty_and_that_q_stopped_below_50(tmp_path,
                                                                            captured):
    recs = [record(f"{v}-{s}", v, "linux", s, 1.5 + s / 100) for v in ("rnn", "lstm")
            for s in (0, 1)] + [record("gru-0", "gru", "linux", 0, 1.4)]
    flows = {("rnn-0", 30): curve(30, -0.4), ("rnn-1", 30): curve(30, -0.4, zero_from=20),
             ("lstm-0", 30): curve(30, -0.1), ("lstm-1", 30): curve(30, -0.12),
             ("gru-0", 30): curve(30, -0.05)}
    runs = FakeRuns(recs, {(r, "probes/error_flow.csv"): f for (r, _), f in flows.items()})
    sec = error_flow.build(runs, tmp_path)
    t = sec.tables["decay"].set_index("variant")
    assert (t["q to"] == 30).all()
    assert "only up to 30" in sec.text and "below 50" in sec.text
    assert "why –" in sec.text
    assert t.loc["lstm", "why –"] == "" and t.loc["lstm", "sd"] == t.loc["lstm", "sd"]
    assert t.loc["gru", "why –"] == "one seed: no sd"
    assert "gradient 0 at q = 30" in t.loc["rnn", "why –"]  # one seed's rate: 0 at the end
    assert "1 of 2 seeds with a rate" in t.loc["rnn", "why –"]
    assert "nats" in sec.captions["decay"] and "validation" in sec.captions["decay"]


# 3. saturation panels are wide, layers in dark colours -----------------------------------

def contrast_on_white(colour) -> float:
    lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in to_rgb(colour)]
    return 1.05 / (0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2] + 0.05)


def test_layer_colours_stand_out_on_white_and_differ():
    assert len(set(LAYER_COLOURS)) == len(LAYER_COLOURS)
    for c in LAYER_COLOURS:
        assert contrast_on_white(c) >= 3.0, c  # WCAG's 3:1 for graphics; pale yellow: 1.3
    assert contrast_on_white("#fde725") < 3.0  # viridis's yellow fails, as it should


def sat_table(gates, layers=(1, 2), units=8):
    return pd.DataFrame([{"layer": layer, "gate": g, "unit": u, "frac_left": 0.1 * (u % 3),
                          "frac_right": 0.1 * (u % 5)}
                         for layer in layers for g in gates for u in range(units)])


def test_saturation_panels_are_a_column_wide_and_colour_layers_darkly(tmp_path, captured):
    recs = [record("lstm-0", "lstm", "linux"), record("gru-0", "gru", "linux")]
    runs = FakeRuns(recs, {("lstm-0", "probes/saturation.csv"): sat_table("ifo"),
                           ("gru-0", "probes/saturation.csv"): sat_table("ru")})
    saturation.build(runs, tmp_path)
    (fig,) = captured
    drawn = [ax for ax in fig.axes if ax.axison]
    assert len(drawn) == 5
    for ax in drawn:
        w = ax.get_position().width * fig.get_figwidth()
        assert w >= 2.0, w  # inches; the old single row of five was ~1 inch a panel
        for coll in ax.collections:
            assert contrast_on_white(coll.get_facecolor()[0][:3]) >= 3.0


# 4. text left, numbers right ------------------------------------------------------------

def test_text_columns_are_left_aligned_and_numbers_right_aligned():
    df = pd.DataFrame({"dataset": ["linux", "warpeace"], "n seeds": [3, 1],
                       "test nats/char, mean ± sd": ["1.876 ± 0.032", "1.311 ± –"],
                       "p": [0.5, float("nan")], "verdict": ["reproduced", claims.TOO_SMALL],
                       "drawn": [True, False]})
    out = report.table_html(df, "A caption")
    heads = dict(re.findall(r"<th class='(\w)'>([^<]+)</th>", out)[i][::-1]
                 for i in range(len(df.columns)))
    assert heads == {"dataset": "l", "n seeds": "r", "test nats/char, mean ± sd": "r",
                     "p": "r", "verdict": "l", "drawn": "l"}
    assert "<td class='l'>linux</td>" in out and "<td class='r'>3</td>" in out
    assert "<td class='r'>–</td>" in out  # NaN
    assert f"<td class='l warn'>{claims.TOO_SMALL}</td>" in out  # seen at a glance
    css = report.to_html([], {"date": "d", "commit": "c", "uri": "u", "experiments": "e",
                              "selection": "s", "runs": 0, "train": 0, "studies": 0})
    assert ".t .l{text-align:left}" in css and ".t .r{text-align:right}" in css
    md = markdown_table(df)
    assert md.splitlines()[1] == "| :--- | ---: | ---: | ---: | :--- | :--- |"


# 5. captions say what a table is, never a bare identifier ------------------------------

def test_captions_are_sentences_not_identifiers():
    sec = Section("Sweeps of BPTT length and clipping", tables={"best_sweep_bptt_clip":
                                                               pd.DataFrame({"a": [1]})})
    fallback = report.caption(sec, "best_sweep_bptt_clip")
    assert "_" not in fallback and " " in fallback
    sec.captions["best_sweep_bptt_clip"] = "Study x: its five best trials (nats/char, val)"
    assert report.caption(sec, "best_sweep_bptt_clip") == sec.captions["best_sweep_bptt_clip"]
    h = {"date": "d", "commit": "c", "uri": "u", "experiments": "e", "selection": "s",
         "runs": 0, "train": 0, "studies": 0}
    page = report.to_html([sec], h)
    assert "<caption>Study x: its five best trials (nats/char, val)</caption>" in page
    assert ">best_sweep_bptt_clip<" not in page
    assert "**Study x: its five best trials (nats/char, val)**" in report.to_markdown([sec], h)


def test_the_sections_caption_their_tables_with_unit_and_split(tmp_path, captured):
    recs = [record(f"{v}-{s}", v, "linux", s, 1.5 + s / 100) for v in ("peephole", "lstm")
            for s in (0, 1)]
    runs = FakeRuns(recs)
    for module in (variants, claims):
        sec = module.build(runs, tmp_path)
        for name in sec.tables:
            text = sec.captions[name]
            assert not re.fullmatch(r"\w+", text)
            assert "nats/char" in text and ("test split" in text or "validation" in text)


# 6. claims from runs too small to judge say so -----------------------------------------

def small_and_large(epochs, hidden, max_chars="None"):
    return [record(f"{v}-{d}-{s}", v, d, s, x + s / 1000, epochs, hidden, max_chars=max_chars)
            for d, base in (("linux", 1.9), ("warpeace", 1.3))
            for v, x in (("peephole", base), ("lstm", base - 0.1), ("gru", base),
                         ("rnn", base + 0.2)) for s in (0, 1)]


def test_a_claim_from_a_2_epoch_width_16_run_is_too_small_to_judge(tmp_path):
    sec = claims.build(FakeRuns(small_and_large(2, 16)), tmp_path)
    t = sec.tables["claims"].set_index("claim")
    row = t.loc["LSTM and GRU reach a lower test loss than the RNN"]
    assert row.verdict == claims.TOO_SMALL
    ev = row.evidence
    assert f"2 epochs trained (needs ≥ {claims.MIN_EPOCHS})" in ev
    assert f"width 16 units (needs ≥ {claims.MIN_WIDTH})" in ev
    assert "would give 'reproduced'" in ev  # what the check found is still there
    assert "too small to judge" in sec.text
    assert f"fewer than {claims.MIN_EPOCHS} epochs" in sec.text
    assert f"fewer than {claims.MIN_WIDTH} units" in sec.text
    # claims nothing was run for stay 'not run'
    assert t.loc["The learning rate is the most important hyperparameter",
                 "verdict"] == claims.NOT_RUN
    # a corpus cut to a slice is too small as well
    sec = claims.build(FakeRuns(small_and_large(5, 128, max_chars=20000)), tmp_path)
    ev = sec.tables["claims"].set_index("claim").loc[
        "LSTM and GRU reach a lower test loss than the RNN", "evidence"]
    assert "20,000 characters" in ev and "epochs trained" not in ev


def test_runs_of_the_stated_size_are_judged(tmp_path):
    sec = claims.build(FakeRuns(small_and_large(claims.MIN_EPOCHS, claims.MIN_WIDTH)),
                       tmp_path)
    t = sec.tables["claims"].set_index("claim")
    assert claims.TOO_SMALL not in set(t.verdict)
    assert t.loc["LSTM and GRU reach a lower test loss than the RNN",
                 "verdict"] == claims.REPRODUCED
